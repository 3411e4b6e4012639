//! Turning decoded readings into events: the steps every source takes the same way.

use std::sync::Arc;

use serde_json::Value;

use super::SourceContext;
use crate::config::OutputName;
use crate::event::{DeviceId, Event, EventBatch, EventMeta, Fields, parse_event_time};
use crate::telemetry::InternalEvent;
use crate::telemetry::events::{ComponentError, ErrorType, Stage};

/// Most bytes of a refused payload kept on the dead-letter event.
const KEEP: usize = 64 * 1024;

/// The device id a reading names in `field` (a non-empty string or a number).
pub(crate) fn device_from_field(fields: &Fields, field: &str) -> Result<DeviceId, String> {
    match fields.get(field) {
        Some(Value::String(id)) if !id.trim().is_empty() => Ok(id.trim().into()),
        Some(Value::Number(n)) => Ok(n.to_string().into()),
        Some(other) => Err(format!(
            "field `{field}` is {other}: expected a device id string"
        )),
        None => Err(format!("field `{field}` (the device id) is missing")),
    }
}

/// Reading number `n` as an event of `device_id`; its event time comes from `event_time`
/// when that field is present (else the arrival time).
pub(crate) fn event(
    fields: Fields,
    device_id: DeviceId,
    event_time: Option<&str>,
    meta: &Arc<EventMeta>,
    n: usize,
) -> Result<Event, String> {
    let time = match event_time.and_then(|field| fields.get(field).map(|value| (field, value))) {
        Some((field, value)) => Some(parse_event_time(value).ok_or_else(|| {
            format!("reading {n}: field `{field}` is {value}: expected RFC 3339 or epoch seconds/milliseconds/microseconds")
        })?),
        None => None,
    };
    let mut event = Event::new(Some(device_id), fields, Arc::clone(meta));
    if let Some(time) = time {
        event.time = time;
    }
    Ok(event)
}

/// The dead-letter event of a payload a source could not turn into readings: the payload
/// (as text, first 64 KiB), its size, and why.
pub(crate) fn dead_letter(
    payload: &[u8],
    device_id: Option<DeviceId>,
    meta: Arc<EventMeta>,
    source: &Arc<str>,
    reason: impl Into<String>,
) -> Event {
    let mut fields = Fields::new();
    fields.insert(
        "body".into(),
        Value::String(String::from_utf8_lossy(&payload[..payload.len().min(KEEP)]).into_owned()),
    );
    fields.insert("body_bytes".into(), Value::from(payload.len()));
    Event::new(device_id, fields, meta).with_error(source, reason)
}

/// A broker message that could not become readings: counted, logged (throttled), and kept
/// on `<id>.errors`. `origin` names where it came from (a queue, a topic).
pub(crate) async fn refuse(
    cx: &SourceContext,
    payload: &[u8],
    meta: Arc<EventMeta>,
    origin: &str,
    reason: String,
) {
    let message = format!("undecodable message on {origin}: {reason}");
    ComponentError {
        error_type: ErrorType::Decode,
        stage: Stage::Receiving,
        message: &message,
        count: 1,
    }
    .emit(&cx.telemetry);
    let dead = dead_letter(payload, None, meta, &cx.id.as_arc(), reason);
    cx.out
        .send_named(OutputName::ERRORS, EventBatch::new(vec![dead]))
        .await;
}
