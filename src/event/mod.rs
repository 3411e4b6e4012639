//! The event model: one telemetry reading as it travels through a topology.
//!
//! An [`Event`] is a device's reading: who sent it (`device_id`), when it happened (event
//! time), its body of JSON-like [`Fields`], and [`EventMeta`] about how it arrived. Events move
//! between components in [`EventBatch`]es so channel and metric costs are paid per batch, not
//! per reading.
//!
//! Fields and metadata sit behind `Arc`s: fan-out clones an event without copying its body,
//! and a template can look at an event without converting it (see [`view`]). A component that
//! changes a field pays for a copy only when another branch still shares it.

pub mod ack;
mod time;
pub mod trace;
mod view;

use std::sync::Arc;

use jiff::Timestamp;
use serde::Serialize;
use serde::ser::SerializeMap;

/// Expression results become field values through the template library's conversion.
pub use crate::template::from_template_value;
pub use ack::{Delivery, DeliveryStatus, Unsettled};
pub use serde_json::Value;
pub use time::parse_event_time;
pub use view::EventView;

/// The body of an event: field name to JSON-like value, in arrival order.
pub type Fields = serde_json::Map<String, Value>;

/// A device identifier, cheap to clone across the many events of one device.
pub type DeviceId = Arc<str>;

/// One telemetry reading.
#[derive(Debug, Clone)]
pub struct Event {
    /// The device the reading belongs to, once a source or transform has determined it.
    pub device_id: Option<DeviceId>,
    /// Event time: when the reading happened (defaults to the arrival time).
    pub time: Timestamp,
    fields: Arc<Fields>,
    meta: Arc<EventMeta>,
    /// The delivery this event belongs to, when its source waits for the outcome.
    delivery: Option<Arc<Delivery>>,
}

/// Events are equal when their content is; which delivery they belong to does not count.
impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        self.device_id == other.device_id
            && self.time == other.time
            && self.fields == other.fields
            && self.meta == other.meta
    }
}

/// How an event arrived, shared by all events of one delivery.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventMeta {
    /// The id of the source component that produced the event.
    pub source: Arc<str>,
    /// When weir received the event.
    pub received_at: Timestamp,
    /// MQTT topic, when the source has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// AMQP routing key, when the source has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routing_key: Option<String>,
    /// Selected transport headers (HTTP headers, AMQP/MQTT properties).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, String)>,
    /// The W3C trace id (32 hex digits) the transport carried in a `traceparent`, or
    /// the one a sampled reading was given (see [`trace`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// Set on a sampled reading: its hops are logged and timed. Not kept in a disk buffer.
    #[serde(skip)]
    pub sampled: Option<trace::Sampled>,
    /// Why the event was routed to an `.errors` output, if it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<EventError>,
}

/// The reason attached to a dead-lettered event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventError {
    /// The component that gave up on the event.
    pub component: Arc<str>,
    /// What went wrong, in words.
    pub message: String,
}

impl EventMeta {
    /// Metadata for an event that `source` received just now.
    pub fn received_by(source: Arc<str>) -> Self {
        Self::received_at(source, Timestamp::now())
    }

    /// Metadata for an event that `source` received at `received_at`.
    pub fn received_at(source: Arc<str>, received_at: Timestamp) -> Self {
        Self {
            source,
            received_at,
            topic: None,
            routing_key: None,
            headers: Vec::new(),
            trace_id: None,
            sampled: None,
            error: None,
        }
    }
}

impl Event {
    /// A new event with the given body; its event time is the arrival time in `meta`.
    pub fn new(device_id: Option<DeviceId>, fields: Fields, meta: Arc<EventMeta>) -> Self {
        Self {
            device_id,
            time: meta.received_at,
            fields: Arc::new(fields),
            meta,
            delivery: None,
        }
    }

    /// Makes the event part of `delivery`: its source hears when it is handled.
    pub fn attach(&mut self, delivery: &Arc<Delivery>) {
        self.delivery = Some(Arc::clone(delivery));
    }

    /// The delivery the event belongs to, if its source waits for the outcome.
    pub fn delivery(&self) -> Option<&Arc<Delivery>> {
        self.delivery.as_ref()
    }

    /// Records that this event is being lost (see [`ack`]); call before dropping it.
    pub fn fail_delivery(&self) {
        if let Some(delivery) = &self.delivery {
            delivery.fail();
        }
    }

    /// The event's body.
    pub fn fields(&self) -> &Fields {
        &self.fields
    }

    /// The event's body for changing; copies it only if another event shares it.
    pub fn fields_mut(&mut self) -> &mut Fields {
        Arc::make_mut(&mut self.fields)
    }

    /// One field of the body.
    pub fn get(&self, field: &str) -> Option<&Value> {
        self.fields.get(field)
    }

    /// Sets one field of the body.
    pub fn insert(&mut self, field: impl Into<String>, value: Value) {
        self.fields_mut().insert(field.into(), value);
    }

    /// How the event arrived.
    pub fn meta(&self) -> &EventMeta {
        &self.meta
    }

    /// The arrival metadata for changing; copies it only if another event shares it.
    pub fn meta_mut(&mut self) -> &mut EventMeta {
        Arc::make_mut(&mut self.meta)
    }

    /// Marks the event as dead-lettered by `component` because of `message`.
    pub fn with_error(mut self, component: &Arc<str>, message: impl Into<String>) -> Self {
        self.meta_mut().error = Some(EventError {
            component: Arc::clone(component),
            message: message.into(),
        });
        self
    }

    /// A read-only view of the event for minijinja conditions and templates.
    pub fn view(&self) -> minijinja::Value {
        EventView::value(self)
    }

    /// The event as one JSON object: `device_id`, the fields, and `meta` with the event time.
    ///
    /// This is the shape written by the `file` and `console` sinks.
    pub fn to_json_line(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        serde_json::to_writer(&mut *out, self)?;
        out.push(b'\n');
        Ok(())
    }
}

impl Serialize for Event {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        struct MetaWithTime<'a>(&'a Event);
        impl Serialize for MetaWithTime<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let meta = self.0.meta();
                let mut map = serializer.serialize_map(None)?;
                map.serialize_entry("source", &meta.source)?;
                map.serialize_entry("event_time", &self.0.time)?;
                map.serialize_entry("received_at", &meta.received_at)?;
                if let Some(topic) = &meta.topic {
                    map.serialize_entry("topic", topic)?;
                }
                if let Some(key) = &meta.routing_key {
                    map.serialize_entry("routing_key", key)?;
                }
                if let Some(trace_id) = &meta.trace_id {
                    map.serialize_entry("trace_id", trace_id)?;
                }
                if !meta.headers.is_empty() {
                    map.serialize_entry("headers", &Headers(&meta.headers))?;
                }
                if let Some(error) = &meta.error {
                    map.serialize_entry("error", error)?;
                }
                map.end()
            }
        }

        /// Transport headers as one object (a repeated name: the last one wins on reading).
        struct Headers<'a>(&'a [(String, String)]);
        impl Serialize for Headers<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_map(self.0.iter().map(|(name, value)| (name, value)))
            }
        }

        let mut map = serializer.serialize_map(Some(self.fields.len() + 2))?;
        if let Some(device_id) = &self.device_id {
            map.serialize_entry("device_id", device_id)?;
        }
        for (key, value) in self.fields.iter() {
            if key != "device_id" && key != "meta" {
                map.serialize_entry(key, value)?;
            }
        }
        map.serialize_entry("meta", &MetaWithTime(self))?;
        map.end()
    }
}

/// Events that travel together through a channel.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventBatch {
    pub events: Vec<Event>,
}

impl EventBatch {
    pub fn new(events: Vec<Event>) -> Self {
        Self { events }
    }

    /// Records that every event of the batch is being lost.
    pub fn fail_deliveries(&self) {
        for event in &self.events {
            event.fail_delivery();
        }
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

impl From<Vec<Event>> for EventBatch {
    fn from(events: Vec<Event>) -> Self {
        Self::new(events)
    }
}

impl IntoIterator for EventBatch {
    type Item = Event;
    type IntoIter = std::vec::IntoIter<Event>;

    fn into_iter(self) -> Self::IntoIter {
        self.events.into_iter()
    }
}

/// Converts a JSON value into a minijinja value without a serde round trip.
pub fn to_template_value(value: &Value) -> minijinja::Value {
    match value {
        Value::Null => minijinja::Value::from(()),
        Value::Bool(b) => minijinja::Value::from(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                minijinja::Value::from(i)
            } else if let Some(u) = n.as_u64() {
                minijinja::Value::from(u)
            } else {
                minijinja::Value::from(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(s) => minijinja::Value::from(s.as_str()),
        Value::Array(items) => items.iter().map(to_template_value).collect(),
        Value::Object(map) => template_map(
            map.iter()
                .map(|(k, v)| (minijinja::Value::from(k.as_str()), to_template_value(v))),
        ),
    }
}

/// A minijinja map (keys in the given order).
pub(crate) fn template_map(
    entries: impl IntoIterator<Item = (minijinja::Value, minijinja::Value)>,
) -> minijinja::Value {
    minijinja::Value::from_object(entries.into_iter().collect::<indexmap::IndexMap<_, _>>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> Event {
        let mut fields = Fields::new();
        fields.insert("temperature".into(), Value::from(21.5));
        Event::new(
            Some("dev-1".into()),
            fields,
            Arc::new(EventMeta::received_by("sim".into())),
        )
    }

    #[test]
    fn clones_share_fields_until_one_changes() {
        let a = event();
        let mut b = a.clone();
        b.insert("temperature", Value::from(99));
        assert_eq!(a.get("temperature"), Some(&Value::from(21.5)));
        assert_eq!(b.get("temperature"), Some(&Value::from(99)));
    }

    #[test]
    fn json_line_has_device_fields_and_meta() {
        let mut out = Vec::new();
        event().to_json_line(&mut out).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["device_id"], "dev-1");
        assert_eq!(v["temperature"], 21.5);
        assert_eq!(v["meta"]["source"], "sim");
        assert!(v["meta"]["event_time"].is_string());
    }

    #[test]
    fn template_values_round_trip() {
        let json = serde_json::json!({"a": [1, 2.5, "x", null, true], "b": {"c": -3}});
        let back = from_template_value(&to_template_value(&json));
        assert_eq!(back, json);
    }
}
