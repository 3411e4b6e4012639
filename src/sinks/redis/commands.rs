//! What each mode writes for one event: the Redis commands, appended to a pipeline.
//!
//! Every mode writes the same members: `device_id` (when the event has one), the event's
//! fields, `event_time` (RFC 3339, UTC) and `event_time_ms` (epoch milliseconds, what
//! `only_newer` compares). A body field with one of those three names is left out: the
//! event's own device id and time win. In `hash` and `stream` mode each value is a Redis
//! string: strings as they are, numbers and booleans as their JSON text (`21.5`, `true`),
//! null as `null`, arrays and objects as JSON.

use std::borrow::Cow;

use redis::Pipeline;

use super::RedisMode;
use super::scripts;
use crate::event::{Event, Value};

/// Names weir writes itself; body fields with these names are not written.
const DEVICE_ID: &str = "device_id";
const EVENT_TIME: &str = "event_time";
const EVENT_TIME_MS: &str = "event_time_ms";

/// How one sink turns events into commands.
#[derive(Clone, Debug)]
pub(super) struct Commands {
    pub mode: RedisMode,
    /// TTL in milliseconds; 0 for none.
    pub ttl_ms: u64,
    pub only_newer: bool,
    pub maxlen: u64,
}

impl Commands {
    /// How many commands (so how many replies) one event adds: the same for every event,
    /// so reply `i` belongs to event `i / commands_per_event()`.
    pub fn per_event(&self) -> usize {
        match self.mode {
            _ if self.only_newer => 1,
            RedisMode::Json => 1,
            RedisMode::Hash | RedisMode::Stream if self.ttl_ms > 0 => 2,
            RedisMode::Hash | RedisMode::Stream => 1,
        }
    }

    /// Appends the event's commands to `pipe`; returns the bytes of keys and values written.
    pub fn append(&self, pipe: &mut Pipeline, key: &str, event: &Event) -> usize {
        let time_ms = event.time.as_millisecond();
        let mut bytes = key.len();
        match self.mode {
            RedisMode::Json => {
                let document = document(event, time_ms);
                bytes += document.len();
                if self.only_newer {
                    pipe.cmd("EVALSHA")
                        .arg(scripts::JSON.get_hash())
                        .arg(1)
                        .arg(key)
                        .arg(time_ms)
                        .arg(self.ttl_ms)
                        .arg(document);
                } else if self.ttl_ms > 0 {
                    pipe.cmd("SET")
                        .arg(key)
                        .arg(document)
                        .arg("PX")
                        .arg(self.ttl_ms);
                } else {
                    pipe.cmd("SET").arg(key).arg(document);
                }
                return bytes;
            }
            RedisMode::Hash if self.only_newer => {
                pipe.cmd("EVALSHA")
                    .arg(scripts::HASH.get_hash())
                    .arg(1)
                    .arg(key)
                    .arg(time_ms)
                    .arg(self.ttl_ms);
            }
            RedisMode::Hash => {
                pipe.cmd("HSET").arg(key);
            }
            RedisMode::Stream => {
                pipe.cmd("XADD")
                    .arg(key)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(self.maxlen)
                    .arg("*");
            }
        }
        for (name, value) in members(event, time_ms) {
            bytes += name.len() + value.len();
            pipe.arg(name).arg(value.as_ref());
        }
        if self.ttl_ms > 0 && !self.only_newer {
            pipe.cmd("PEXPIRE").arg(key).arg(self.ttl_ms);
        }
        bytes
    }
}

/// The name/value pairs of `hash` and `stream` mode, in order.
fn members(event: &Event, time_ms: i64) -> impl Iterator<Item = (&str, Cow<'_, str>)> {
    let device = event
        .device_id
        .as_deref()
        .map(|id| (DEVICE_ID, Cow::Borrowed(id)));
    let has_device = device.is_some();
    let fields = event
        .fields()
        .iter()
        .filter(move |(name, _)| !is_reserved(name, has_device))
        .map(|(name, value)| (name.as_str(), string_value(value)));
    let time = [
        (EVENT_TIME, Cow::Owned(event.time.to_string())),
        (EVENT_TIME_MS, Cow::Owned(time_ms.to_string())),
    ];
    device.into_iter().chain(fields).chain(time)
}

fn is_reserved(name: &str, has_device: bool) -> bool {
    name == EVENT_TIME || name == EVENT_TIME_MS || (has_device && name == DEVICE_ID)
}

/// A field value as a Redis string (see the module docs).
fn string_value(value: &Value) -> Cow<'_, str> {
    match value {
        Value::String(s) => Cow::Borrowed(s),
        other => Cow::Owned(other.to_string()),
    }
}

/// The `json` mode document: `event_time_ms` first (the `only_newer` script reads it with
/// an anchored pattern), then `event_time`, `device_id` and the fields.
fn document(event: &Event, time_ms: i64) -> String {
    let mut map = serde_json::Map::with_capacity(event.fields().len() + 3);
    map.insert(EVENT_TIME_MS.into(), Value::from(time_ms));
    map.insert(EVENT_TIME.into(), Value::from(event.time.to_string()));
    let has_device = event.device_id.is_some();
    if let Some(id) = event.device_id.as_deref() {
        map.insert(DEVICE_ID.into(), Value::from(id));
    }
    for (name, value) in event.fields() {
        if !is_reserved(name, has_device) {
            map.insert(name.clone(), value.clone());
        }
    }
    // A map of JSON values always serializes (numbers in a `Value` are finite).
    Value::Object(map).to_string()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::event::{EventMeta, Fields};

    fn event() -> Event {
        let mut fields = Fields::new();
        fields.insert("temperature".into(), Value::from(21.5));
        fields.insert("status".into(), Value::from("ok"));
        fields.insert("tags".into(), serde_json::json!(["a", 1]));
        fields.insert("event_time".into(), Value::from("shadowed"));
        let mut event = Event::new(
            Some("dev-1".into()),
            fields,
            Arc::new(EventMeta::received_by("t".into())),
        );
        event.time = "2026-01-02T03:04:05.678Z".parse().unwrap();
        event
    }

    #[test]
    fn members_encode_values_and_add_device_and_time() {
        let pairs: Vec<(String, String)> = members(&event(), 1_767_323_045_678)
            .map(|(k, v)| (k.to_owned(), v.into_owned()))
            .collect();
        let expected: Vec<(String, String)> = [
            ("device_id", "dev-1"),
            ("temperature", "21.5"),
            ("status", "ok"),
            ("tags", r#"["a",1]"#),
            ("event_time", "2026-01-02T03:04:05.678Z"),
            ("event_time_ms", "1767323045678"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(pairs, expected);
    }

    #[test]
    fn document_starts_with_the_compared_time() {
        let doc = document(&event(), 1_767_323_045_678);
        assert!(
            doc.starts_with(r#"{"event_time_ms":1767323045678,"#),
            "{doc}"
        );
        let value: Value = serde_json::from_str(&doc).unwrap();
        assert_eq!(value["event_time"], "2026-01-02T03:04:05.678Z");
        assert_eq!(value["device_id"], "dev-1");
        assert_eq!(value["tags"], serde_json::json!(["a", 1]));
    }

    #[test]
    fn replies_per_event_match_the_commands_appended() {
        for mode in [RedisMode::Hash, RedisMode::Json, RedisMode::Stream] {
            for (ttl_ms, only_newer) in [(0, false), (1000, false), (0, true), (1000, true)] {
                if only_newer && mode == RedisMode::Stream {
                    continue;
                }
                let commands = Commands {
                    mode,
                    ttl_ms,
                    only_newer,
                    maxlen: 10,
                };
                let mut pipe = redis::pipe();
                commands.append(&mut pipe, "k", &event());
                commands.append(&mut pipe, "k", &event());
                assert_eq!(pipe.len(), 2 * commands.per_event(), "{commands:?}");
            }
        }
    }
}
