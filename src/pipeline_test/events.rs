//! Events as a test writes them: inputs turned into [`Event`]s, outputs turned into JSON to
//! compare with what a test expects.
//!
//! Both use the shape the `file` sink writes: `device_id`, the fields, and `meta` with
//! `event_time`, `received_at`, `source`, `topic`, `routing_key`, `headers`, `trace_id`.

use std::sync::Arc;

use jiff::Timestamp;
use serde_json::{Map, Value};

use crate::config::unit_test::TestInput;
use crate::event::{Event, EventMeta, Fields};

/// The `meta` keys an input event may set.
const META_KEYS: &[&str] = &[
    "event_time",
    "received_at",
    "source",
    "topic",
    "routing_key",
    "headers",
    "trace_id",
];

/// One event a test inserts, before its time is known.
#[derive(Clone, Debug, PartialEq)]
pub struct InputEvent {
    device_id: Option<String>,
    fields: Fields,
    event_time: Option<Timestamp>,
    received_at: Option<Timestamp>,
    source: Option<String>,
    topic: Option<String>,
    routing_key: Option<String>,
    headers: Vec<(String, String)>,
    trace_id: Option<String>,
}

impl InputEvent {
    /// Reads one event: a mapping, or JSON text of one.
    pub fn parse(value: &Value) -> Result<Self, String> {
        let object = match value {
            Value::Object(object) => object.clone(),
            Value::String(text) => match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(object)) => object,
                Ok(other) => {
                    return Err(format!("the JSON text holds `{other}`: expected an object"));
                }
                Err(err) => return Err(format!("the text is not JSON: {err}")),
            },
            other => {
                return Err(format!(
                    "`{other}` is not an event: expected a mapping of fields"
                ));
            }
        };
        let mut fields = object;
        let device_id = match fields.remove("device_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(id)) => Some(id),
            Some(other) => return Err(format!("`device_id` is `{other}`: expected a string")),
        };
        let mut event = Self {
            device_id,
            fields: Fields::new(),
            event_time: None,
            received_at: None,
            source: None,
            topic: None,
            routing_key: None,
            headers: Vec::new(),
            trace_id: None,
        };
        if let Some(meta) = fields.remove("meta") {
            event.read_meta(meta)?;
        }
        event.fields = fields;
        Ok(event)
    }

    fn read_meta(&mut self, meta: Value) -> Result<(), String> {
        let Value::Object(meta) = meta else {
            return Err(format!("`meta` is `{meta}`: expected a mapping"));
        };
        let time = |key: &str, value: &Value| {
            crate::event::parse_event_time(value).ok_or_else(|| {
                format!("`meta.{key}` is `{value}`: expected a time (RFC 3339 or epoch seconds/milliseconds)")
            })
        };
        let text = |key: &str, value: Value| match value {
            Value::String(text) => Ok(text),
            other => Err(format!("`meta.{key}` is `{other}`: expected a string")),
        };
        for (key, value) in meta {
            match key.as_str() {
                "event_time" => self.event_time = Some(time(&key, &value)?),
                "received_at" => self.received_at = Some(time(&key, &value)?),
                "source" => self.source = Some(text(&key, value)?),
                "topic" => self.topic = Some(text(&key, value)?),
                "routing_key" => self.routing_key = Some(text(&key, value)?),
                "trace_id" => self.trace_id = Some(text(&key, value)?),
                "headers" => {
                    let Value::Object(headers) = value else {
                        return Err("`meta.headers` is not a mapping of names to values".into());
                    };
                    for (name, value) in headers {
                        let value = text(&format!("headers.{name}"), value)?;
                        self.headers.push((name, value));
                    }
                }
                _ => {
                    return Err(format!(
                        "unknown `meta` key `{key}`{}: expected one of {}",
                        crate::config::did_you_mean(&key, META_KEYS),
                        META_KEYS.join(", ")
                    ));
                }
            }
        }
        Ok(())
    }

    /// The event, inserted at `now` (its arrival, and its event time unless it has one).
    pub fn to_event(&self, now: Timestamp) -> Event {
        let received_at = self.received_at.unwrap_or(now);
        let mut meta = EventMeta::received_at(
            Arc::from(self.source.as_deref().unwrap_or("test")),
            received_at,
        );
        meta.topic = self.topic.clone();
        meta.routing_key = self.routing_key.clone();
        meta.headers = self.headers.clone();
        meta.trace_id = self.trace_id.clone();
        let mut event = Event::new(
            self.device_id.as_deref().map(Arc::from),
            self.fields.clone(),
            Arc::new(meta),
        );
        event.time = self.event_time.unwrap_or(received_at);
        event
    }
}

/// The events of one `inputs` entry, in order.
pub fn input_events(input: &TestInput) -> Result<Vec<InputEvent>, String> {
    if let Some(value) = &input.value {
        return Ok(vec![InputEvent::parse(value)?]);
    }
    if let Some(fields) = &input.log_fields {
        return Ok(vec![InputEvent::parse(&Value::Object(fields.clone()))?]);
    }
    let values: Vec<Value> = match &input.events {
        Some(Value::Array(items)) => items.clone(),
        // NDJSON text, or one JSON array.
        Some(Value::String(text)) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Array(items)) => items,
            _ => text
                .lines()
                .filter(|line| !line.trim().is_empty())
                .map(|line| Value::String(line.to_owned()))
                .collect(),
        },
        Some(other) => {
            return Err(format!(
                "`events` is `{other}`: expected a list of events or NDJSON text"
            ));
        }
        None => Vec::new(),
    };
    values
        .iter()
        .enumerate()
        .map(|(i, value)| InputEvent::parse(value).map_err(|err| format!("event {i}: {err}")))
        .collect()
}

/// An event as JSON: `device_id`, the fields, and `meta`.
pub fn observed(event: &Event) -> Map<String, Value> {
    match serde_json::to_value(event) {
        Ok(Value::Object(object)) => object,
        _ => Map::new(),
    }
}

/// One line for a message: the event without `meta`, or with only the `meta` keys a test
/// named (`event_time` always, since windows and alarms turn on it).
pub fn show(event: &Map<String, Value>, meta_keys: &[&str]) -> String {
    let mut shown = Map::new();
    for (key, value) in event {
        if key != "meta" {
            shown.insert(key.clone(), value.clone());
        }
    }
    if let Some(Value::Object(meta)) = event.get("meta") {
        let kept: Map<String, Value> = meta
            .iter()
            .filter(|(k, _)| k.as_str() == "event_time" || meta_keys.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        shown.insert("meta".into(), Value::Object(kept));
    }
    Value::Object(shown).to_string()
}

/// Whether two values are the same: numbers by value (1e-9 relative, so `avg` results
/// compare with what a person writes), times by the instant they name, the rest exactly.
pub fn same(expected: &Value, got: &Value) -> bool {
    match (expected, got) {
        (Value::Number(a), Value::Number(b)) => match (a.as_i64(), b.as_i64()) {
            (Some(a), Some(b)) => a == b,
            _ => match (a.as_f64(), b.as_f64()) {
                (Some(a), Some(b)) => (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0),
                _ => false,
            },
        },
        (Value::String(a), Value::String(b)) => {
            a == b
                || matches!(
                    (a.parse::<Timestamp>(), b.parse::<Timestamp>()),
                    (Ok(a), Ok(b)) if a == b
                )
        }
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(a, b)| same(a, b))
        }
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len()
                && a.iter()
                    .all(|(key, a)| b.get(key).is_some_and(|b| same(a, b)))
        }
        (a, b) => a == b,
    }
}

/// How `got` differs from `expected` (device id, fields and the `meta` keys `expected`
/// names), one phrase per difference; empty when it matches.
pub fn differences(expected: &Map<String, Value>, got: &Map<String, Value>) -> Vec<String> {
    let mut found = Vec::new();
    for (key, want) in expected.iter().filter(|(k, _)| k.as_str() != "meta") {
        match got.get(key) {
            None => found.push(format!("`{key}` expected {want}, missing")),
            Some(have) if !same(want, have) => {
                found.push(format!("`{key}` expected {want}, got {have}"))
            }
            Some(_) => {}
        }
    }
    for (key, have) in got.iter().filter(|(k, _)| k.as_str() != "meta") {
        if !expected.contains_key(key) {
            found.push(format!("`{key}` not expected, got {have}"));
        }
    }
    if let Some(Value::Object(want_meta)) = expected.get("meta") {
        let empty = Map::new();
        let have_meta = match got.get("meta") {
            Some(Value::Object(meta)) => meta,
            _ => &empty,
        };
        for (key, want) in want_meta {
            match have_meta.get(key) {
                None => found.push(format!("`meta.{key}` expected {want}, missing")),
                Some(have) if !same(want, have) => {
                    found.push(format!("`meta.{key}` expected {want}, got {have}"))
                }
                Some(_) => {}
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn an_input_event_sets_device_time_and_meta() {
        let input = InputEvent::parse(&json!({
            "device_id": "pump-1", "temperature": 95,
            "meta": { "event_time": "2026-01-01T00:00:30Z", "topic": "devices/pump-1" }
        }))
        .unwrap();
        let now: Timestamp = "2026-06-01T00:00:00Z".parse().unwrap();
        let event = input.to_event(now);
        assert_eq!(event.device_id.as_deref(), Some("pump-1"));
        assert_eq!(event.time.to_string(), "2026-01-01T00:00:30Z");
        assert_eq!(event.meta().received_at, now);
        assert_eq!(event.meta().topic.as_deref(), Some("devices/pump-1"));
        assert_eq!(event.get("temperature"), Some(&json!(95)));
        assert!(event.get("meta").is_none() && event.get("device_id").is_none());
        // Without an event time, the time it is inserted.
        let plain = InputEvent::parse(&json!("{\"a\": 1}"))
            .unwrap()
            .to_event(now);
        assert_eq!(plain.time, now);
        let err = InputEvent::parse(&json!({ "meta": { "evnt_time": 1 } })).unwrap_err();
        assert!(err.contains("did you mean `event_time`"), "{err}");
    }

    #[test]
    fn ndjson_events_are_read_line_by_line() {
        let input: TestInput = serde_json::from_value(json!({
            "insert_at": "x", "events": "{\"a\": 1}\n{\"a\": 2}\n"
        }))
        .unwrap();
        assert_eq!(input_events(&input).unwrap().len(), 2);
    }

    #[test]
    fn numbers_compare_by_value_and_times_by_instant() {
        assert!(same(&json!(95), &json!(95.0)));
        assert!(same(&json!(0.1 + 0.2), &json!(0.3)));
        assert!(!same(&json!(95), &json!(95.5)));
        assert!(same(
            &json!("2026-01-01T01:00:00+01:00"),
            &json!("2026-01-01T00:00:00Z")
        ));
        assert!(!same(&json!("a"), &json!("b")));
        let expected = json!({ "device_id": "d", "n": 2, "meta": { "source": "s" } });
        let got = json!({ "device_id": "d", "n": 3, "x": true, "meta": { "source": "t", "received_at": "now" } });
        assert_eq!(
            differences(expected.as_object().unwrap(), got.as_object().unwrap()),
            [
                "`n` expected 2, got 3",
                "`x` not expected, got true",
                "`meta.source` expected \"s\", got \"t\""
            ]
        );
    }
}
