//! Fixed-layout binary frames: the protocol translation constrained devices need.
//!
//! A layout lists fields in frame order; each has a wire type and an optional linear
//! conversion (`value * scale + add`), e.g. an `i16le` in hundredths of a degree becomes
//! `temperature` with `scale: 0.01`. `at` pins a field to a byte offset (skipping padding).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::DecodeError;
use crate::event::Fields;

/// One field of a binary frame.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LayoutField {
    /// The event field the value is written to.
    pub name: String,
    /// The wire type: `u8`, `i16le`, `f32be`, ...
    #[serde(rename = "type")]
    pub ty: BinaryType,
    /// Byte offset of the field; default: right after the previous field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<usize>,
    /// Multiplier applied to the raw value (the result is a float).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<f64>,
    /// Added after scaling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add: Option<f64>,
}

/// Wire types of binary fields (little- or big-endian).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BinaryType {
    Bool,
    U8,
    I8,
    U16le,
    U16be,
    I16le,
    I16be,
    U32le,
    U32be,
    I32le,
    I32be,
    U64le,
    U64be,
    I64le,
    I64be,
    F32le,
    F32be,
    F64le,
    F64be,
}

impl BinaryType {
    fn width(self) -> usize {
        use BinaryType::*;
        match self {
            Bool | U8 | I8 => 1,
            U16le | U16be | I16le | I16be => 2,
            U32le | U32be | I32le | I32be | F32le | F32be => 4,
            U64le | U64be | I64le | I64be | F64le | F64be => 8,
        }
    }

    /// Reads the value from exactly `width()` bytes.
    fn read(self, b: &[u8]) -> Value {
        use BinaryType::*;
        fn arr<const N: usize>(b: &[u8]) -> [u8; N] {
            let mut out = [0; N];
            out.copy_from_slice(&b[..N]);
            out
        }
        match self {
            Bool => Value::Bool(b[0] != 0),
            U8 => Value::from(b[0]),
            I8 => Value::from(b[0] as i8),
            U16le => Value::from(u16::from_le_bytes(arr(b))),
            U16be => Value::from(u16::from_be_bytes(arr(b))),
            I16le => Value::from(i16::from_le_bytes(arr(b))),
            I16be => Value::from(i16::from_be_bytes(arr(b))),
            U32le => Value::from(u32::from_le_bytes(arr(b))),
            U32be => Value::from(u32::from_be_bytes(arr(b))),
            I32le => Value::from(i32::from_le_bytes(arr(b))),
            I32be => Value::from(i32::from_be_bytes(arr(b))),
            U64le => Value::from(u64::from_le_bytes(arr(b))),
            U64be => Value::from(u64::from_be_bytes(arr(b))),
            I64le => Value::from(i64::from_le_bytes(arr(b))),
            I64be => Value::from(i64::from_be_bytes(arr(b))),
            F32le => float(f32::from_le_bytes(arr(b)) as f64),
            F32be => float(f32::from_be_bytes(arr(b)) as f64),
            F64le => float(f64::from_le_bytes(arr(b))),
            F64be => float(f64::from_be_bytes(arr(b))),
        }
    }
}

fn float(f: f64) -> Value {
    serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
}

pub(super) fn check_layout(layout: &[LayoutField]) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for field in layout {
        if !seen.insert(field.name.as_str()) {
            return Err(format!("`layout` names field `{}` twice", field.name));
        }
        if (field.scale.is_some() || field.add.is_some()) && field.ty == BinaryType::Bool {
            return Err(format!(
                "field `{}`: `scale`/`add` do not apply to `bool`",
                field.name
            ));
        }
    }
    Ok(())
}

pub(super) fn decode(layout: &[LayoutField], frame: &[u8]) -> Result<Fields, DecodeError> {
    let mut fields = Fields::new();
    let mut cursor = 0;
    for field in layout {
        let start = field.at.unwrap_or(cursor);
        // `at` comes from the configuration and may be anything up to `usize::MAX`.
        let end = start.saturating_add(field.ty.width());
        let bytes = frame.get(start..end).ok_or_else(|| {
            DecodeError(format!(
                "frame of {} bytes is too short: field `{}` needs bytes {start}..{end}",
                frame.len(),
                field.name
            ))
        })?;
        let raw = field.ty.read(bytes);
        let value = match (field.scale, field.add) {
            (None, None) => raw,
            (scale, add) => {
                let x = raw.as_f64().unwrap_or(f64::NAN);
                float(x * scale.unwrap_or(1.0) + add.unwrap_or(0.0))
            }
        };
        fields.insert(field.name.clone(), value);
        cursor = end;
    }
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(name: &str, ty: BinaryType, scale: Option<f64>) -> LayoutField {
        LayoutField {
            name: name.into(),
            ty,
            at: None,
            scale,
            add: None,
        }
    }

    #[test]
    fn scaled_little_endian_temperature() {
        let layout = [
            field("temperature", BinaryType::I16le, Some(0.01)),
            field("battery", BinaryType::U8, None),
        ];
        let frame = [(-1234i16).to_le_bytes()[0], (-1234i16).to_le_bytes()[1], 97];
        let fields = decode(&layout, &frame).unwrap();
        assert!((fields["temperature"].as_f64().unwrap() + 12.34).abs() < 1e-9);
        assert_eq!(fields["battery"], 97);
    }

    #[test]
    fn at_skips_padding_and_short_frames_fail() {
        let mut f = field("pressure", BinaryType::U16be, None);
        f.at = Some(2);
        assert_eq!(
            decode(std::slice::from_ref(&f), &[0, 0, 1, 2]).unwrap()["pressure"],
            258
        );
        let err = decode(&[f], &[0, 0, 1]).unwrap_err();
        assert!(err.0.contains("too short"), "{err}");
    }

    #[test]
    fn an_offset_at_the_end_of_the_address_space_is_a_short_frame_not_an_overflow() {
        // Found by the `decode_binary` fuzzer: `start + width` overflowed (a panic in debug
        // builds, a wrapped range in release ones).
        let mut f = field("far", BinaryType::U32le, None);
        f.at = Some(usize::MAX - 1);
        let err = decode(&[f], &[0; 8]).unwrap_err();
        assert!(err.0.contains("too short"), "{err}");
    }
}
