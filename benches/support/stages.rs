//! What the `transforms` bench and the `transforms_callgrind` driver share: readings shaped
//! like `weir-load`'s, request bodies, events as the http source builds them, and the remap
//! and filter stages under test.

// Each of the two benches uses a part of this.
#![allow(dead_code)]

use std::sync::Arc;

use serde_json::json;
use weir::config::{ComponentId, ComponentKind, OutputName};
use weir::event::{Event, EventBatch, EventMeta, Fields, Value};
use weir::telemetry::Telemetry;
use weir::transforms::{
    FilterConfig, FunctionTransform, RemapConfig, TransformComponent, TransformContext,
    TransformOutput,
};

/// One reading, as `weir-load` sends it.
pub fn reading(seq: usize) -> Fields {
    let mut fields = Fields::new();
    fields.insert("seq".into(), Value::from(seq));
    fields.insert(
        "temperature".into(),
        Value::from(20.0 + (seq * 37 % 1000) as f64 / 10.0),
    );
    fields.insert(
        "vibration".into(),
        Value::from(0.5 + (seq * 13 % 300) as f64 / 100.0),
    );
    fields.insert("ts".into(), Value::from(1_767_225_600_000u64 + seq as u64));
    fields
}

/// A JSON array body of `n` readings.
pub fn array_body(n: usize) -> Vec<u8> {
    serde_json::to_vec(&(0..n).map(reading).collect::<Vec<_>>()).expect("readings serialize")
}

/// An NDJSON body of `n` readings.
pub fn ndjson_body(n: usize) -> Vec<u8> {
    let mut body = Vec::new();
    for seq in 0..n {
        serde_json::to_writer(&mut body, &reading(seq)).expect("readings serialize");
        body.push(b'\n');
    }
    body
}

/// Events as the http source builds them from decoded readings: one shared meta per request,
/// each event with its own fields (so a transform that changes them does not copy).
pub fn to_events(readings: Vec<Fields>) -> EventBatch {
    let meta = Arc::new(EventMeta::received_by("devices".into()));
    let device: Arc<str> = "load-000001".into();
    readings
        .into_iter()
        .map(|fields| Event::new(Some(Arc::clone(&device)), fields, Arc::clone(&meta)))
        .collect::<Vec<_>>()
        .into()
}

pub fn batch(n: usize) -> EventBatch {
    to_events((0..n).map(reading).collect())
}

/// A built transform and the output it writes into.
pub struct Stage {
    transform: Box<dyn FunctionTransform>,
    out: TransformOutput,
}

impl Stage {
    pub fn new(id: &str, type_name: &str, config: &dyn TransformComponent) -> Self {
        let id = ComponentId::new(id);
        let transform = config
            .build(&TransformContext::new(id.clone()))
            .expect("the bench transform builds");
        let telemetry = Telemetry::new().component(&id, ComponentKind::Transform, type_name);
        let out = TransformOutput::new(&id, telemetry, &[OutputName::errors()]);
        Self { transform, out }
    }

    pub fn remap() -> Self {
        let config: RemapConfig = serde_json::from_value(json!({
            "set": { "temperature_f": "temperature * 9 / 5 + 32" },
            "rename": { "vibration": "vibration_g" },
            "drop": ["ts"],
        }))
        .expect("valid remap config");
        Self::new("shaped", "remap", &config)
    }

    pub fn filter() -> Self {
        let config: FilterConfig = serde_json::from_value(json!({
            "condition": "temperature is number and temperature < 200",
        }))
        .expect("valid filter config");
        Self::new("valid", "filter", &config)
    }

    /// Runs one batch; returns the default output (errors would mean a broken bench).
    pub fn run(&mut self, batch: EventBatch) -> Vec<Event> {
        self.transform.transform_batch(batch, &mut self.out);
        let mut outputs = self.out.take().into_iter();
        let (_, events) = outputs.next().expect("the default output comes first");
        debug_assert!(outputs.all(|(_, errors)| errors.is_empty()));
        events
    }
}
