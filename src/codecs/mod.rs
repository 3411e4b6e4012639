//! Payload codecs: bytes from a transport in, event fields out; and events out again for
//! the sinks that publish to brokers ([`encode`]).
//!
//! Sources decode what they receive with their `decoding` option; the `decode` transform
//! applies the same codecs to a field (for payloads wrapped in another envelope, such as a
//! Base64 `data` field in a LoRaWAN uplink). One payload may hold many readings.
//!
//! A payload is outside data: every reading it yields is held to [`ReadingLimits`] (fields
//! per reading, nesting depth) before the decoder hands it out, and a payload with a reading
//! over a bound is refused as a whole, like one that does not parse. No codec decompresses,
//! so there is no decompressed size to bound; a codec that does must bound it here.

mod binary;
pub mod encode;
mod limits;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use binary::{BinaryType, LayoutField};
pub use encode::EncodingConfig;
pub use limits::ReadingLimits;

use crate::event::Fields;

/// How a payload's bytes become readings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Codec {
    /// A JSON object, an array of objects, or newline-delimited objects.
    #[default]
    Json,
    /// Newline-delimited JSON objects (what `json` also accepts; kept for explicitness).
    Ndjson,
    /// A MessagePack map, or an array of maps.
    Msgpack,
    /// Fixed binary frames described by `layout`.
    Binary,
    /// No decoding: the payload becomes a Base64 `payload` field for a later `decode`.
    Bytes,
}

/// The `decoding` option of a source.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DecodingConfig {
    #[serde(default)]
    pub codec: Codec,
    /// Field layout of a `binary` frame, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<Vec<LayoutField>>,
    /// The most fields one reading may have; a payload with a reading over it is refused
    /// like an undecodable one.
    #[serde(default = "limits::default_max_fields")]
    pub max_fields: usize,
    /// The deepest nesting of objects and arrays one reading may have (a flat reading is
    /// 1); a payload with a reading over it is refused like an undecodable one.
    #[serde(default = "limits::default_max_depth")]
    pub max_depth: usize,
}

impl Default for DecodingConfig {
    fn default() -> Self {
        Self {
            codec: Codec::default(),
            layout: None,
            max_fields: limits::default_max_fields(),
            max_depth: limits::default_max_depth(),
        }
    }
}

impl DecodingConfig {
    /// Checks that `layout` is given exactly when the codec is `binary`, and that the
    /// reading limits admit something.
    pub fn check(&self) -> Result<(), String> {
        self.limits().check()?;
        match (&self.codec, &self.layout) {
            (Codec::Binary, None) => Err(
                "codec `binary` needs a `layout`: a list of `{ name, type, scale }` fields".into(),
            ),
            (Codec::Binary, Some(layout)) if layout.is_empty() => {
                Err("`layout` is empty: expected at least one field".into())
            }
            (Codec::Binary, Some(layout)) => binary::check_layout(layout),
            (_, Some(_)) => Err("`layout` applies only to codec `binary`".into()),
            _ => Ok(()),
        }
    }

    fn limits(&self) -> ReadingLimits {
        ReadingLimits {
            max_fields: self.max_fields,
            max_depth: self.max_depth,
        }
    }

    pub fn decoder(&self) -> Decoder {
        Decoder {
            codec: self.codec,
            layout: self.layout.clone().unwrap_or_default(),
            limits: self.limits(),
        }
    }
}

/// Why a payload could not be decoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub String);

/// A ready-to-use decoder.
#[derive(Clone, Debug)]
pub struct Decoder {
    codec: Codec,
    layout: Vec<LayoutField>,
    limits: ReadingLimits,
}

impl Decoder {
    /// Decodes one payload into one or more readings, each within the limits.
    pub fn decode(&self, payload: &[u8]) -> Result<Vec<Fields>, DecodeError> {
        let readings = self.decode_unchecked(payload)?;
        for (n, reading) in readings.iter().enumerate() {
            self.limits
                .admit(reading)
                .map_err(|problem| DecodeError(format!("reading {n}: {problem}")))?;
        }
        Ok(readings)
    }

    fn decode_unchecked(&self, payload: &[u8]) -> Result<Vec<Fields>, DecodeError> {
        match self.codec {
            Codec::Json | Codec::Ndjson => decode_json(payload),
            Codec::Msgpack => decode_msgpack(payload, &self.limits),
            Codec::Binary => binary::decode(&self.layout, payload).map(|f| vec![f]),
            Codec::Bytes => {
                use base64::Engine as _;
                let mut fields = Fields::new();
                fields.insert(
                    "payload".into(),
                    Value::String(base64::engine::general_purpose::STANDARD.encode(payload)),
                );
                Ok(vec![fields])
            }
        }
    }
}

/// A JSON object, an array of objects, or a stream of objects (NDJSON).
fn decode_json(payload: &[u8]) -> Result<Vec<Fields>, DecodeError> {
    let mut readings = Vec::new();
    for (n, value) in serde_json::Deserializer::from_slice(payload)
        .into_iter::<Value>()
        .enumerate()
    {
        let value = value.map_err(|err| DecodeError(format!("invalid JSON: {err}")))?;
        push_readings(&mut readings, value, n)?;
    }
    if readings.is_empty() {
        return Err(DecodeError(
            "empty body: expected a JSON object or an array of objects".into(),
        ));
    }
    Ok(readings)
}

/// How deep serde_json lets JSON nest while parsing; MessagePack is held to the same.
const PARSE_DEPTH: usize = 128;

fn decode_msgpack(payload: &[u8], limits: &ReadingLimits) -> Result<Vec<Fields>, DecodeError> {
    // Parsing recurses once per level, before `limits` can look at the result: rmp_serde's
    // own bound (1024) overflowed a 2 MB thread stack in debug builds (found by the `decode`
    // fuzzer's corpus). One level more than a reading may have (a payload may be an array of
    // readings), one to say "too deep" below rather than "invalid", and one because
    // rmp_serde refuses on reaching its limit rather than on passing it.
    let depth = limits.max_depth.saturating_add(3).min(PARSE_DEPTH);
    let mut deserializer = rmp_serde::Deserializer::from_read_ref(payload);
    deserializer.set_max_depth(depth);
    let value = Value::deserialize(&mut deserializer)
        .map_err(|err| DecodeError(format!("invalid MessagePack: {err}")))?;
    let mut readings = Vec::new();
    push_readings(&mut readings, value, 0)?;
    Ok(readings)
}

fn push_readings(readings: &mut Vec<Fields>, value: Value, n: usize) -> Result<(), DecodeError> {
    match value {
        Value::Object(fields) => readings.push(fields),
        Value::Array(items) => {
            for (i, item) in items.into_iter().enumerate() {
                match item {
                    Value::Object(fields) => readings.push(fields),
                    other => {
                        return Err(DecodeError(format!(
                            "item {i} of the array is {}: expected an object",
                            kind(&other)
                        )));
                    }
                }
            }
        }
        other => {
            return Err(DecodeError(format!(
                "value {} is {}: expected an object or an array of objects",
                n + 1,
                kind(&other)
            )));
        }
    }
    Ok(())
}

/// "a number", "an object", ...: how error messages name a JSON value's type.
pub(crate) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json() -> Decoder {
        DecodingConfig::default().decoder()
    }

    #[test]
    fn json_object_array_and_ndjson() {
        assert_eq!(json().decode(br#"{"t":1}"#).unwrap().len(), 1);
        assert_eq!(json().decode(br#"[{"t":1},{"t":2}]"#).unwrap().len(), 2);
        assert_eq!(
            json()
                .decode(b"{\"t\":1}\n{\"t\":2}\n{\"t\":3}\n")
                .unwrap()
                .len(),
            3
        );
    }

    #[test]
    fn json_errors_say_what_was_expected() {
        assert!(
            json()
                .decode(b"{\"t\":")
                .unwrap_err()
                .0
                .contains("invalid JSON")
        );
        assert!(
            json()
                .decode(b"42")
                .unwrap_err()
                .0
                .contains("expected an object")
        );
        assert!(json().decode(b"[1]").unwrap_err().0.contains("item 0"));
        assert!(json().decode(b"  ").unwrap_err().0.contains("empty body"));
    }

    #[test]
    fn msgpack_map() {
        let payload = rmp_serde::to_vec_named(&serde_json::json!({"temperature": 21.5})).unwrap();
        let decoder = DecodingConfig {
            codec: Codec::Msgpack,
            ..DecodingConfig::default()
        }
        .decoder();
        assert_eq!(decoder.decode(&payload).unwrap()[0]["temperature"], 21.5);
        assert!(decoder.decode(b"\xc1").is_err());
    }

    #[test]
    fn deep_msgpack_is_refused_without_deep_recursion() {
        // 1000 nested one-element arrays: rmp_serde alone would recurse through all of them
        // (1024 levels), overflowing a 2 MB stack in a debug build.
        let mut payload = vec![0x91; 1000];
        payload.push(0x80);
        let decoder = DecodingConfig {
            codec: Codec::Msgpack,
            ..DecodingConfig::default()
        }
        .decoder();
        let err = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || decoder.decode(&payload).unwrap_err())
            .unwrap()
            .join()
            .unwrap();
        assert!(err.0.contains("depth"), "{err}");
        // A reading exactly `max_depth` deep, in an array of readings, still decodes.
        let at_limit = DecodingConfig {
            codec: Codec::Msgpack,
            max_depth: 3,
            ..DecodingConfig::default()
        }
        .decoder();
        let payload = rmp_serde::to_vec_named(&serde_json::json!([{"a": {"b": [1]}}])).unwrap();
        assert_eq!(at_limit.decode(&payload).unwrap().len(), 1);
        let payload = rmp_serde::to_vec_named(&serde_json::json!([{"a": {"b": [[1]]}}])).unwrap();
        assert!(
            at_limit
                .decode(&payload)
                .unwrap_err()
                .0
                .contains("max_depth")
        );
    }

    #[test]
    fn layout_only_with_binary() {
        let cfg = DecodingConfig {
            codec: Codec::Binary,
            ..DecodingConfig::default()
        };
        assert!(cfg.check().is_err());
        let cfg = DecodingConfig {
            codec: Codec::Json,
            layout: Some(vec![]),
            ..DecodingConfig::default()
        };
        assert!(cfg.check().is_err());
    }

    #[test]
    fn a_reading_over_a_limit_refuses_the_payload() {
        let limited = DecodingConfig {
            max_fields: 2,
            max_depth: 3,
            ..DecodingConfig::default()
        }
        .decoder();
        assert!(
            limited
                .decode(br#"[{"a":1,"b":2},{"a":{"b":[1]}}]"#)
                .is_ok()
        );
        let err = limited
            .decode(br#"[{"a":1},{"a":1,"b":2,"c":3}]"#)
            .unwrap_err();
        assert_eq!(
            err.0,
            "reading 1: it has 3 fields, more than `max_fields` (2)"
        );
        let err = limited.decode(br#"{"a":{"b":[[1]]}}"#).unwrap_err();
        assert_eq!(
            err.0,
            "reading 0: its objects and arrays nest deeper than `max_depth` (3)"
        );
        let payload = rmp_serde::to_vec_named(&serde_json::json!({"a":1,"b":2,"c":3})).unwrap();
        let msgpack = DecodingConfig {
            codec: Codec::Msgpack,
            max_fields: 2,
            ..DecodingConfig::default()
        }
        .decoder();
        assert!(
            msgpack
                .decode(&payload)
                .unwrap_err()
                .0
                .contains("max_fields")
        );
    }
}
