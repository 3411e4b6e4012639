//! A zero-copy view of an [`Event`] for minijinja.
//!
//! Conditions and templates see the event's fields as top-level names, plus `device_id` and
//! `meta`. Building a minijinja map per event would copy every field for every evaluation;
//! this view converts only the fields an expression actually looks at.

use std::sync::Arc;

use minijinja::value::{Enumerator, Object, ObjectRepr, Value as TemplateValue};

use super::{DeviceId, Event, EventMeta, Fields, Value, template_map, to_template_value};
use crate::template::Scope;

/// What the native evaluator of conditions and `set` expressions reads: the same names the
/// view shows (`device_id` from the event, every other name a field), without building it.
impl Scope for Event {
    fn field(&self, name: &str) -> Option<&Value> {
        self.fields.get(name)
    }

    fn device_id(&self) -> Option<&str> {
        self.device_id.as_deref()
    }

    fn view(&self) -> TemplateValue {
        EventView::value(self)
    }
}

/// The minijinja object behind [`Event::view`].
#[derive(Debug)]
pub struct EventView {
    device_id: Option<DeviceId>,
    time: jiff::Timestamp,
    fields: Arc<Fields>,
    meta: Arc<EventMeta>,
}

impl EventView {
    pub(super) fn value(event: &Event) -> TemplateValue {
        TemplateValue::from_object(Self {
            device_id: event.device_id.clone(),
            time: event.time,
            fields: Arc::clone(&event.fields),
            meta: Arc::clone(&event.meta),
        })
    }

    fn meta_value(&self) -> TemplateValue {
        let meta = &self.meta;
        let mut entries: Vec<(&str, TemplateValue)> = vec![
            ("source", TemplateValue::from(&*meta.source)),
            (
                "received_at",
                TemplateValue::from(meta.received_at.to_string()),
            ),
            ("event_time", TemplateValue::from(self.time.to_string())),
        ];
        if let Some(topic) = &meta.topic {
            entries.push(("topic", TemplateValue::from(topic.as_str())));
        }
        if let Some(key) = &meta.routing_key {
            entries.push(("routing_key", TemplateValue::from(key.as_str())));
        }
        if let Some(trace_id) = &meta.trace_id {
            entries.push(("trace_id", TemplateValue::from(trace_id.as_str())));
        }
        let headers = template_map(meta.headers.iter().map(|(k, v)| {
            (
                TemplateValue::from(k.as_str()),
                TemplateValue::from(v.as_str()),
            )
        }));
        entries.push(("headers", headers));
        template_map(
            entries
                .into_iter()
                .map(|(k, v)| (TemplateValue::from(k), v)),
        )
    }
}

impl Object for EventView {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &TemplateValue) -> Option<TemplateValue> {
        match key.as_str()? {
            "device_id" => self.device_id.as_deref().map(TemplateValue::from),
            "meta" => Some(self.meta_value()),
            field => self.fields.get(field).map(to_template_value),
        }
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        let mut keys: Vec<TemplateValue> = Vec::with_capacity(self.fields.len() + 2);
        if self.device_id.is_some() {
            keys.push(TemplateValue::from("device_id"));
        }
        keys.extend(self.fields.keys().map(|k| TemplateValue::from(k.as_str())));
        keys.push(TemplateValue::from("meta"));
        Enumerator::Values(keys)
    }
}
