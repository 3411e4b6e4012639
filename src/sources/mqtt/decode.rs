//! Turning one publish into events: the device id from the topic (a pattern or a
//! template) or from a field of each reading.

use std::sync::Arc;

use super::MqttSourceConfig;
use crate::codecs::Decoder;
use crate::event::{DeviceId, Event, EventMeta};
use crate::sources::reading;
use crate::template::Template;

pub(super) const DEVICE_ID_PARAM: &str = "{device_id}";

/// How the device id is found.
pub(super) enum DeviceIdRule {
    /// The topic segment at this index.
    Segment(usize),
    Template(Template),
    Field(String),
}

pub(super) fn events_of(
    payload: &[u8],
    topic: &str,
    config: &MqttSourceConfig,
    rule: &DeviceIdRule,
    decoder: &Decoder,
    meta: &Arc<EventMeta>,
) -> Result<Vec<Event>, String> {
    let readings = decoder.decode(payload).map_err(|e| e.0)?;
    let from_topic: Option<DeviceId> = match rule {
        DeviceIdRule::Segment(index) => {
            let id = topic
                .split('/')
                .nth(*index)
                .filter(|s| !s.is_empty())
                .ok_or_else(|| format!("topic `{topic}` has no device id segment"))?;
            Some(id.into())
        }
        DeviceIdRule::Template(template) => {
            let id = template
                .render(&minijinja::context! { topic => topic })
                .map_err(|e| format!("device_id template failed: {e}"))?;
            Some(id.trim().into()).filter(|id: &DeviceId| !id.is_empty())
        }
        DeviceIdRule::Field(_) => None,
    };
    readings
        .into_iter()
        .enumerate()
        .map(|(n, fields)| {
            let device_id = match (&from_topic, rule) {
                (Some(id), _) => id.clone(),
                (None, DeviceIdRule::Field(field)) => reading::device_from_field(&fields, field)
                    .map_err(|e| format!("reading {n}: {e}"))?,
                (None, _) => return Err("the device id template gave an empty id".into()),
            };
            reading::event(fields, device_id, config.event_time.as_deref(), meta, n)
        })
        .collect()
}
