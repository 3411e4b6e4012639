//! Per-event cost of the hot path of an HTTP pipeline, without the network:
//!
//! - `decode/json_array`, `decode/ndjson`: the json codec turning a request body into
//!   readings (`DecodingConfig::default().decoder().decode(..)`);
//! - `remap`: one `set` expression, one `rename`, one `drop`;
//! - `filter`: `temperature is number and temperature < 200` (every event passes);
//! - `chain`: body → decode → events (as the http source builds them) → remap → filter;
//! - `output_hooks`: what every output adds to a batch besides sending it — the tap check
//!   and the hop recorder — with no tap attached and no reading sampled (`idle`: the
//!   cost every reading pays), and with a tap attached (`tap_attached`: a copy of the batch
//!   into the tap's queue).
//!
//! Each runs on batches of 100 and 1000 readings shaped like `weir-load`'s and reports
//! throughput in events. Run with `cargo bench --bench transforms`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;
use weir::codecs::{Decoder, DecodingConfig};
use weir::config::{ComponentId, ComponentKind, OutputName};
use weir::event::{Event, EventBatch, EventMeta, Fields, Value};
use weir::telemetry::Telemetry;
use weir::transforms::{
    FilterConfig, FunctionTransform, RemapConfig, TransformComponent, TransformContext,
    TransformOutput,
};

const SIZES: [usize; 2] = [100, 1000];

/// One reading, as `weir-load` sends it.
fn reading(seq: usize) -> Fields {
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
fn array_body(n: usize) -> Vec<u8> {
    serde_json::to_vec(&(0..n).map(reading).collect::<Vec<_>>()).expect("readings serialize")
}

/// An NDJSON body of `n` readings.
fn ndjson_body(n: usize) -> Vec<u8> {
    let mut body = Vec::new();
    for seq in 0..n {
        serde_json::to_writer(&mut body, &reading(seq)).expect("readings serialize");
        body.push(b'\n');
    }
    body
}

/// Events as the http source builds them from decoded readings: one shared meta per request,
/// each event with its own fields (so a transform that changes them does not copy).
fn to_events(readings: Vec<Fields>) -> EventBatch {
    let meta = Arc::new(EventMeta::received_by("devices".into()));
    let device: Arc<str> = "load-000001".into();
    readings
        .into_iter()
        .map(|fields| Event::new(Some(Arc::clone(&device)), fields, Arc::clone(&meta)))
        .collect::<Vec<_>>()
        .into()
}

fn batch(n: usize) -> EventBatch {
    to_events((0..n).map(reading).collect())
}

/// A built transform and the output it writes into.
struct Stage {
    transform: Box<dyn FunctionTransform>,
    out: TransformOutput,
}

impl Stage {
    fn new(id: &str, type_name: &str, config: &dyn TransformComponent) -> Self {
        let id = ComponentId::new(id);
        let transform = config
            .build(&TransformContext::new(id.clone()))
            .expect("the bench transform builds");
        let telemetry = Telemetry::new().component(&id, ComponentKind::Transform, type_name);
        let out = TransformOutput::new(&id, telemetry, &[OutputName::errors()]);
        Self { transform, out }
    }

    fn remap() -> Self {
        let config: RemapConfig = serde_json::from_value(json!({
            "set": { "temperature_f": "temperature * 9 / 5 + 32" },
            "rename": { "vibration": "vibration_g" },
            "drop": ["ts"],
        }))
        .expect("valid remap config");
        Self::new("shaped", "remap", &config)
    }

    fn filter() -> Self {
        let config: FilterConfig = serde_json::from_value(json!({
            "condition": "temperature is number and temperature < 200",
        }))
        .expect("valid filter config");
        Self::new("valid", "filter", &config)
    }

    /// Runs one batch; returns the default output (errors would mean a broken bench).
    fn run(&mut self, batch: EventBatch) -> Vec<Event> {
        self.transform.transform_batch(batch, &mut self.out);
        let mut outputs = self.out.take().into_iter();
        let (_, events) = outputs.next().expect("the default output comes first");
        debug_assert!(outputs.all(|(_, errors)| errors.is_empty()));
        events
    }
}

fn bench_decode(c: &mut Criterion) {
    let decoder: Decoder = DecodingConfig::default().decoder();
    let mut group = c.benchmark_group("decode");
    for n in SIZES {
        group.throughput(Throughput::Elements(n as u64));
        let array = array_body(n);
        assert_eq!(decoder.decode(&array).map(|r| r.len()), Ok(n));
        group.bench_with_input(BenchmarkId::new("json_array", n), &array, |b, body| {
            b.iter(|| decoder.decode(black_box(body)))
        });
        let ndjson = ndjson_body(n);
        assert_eq!(decoder.decode(&ndjson).map(|r| r.len()), Ok(n));
        group.bench_with_input(BenchmarkId::new("ndjson", n), &ndjson, |b, body| {
            b.iter(|| decoder.decode(black_box(body)))
        });
    }
    group.finish();
}

fn bench_remap(c: &mut Criterion) {
    let mut stage = Stage::remap();
    let mut group = c.benchmark_group("remap");
    for n in SIZES {
        group.throughput(Throughput::Elements(n as u64));
        let sample = stage.run(batch(n));
        assert_eq!(sample.len(), n);
        assert!(sample[0].get("temperature_f").is_some() && sample[0].get("ts").is_none());
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter_batched(|| batch(n), |batch| stage.run(batch), BatchSize::SmallInput)
        });
    }
    group.finish();
}

fn bench_filter(c: &mut Criterion) {
    let mut stage = Stage::filter();
    let mut group = c.benchmark_group("filter");
    for n in SIZES {
        group.throughput(Throughput::Elements(n as u64));
        assert_eq!(stage.run(batch(n)).len(), n);
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter_batched(|| batch(n), |batch| stage.run(batch), BatchSize::SmallInput)
        });
    }
    group.finish();
}

fn bench_chain(c: &mut Criterion) {
    let decoder = DecodingConfig::default().decoder();
    let mut remap = Stage::remap();
    let mut filter = Stage::filter();
    let mut chain = move |body: &[u8]| {
        let readings = decoder.decode(body).expect("the bench body decodes");
        let shaped = remap.run(to_events(readings));
        filter.run(shaped.into())
    };
    let mut group = c.benchmark_group("chain");
    for n in SIZES {
        group.throughput(Throughput::Elements(n as u64));
        let body = array_body(n);
        assert_eq!(chain(&body).len(), n);
        group.bench_with_input(
            BenchmarkId::new("decode_remap_filter", n),
            &body,
            |b, body| b.iter(|| chain(black_box(body))),
        );
    }
    group.finish();
}

fn bench_output_hooks(c: &mut Criterion) {
    use weir::topology::tap::{Port, TapFilter, TapHub};
    let telemetry = Telemetry::new();
    let component = telemetry.component(
        &ComponentId::new("shaped"),
        ComponentKind::Transform,
        "remap",
    );
    let hops = component.hops(Some("default"));
    let hub = TapHub::new(telemetry.metrics());
    let point = hub.point(&ComponentId::new("shaped"), Port::Output("default".into()));
    let mut group = c.benchmark_group("output_hooks");
    for n in SIZES {
        group.throughput(Throughput::Elements(n as u64));
        let events = batch(n);
        group.bench_with_input(BenchmarkId::new("idle", n), &events, |b, events| {
            b.iter(|| {
                point.offer(black_box(events));
                hops.record(black_box(&events.events));
            })
        });
        let mut tap = hub.attach(
            TapFilter::new(&["shaped".into()], &[]).unwrap(),
            1 << 16,
            None,
        );
        group.bench_with_input(BenchmarkId::new("tap_attached", n), &events, |b, events| {
            b.iter(|| {
                point.offer(black_box(events));
                hops.record(black_box(&events.events));
                // The tap's reader keeps up.
                drop(tap.try_next());
            })
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    bench_decode,
    bench_remap,
    bench_filter,
    bench_chain,
    bench_output_hooks
);
criterion_main!(benches);
