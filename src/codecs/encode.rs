//! Events out: the `encoding` option of the sinks that publish events to a broker.
//!
//! An event is encoded as one reading that the same codec decodes again: an object of
//! `device_id`, the event's fields, and `event_time` (RFC 3339), so a weir consuming what
//! another weir published (`amqp` source with `event_time: event_time`) gets the same
//! device, fields and event time back.

use schemars::JsonSchema;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde::{Deserialize, Serialize as DeriveSerialize};

use super::Codec;
use crate::event::Event;

/// The field the event time is written to.
pub const EVENT_TIME_FIELD: &str = "event_time";

/// How a sink turns an event into a message payload.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, DeriveSerialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EncodingConfig {
    /// `json` (the default) or `msgpack`.
    #[serde(default)]
    pub codec: Codec,
}

impl EncodingConfig {
    /// Only codecs that can carry any event encode.
    pub fn check(&self) -> Result<(), String> {
        match self.codec {
            Codec::Json | Codec::Ndjson | Codec::Msgpack => Ok(()),
            Codec::Binary | Codec::Bytes => Err(format!(
                "codec `{}` cannot encode events: expected `json` or `msgpack`",
                serde_json::to_value(self.codec)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            )),
        }
    }

    /// The MIME type of what [`EncodingConfig::encode`] writes.
    pub fn content_type(&self) -> &'static str {
        match self.codec {
            Codec::Msgpack => "application/msgpack",
            _ => "application/json",
        }
    }

    /// `event` as one reading.
    pub fn encode(&self, event: &Event) -> Result<Vec<u8>, String> {
        let reading = Reading(event);
        match self.codec {
            Codec::Msgpack => rmp_serde::to_vec(&reading)
                .map_err(|err| format!("cannot encode the event as MessagePack: {err}")),
            _ => serde_json::to_vec(&reading)
                .map_err(|err| format!("cannot encode the event as JSON: {err}")),
        }
    }
}

/// The reading an event is published as.
struct Reading<'a>(&'a Event);

impl Serialize for Reading<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let event = self.0;
        let mut map = serializer.serialize_map(None)?;
        if let Some(device_id) = &event.device_id {
            map.serialize_entry("device_id", device_id)?;
        }
        for (key, value) in event.fields().iter() {
            if key != "device_id" && key != EVENT_TIME_FIELD {
                map.serialize_entry(key, value)?;
            }
        }
        map.serialize_entry(EVENT_TIME_FIELD, &event.time)?;
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::codecs::DecodingConfig;
    use crate::event::{EventMeta, Fields, parse_event_time};

    fn event() -> Event {
        let mut fields = Fields::new();
        fields.insert("temperature".into(), 21.5.into());
        fields.insert("event_time".into(), "1999-01-01T00:00:00Z".into());
        let mut event = Event::new(
            Some("pump-7".into()),
            fields,
            Arc::new(EventMeta::received_by("t".into())),
        );
        event.time = "2026-11-26T12:00:00.125Z".parse().unwrap();
        event
    }

    #[test]
    fn what_a_codec_encodes_it_decodes_to_the_same_reading() {
        for codec in [Codec::Json, Codec::Msgpack] {
            let encoding = EncodingConfig { codec };
            assert!(encoding.check().is_ok());
            let payload = encoding.encode(&event()).unwrap();
            let decoded = DecodingConfig {
                codec,
                ..DecodingConfig::default()
            }
            .decoder()
            .decode(&payload)
            .unwrap();
            assert_eq!(decoded.len(), 1, "{codec:?}");
            let reading = &decoded[0];
            assert_eq!(reading["device_id"], "pump-7");
            assert_eq!(reading["temperature"], 21.5);
            assert_eq!(
                parse_event_time(&reading["event_time"]),
                Some(event().time),
                "the event's time, not a field's stale copy ({codec:?})"
            );
            assert_eq!(reading.len(), 3);
        }
    }

    #[test]
    fn codecs_that_cannot_carry_an_event_are_refused() {
        let err = EncodingConfig {
            codec: Codec::Binary,
        }
        .check()
        .unwrap_err();
        assert!(err.contains("`binary`"), "{err}");
    }
}
