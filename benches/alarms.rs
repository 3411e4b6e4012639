//! Per-event cost of the `alarm` transform, without I/O apart from its state file:
//!
//! - `alarm/steady`: readings of 100 devices that stay below the raise threshold, the
//!   common case (each reading renders the key and evaluates `raise` and `clear`);
//! - `alarm/flapping`: readings oscillating around the raise threshold inside the
//!   hysteresis band of 100 active alarms: evaluated, no transition;
//! - `alarm/transitions`: every reading raises or clears an alarm, the worst case: each
//!   transition rewrites and fsyncs the state file (`data_dir/alarms/<id>.json`) with 100
//!   keys in it.
//!
//! Batches of 1000 readings; throughput in events. Run with `cargo bench --bench alarms`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;
use weir::config::{ComponentId, ComponentKind, OutputName};
use weir::event::{Event, EventBatch, EventMeta, Fields, Value};
use weir::telemetry::Telemetry;
use weir::transforms::{
    AlarmConfig, FunctionTransform, TransformComponent, TransformContext, TransformOutput,
};

const BATCH: usize = 1000;
const DEVICES: usize = 100;

fn batch(temperature: impl Fn(usize) -> f64) -> EventBatch {
    let meta = Arc::new(EventMeta::received_by("devices".into()));
    let devices: Vec<Arc<str>> = (0..DEVICES)
        .map(|d| Arc::from(format!("engine-{d:03}")))
        .collect();
    (0..BATCH)
        .map(|i| {
            let mut fields = Fields::new();
            fields.insert("temp_avg".into(), Value::from(temperature(i)));
            let mut event = Event::new(
                Some(Arc::clone(&devices[i % DEVICES])),
                fields,
                Arc::clone(&meta),
            );
            event.time = jiff::Timestamp::from_second(1_767_225_600 + i as i64).expect("a time");
            event
        })
        .collect::<Vec<_>>()
        .into()
}

struct Stage {
    transform: Box<dyn FunctionTransform>,
    out: TransformOutput,
    _dir: tempfile::TempDir,
}

impl Stage {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        let config: AlarmConfig = serde_json::from_value(json!({
            "raise": { "critical": "temp_avg > 120", "major": "temp_avg > 100" },
            "clear": "temp_avg < 90",
        }))
        .expect("valid alarm config");
        let id = ComponentId::new("hot");
        let cx = TransformContext {
            data_dir: dir.path().to_path_buf(),
            ..TransformContext::new(id.clone())
        };
        let transform = config.build(&cx).expect("the alarm builds");
        let telemetry = Telemetry::new().component(&id, ComponentKind::Transform, "alarm");
        let out = TransformOutput::new(&id, telemetry, &[OutputName::errors()]);
        Self {
            transform,
            out,
            _dir: dir,
        }
    }

    fn run(&mut self, batch: EventBatch) -> usize {
        self.transform.transform_batch(batch, &mut self.out);
        self.out.take().into_iter().map(|(_, e)| e.len()).sum()
    }
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("alarm");
    group.throughput(Throughput::Elements(BATCH as u64));

    let mut stage = Stage::new();
    group.bench_function("steady", |b| {
        b.iter_batched(
            || batch(|i| 60.0 + (i % 20) as f64),
            |events| black_box(stage.run(events)),
            BatchSize::LargeInput,
        )
    });

    let mut stage = Stage::new();
    // Raise every device once; then stay in the band between clear (90) and raise (100+).
    stage.run(batch(|_| 105.0));
    group.bench_function("flapping", |b| {
        b.iter_batched(
            || batch(|i| if i % 2 == 0 { 101.0 } else { 95.0 }),
            |events| black_box(stage.run(events)),
            BatchSize::LargeInput,
        )
    });

    let mut stage = Stage::new();
    group.sample_size(10);
    group.bench_function("transitions", |b| {
        b.iter_batched(
            // Each device alternates between hot and cool: every reading is a transition.
            || {
                batch(|i| {
                    if (i / DEVICES).is_multiple_of(2) {
                        105.0
                    } else {
                        80.0
                    }
                })
            },
            |events| black_box(stage.run(events)),
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
