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

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use weir::codecs::{Decoder, DecodingConfig};
use weir::config::{ComponentId, ComponentKind};
use weir::telemetry::Telemetry;

#[path = "support/stages.rs"]
mod stages;
use stages::{Stage, array_body, batch, ndjson_body, to_events};

const SIZES: [usize; 2] = [100, 1000];

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
