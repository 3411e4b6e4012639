//! Fuzz entry points: one function per target of the `fuzz/` crate, each taking the raw
//! bytes libFuzzer generates and driving weir's real code with them.
//!
//! They live here, not in `fuzz/`, so that `tests/it/fuzz_corpus.rs` can replay the
//! committed corpora through exactly the same code on a stable toolchain (CI has no
//! nightly and no cargo-fuzz). A target must never panic, hang or allocate without bound
//! on any input: that is what the fuzzers look for. Not part of weir's API.

use std::sync::Arc;

use serde_json::Value;

use crate::codecs::{BinaryType, Codec, DecodingConfig, LayoutField};
use crate::event::{Event, EventMeta, Fields};
use crate::registry::sas;
use crate::template::{Condition, Template, ValueExpr};

/// A fuzz target: runs weir's code on one input; the fuzzers look for its panics and hangs.
pub type Target = fn(&[u8]);

/// Every target, by the name of its `fuzz/fuzz_targets/<name>.rs` and corpus directory.
pub const TARGETS: &[(&str, Target)] = &[
    ("decode", decode),
    ("decode_binary", decode_binary),
    ("pipeline", pipeline),
    ("sas", sas_token),
    ("template", template),
];

/// The text codecs and MessagePack: the first byte picks the codec, the rest is the
/// payload, decoded with the default reading limits.
pub fn decode(data: &[u8]) {
    let Some((&selector, payload)) = data.split_first() else {
        return;
    };
    let codec = match selector % 4 {
        0 => Codec::Json,
        1 => Codec::Ndjson,
        2 => Codec::Msgpack,
        _ => Codec::Bytes,
    };
    let config = DecodingConfig {
        codec,
        ..DecodingConfig::default()
    };
    if let Ok(readings) = config.decoder().decode(payload) {
        // Decoded readings become events; their view is what conditions read.
        for fields in readings {
            let _ = event(fields).view().to_string();
        }
    }
}

/// The wire types in the order a layout byte picks them.
const BINARY_TYPES: [&str; 19] = [
    "bool", "u8", "i8", "u16le", "u16be", "i16le", "i16be", "u32le", "u32be", "i32le", "i32be",
    "u64le", "u64be", "i64le", "i64be", "f32le", "f32be", "f64le", "f64be",
];

/// Binary frames: the leading bytes describe a layout (as a pipeline's `layout:` would),
/// the rest is the frame. Only layouts that pass the config check are decoded, as in weir.
pub fn decode_binary(data: &[u8]) {
    let mut input = Bytes(data);
    let count = input.byte().map_or(1, |n| usize::from(n % 8) + 1);
    let mut layout = Vec::with_capacity(count);
    for i in 0..count {
        let (Some(ty), Some(flags)) = (input.byte(), input.byte()) else {
            return;
        };
        let name = BINARY_TYPES[usize::from(ty) % BINARY_TYPES.len()];
        let Ok(ty) = serde_json::from_value::<BinaryType>(Value::from(name)) else {
            return;
        };
        layout.push(LayoutField {
            // Bit 0 repeats a name, so the duplicate check is reached too.
            name: format!("f{}", if flags & 1 == 1 { 0 } else { i }),
            ty,
            at: (flags & 2 != 0).then(|| input.u64()).map(|at| at as usize),
            scale: (flags & 4 != 0).then(|| input.f64()),
            add: (flags & 8 != 0).then(|| input.f64()),
        });
    }
    let config = DecodingConfig {
        codec: Codec::Binary,
        layout: Some(layout),
        ..DecodingConfig::default()
    };
    if config.check().is_ok() {
        let _ = config.decoder().decode(input.0);
    }
}

/// A pipeline file through the loader and every validation `weir validate` runs (YAML,
/// `${VAR}` substitution, component options and checks, the graph), and the diagnostics
/// rendered as `weir validate` prints them.
pub fn pipeline(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Some variables are set and some are not, so both paths of substitution are reached.
    let env = |name: &str| {
        name.len()
            .is_multiple_of(2)
            .then(|| format!("v{}", name.len()))
    };
    match crate::config::load_str(&crate::CATALOGUE, "fuzz.yaml", text, &env) {
        Ok((config, warnings)) => {
            let _ = warnings.to_string();
            let _ = config.components.len();
        }
        Err(errors) => {
            let _ = errors.to_string();
        }
    }
}

/// An `Authorization` header as a SAS token: parsed, and when it parses, checked against a
/// device and keys; the text is also signed as a resource and must parse back to itself.
pub fn sas_token(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(token) = sas::parse(text) {
        let device = token.device_id().unwrap_or("dev-1").to_owned();
        let _ = token.verify(&device, b"primary", b"secondary", 1_900_000_000);
    }
    let signed = sas::sign(text, b"primary", 1_900_000_000);
    match sas::parse(&signed) {
        Ok(token) => {
            assert_eq!(
                token.resource, text,
                "a signed resource parses back to itself"
            );
            assert!(token.check_signature(b"primary", b"other").is_ok());
        }
        // `sr` may not be empty; every other resource must round-trip.
        Err(err) => assert!(text.is_empty(), "signed token for {text:?} refused: {err}"),
    }
}

/// Template, condition and value-expression compilation, and rendering the compiled ones
/// against an event: the first byte picks which, the rest is the source text.
pub fn template(data: &[u8]) {
    let Some((&selector, source)) = data.split_first() else {
        return;
    };
    let Ok(source) = std::str::from_utf8(source) else {
        return;
    };
    let context = sample_event().view();
    match selector % 3 {
        0 => {
            if let Ok(template) = Template::compile(source) {
                let _ = template.variables();
                let _ = template.render(&context);
            }
        }
        1 => {
            if let Ok(condition) = Condition::compile(source) {
                let _ = condition.variables();
                let _ = condition.matches(&context);
            }
        }
        _ => {
            if let Ok(expr) = ValueExpr::compile(source) {
                let _ = expr.variables();
                if let Ok(value) = expr.eval(&context) {
                    let _ = crate::event::from_template_value(&value);
                }
            }
        }
    }
}

fn event(fields: Fields) -> Event {
    let meta = EventMeta::received_at(Arc::from("fuzz"), jiff::Timestamp::UNIX_EPOCH);
    Event::new(Some(Arc::from("dev-1")), fields, Arc::new(meta))
}

/// An event with fields of every JSON kind, for templates to read.
fn sample_event() -> Event {
    let Value::Object(fields) = serde_json::json!({
        "temperature": 21.5,
        "humidity": 40,
        "site": "A",
        "ok": true,
        "missing": null,
        "tags": ["a", "b", 3],
        "pos": { "lat": 52.5, "lon": 13.4, "alt": { "m": 34 } },
    }) else {
        unreachable!("a JSON object literal");
    };
    event(fields)
}

/// A reader of fuzz bytes that yields zeros once they run out, so every input is used.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(first)
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0; N];
        for slot in &mut out {
            *slot = self.byte().unwrap_or(0);
        }
        out
    }

    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }

    fn f64(&mut self) -> f64 {
        f64::from_le_bytes(self.array())
    }
}
