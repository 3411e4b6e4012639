//! `decode`: turn an encoded payload field into event fields.
//!
//! The protocol-translation step of an IoT pipeline: a source that receives opaque frames
//! (`decoding: { codec: bytes }`) or an envelope with an encoded payload (a LoRaWAN uplink's
//! Base64 `data`) hands them to `decode`, which applies a codec and merges the result into
//! the event.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{FunctionTransform, TransformComponent, TransformContext, TransformOutput};
use crate::codecs::{Codec, Decoder, DecodingConfig, LayoutField};
use crate::config::FieldProblem;
use crate::event::{Event, Value};
use crate::telemetry::events::ErrorType;

/// How the payload field's string holds bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FieldEncoding {
    #[default]
    Base64,
    Hex,
    /// The string's own UTF-8 bytes (e.g. JSON text inside a field).
    Text,
}

/// Decodes the payload in `field` with `codec` and merges the fields it yields into the
/// event (decoded values win). A payload with several readings becomes several events.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DecodeConfig {
    pub codec: Codec,
    /// Frame layout, for codec `binary`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<Vec<LayoutField>>,
    /// The field holding the payload.
    #[serde(default = "default_field")]
    pub field: String,
    /// How the payload field encodes bytes.
    #[serde(default)]
    pub encoding: FieldEncoding,
    /// Remove the payload field after decoding.
    #[serde(default = "default_true")]
    pub drop_field: bool,
}

fn default_field() -> String {
    "payload".into()
}

fn default_true() -> bool {
    true
}

impl DecodeConfig {
    fn decoding(&self) -> DecodingConfig {
        DecodingConfig {
            codec: self.codec,
            layout: self.layout.clone(),
            ..DecodingConfig::default()
        }
    }
}

impl TransformComponent for DecodeConfig {
    fn check(&self) -> Vec<FieldProblem> {
        let mut problems = Vec::new();
        if let Err(message) = self.decoding().check() {
            let field = if self.layout.is_some() {
                "layout"
            } else {
                "codec"
            };
            problems.push(FieldProblem::at([field], message));
        }
        if self.codec == Codec::Bytes {
            problems.push(FieldProblem::at(["codec"], "codec `bytes` does not decode anything: expected `json`, `ndjson`, `msgpack` or `binary`"));
        }
        problems
    }

    fn build(&self, _: &TransformContext) -> anyhow::Result<Box<dyn FunctionTransform>> {
        Ok(Box::new(Decode {
            decoder: self.decoding().decoder(),
            field: self.field.clone(),
            encoding: self.encoding,
            drop_field: self.drop_field,
        }))
    }
}

pub struct Decode {
    decoder: Decoder,
    field: String,
    encoding: FieldEncoding,
    drop_field: bool,
}

impl Decode {
    fn payload(&self, event: &Event) -> Result<Vec<u8>, String> {
        use base64::Engine as _;
        let text = match event.get(&self.field) {
            Some(Value::String(text)) => text,
            Some(other) => {
                return Err(format!(
                    "field `{}` holds {other}: expected an encoded string",
                    self.field
                ));
            }
            None => return Err(format!("field `{}` is missing", self.field)),
        };
        match self.encoding {
            FieldEncoding::Base64 => base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|err| format!("field `{}` is not Base64: {err}", self.field)),
            FieldEncoding::Hex => hex::decode(text.trim())
                .map_err(|err| format!("field `{}` is not hex: {err}", self.field)),
            FieldEncoding::Text => Ok(text.as_bytes().to_vec()),
        }
    }
}

impl FunctionTransform for Decode {
    fn transform(&mut self, event: Event, out: &mut TransformOutput) {
        let decoded = self
            .payload(&event)
            .and_then(|bytes| self.decoder.decode(&bytes).map_err(|e| e.0));
        let readings = match decoded {
            Ok(readings) => readings,
            Err(message) => return out.error(event, ErrorType::Decode, message),
        };
        // Every reading but the last gets a copy of the envelope; the last takes it.
        let mut readings = readings.into_iter();
        let last = readings.next_back();
        for reading in readings {
            out.push(self.merge(event.clone(), reading));
        }
        if let Some(reading) = last {
            out.push(self.merge(event, reading));
        }
    }
}

impl Decode {
    /// The envelope with its payload field replaced by the decoded fields.
    fn merge(&self, mut event: Event, reading: crate::event::Fields) -> Event {
        let fields = event.fields_mut();
        if self.drop_field {
            fields.shift_remove(&self.field);
        }
        fields.extend(reading);
        event
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ComponentId;
    use crate::config::ComponentKind;
    use crate::event::{EventMeta, Fields};
    use crate::telemetry::Telemetry;
    use std::sync::Arc;

    fn run(config: &str, payload: &str) -> Vec<(String, Vec<Event>)> {
        let config: DecodeConfig = serde_json::from_str(config).unwrap();
        assert!(config.check().is_empty());
        let id = ComponentId::new("dec");
        let mut transform = config.build(&TransformContext::new(id.clone())).unwrap();
        let telemetry = Telemetry::new().component(&id, ComponentKind::Transform, "decode");
        let mut out = TransformOutput::new(&id, telemetry, &[crate::config::OutputName::errors()]);
        let mut fields = Fields::new();
        fields.insert("payload".into(), Value::String(payload.into()));
        let event = Event::new(
            Some("d1".into()),
            fields,
            Arc::new(EventMeta::received_by("s".into())),
        );
        transform.transform(event, &mut out);
        out.take()
    }

    #[test]
    fn binary_frame_from_hex() {
        let out = run(
            r#"{"codec":"binary","encoding":"hex","layout":[{"name":"temperature","type":"i16le","scale":0.01}]}"#,
            "3408",
        );
        let event = &out[0].1[0];
        assert!((event.get("temperature").unwrap().as_f64().unwrap() - 21.0).abs() < 1e-9);
        assert!(event.get("payload").is_none());
    }

    #[test]
    fn json_array_in_text_field_fans_out() {
        let out = run(
            r#"{"codec":"json","encoding":"text"}"#,
            r#"[{"t":1},{"t":2}]"#,
        );
        assert_eq!(out[0].1.len(), 2);
    }

    #[test]
    fn undecodable_payload_goes_to_errors_with_reason() {
        let out = run(r#"{"codec":"json","encoding":"base64"}"#, "%%%");
        assert!(out[0].1.is_empty());
        let dead = &out[1].1[0];
        assert!(
            dead.meta()
                .error
                .as_ref()
                .unwrap()
                .message
                .contains("not Base64")
        );
    }
}
