//! The registry's hot paths, on one core, without I/O:
//!
//! - `registry/lookup`: `Registry::lookup` of random registered ids among 100,000 devices
//!   (what `enrich` and every gate do per event);
//! - `registry/enrich`: the `enrich` transform over a batch of 1000 events (lookup plus
//!   adding the `device` object to each event);
//! - `sas/verify`: parsing and verifying an `Authorization: SharedAccessSignature` header
//!   against a device's two keys (the token signed with the secondary, the slower case);
//! - `sas/authenticate`: `Registry::authenticate`, the whole check the `http` source makes
//!   per request (parse, lookup, verify, status).
//!
//! Run with `cargo bench --bench registry`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;
use weir::config::{ComponentId, ComponentKind, OutputName};
use weir::event::{Event, EventBatch, EventMeta, Fields, Value};
use weir::registry::{DevicePatch, DeviceSpec, Registry, keys, sas};
use weir::telemetry::Telemetry;
use weir::transforms::{Enrich, EnrichConfig, FunctionTransform, TransformOutput};

/// The allocator of the `weir` binary, so clones cost what they cost in the daemon.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DEVICES: usize = 100_000;
const BATCH: usize = 1000;

fn fleet() -> (tempfile::TempDir, Arc<Registry>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let registry = Registry::open(&dir.path().join("registry.redb")).expect("registry opens");
    let specs: Vec<DeviceSpec> = (0..DEVICES)
        .map(|n| DeviceSpec {
            id: format!("dev-{n:06}"),
            fields: DevicePatch {
                tags: Some(
                    serde_json::from_value(
                        json!({"max_temp": 80 + n % 20, "site": format!("plant-{}", n % 7)}),
                    )
                    .expect("tags"),
                ),
                ..DevicePatch::default()
            },
        })
        .collect();
    registry.import(specs).expect("import");
    (dir, registry)
}

/// Ids to look up, in a scattered order (a pseudo-random walk over the fleet).
fn ids(n: usize) -> Vec<Arc<str>> {
    (0..n)
        .map(|i| format!("dev-{:06}", (i * 7919) % DEVICES).into())
        .collect()
}

fn bench_lookup(c: &mut Criterion, registry: &Arc<Registry>) {
    let wanted = ids(BATCH);
    let mut group = c.benchmark_group("registry");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("lookup", |b| {
        b.iter(|| {
            let mut found = 0;
            for id in &wanted {
                found += usize::from(registry.lookup(black_box(id)).is_some());
            }
            assert_eq!(found, BATCH);
        })
    });

    group.bench_function("lookup_and_clone", |b| {
        b.iter(|| {
            for id in &wanted {
                let entry = registry.lookup(black_box(id)).expect("registered");
                black_box(entry.enrichment.clone());
            }
        })
    });

    let config: EnrichConfig = serde_json::from_value(json!({})).expect("enrich config");
    let mut enrich = Enrich::new(Arc::clone(registry), &config);
    let id = ComponentId::new("enriched");
    let telemetry = Telemetry::new().component(&id, ComponentKind::Transform, "enrich");
    let mut out = TransformOutput::new(&id, telemetry, &[OutputName::errors()]);
    let meta = Arc::new(EventMeta::received_by("devices".into()));
    let events = || -> EventBatch {
        ids(BATCH)
            .into_iter()
            .enumerate()
            .map(|(seq, device)| {
                let mut fields = Fields::new();
                fields.insert("seq".into(), Value::from(seq));
                fields.insert("temperature".into(), Value::from(75.5));
                Event::new(Some(device), fields, Arc::clone(&meta))
            })
            .collect::<Vec<_>>()
            .into()
    };
    // Timed by hand around `transform_batch` only: building the input events and dropping
    // the enriched ones stay outside the measurement.
    group.bench_function("enrich", |b| {
        b.iter_custom(|iterations| {
            let mut spent = std::time::Duration::ZERO;
            for _ in 0..iterations {
                let batch = events();
                let started = std::time::Instant::now();
                enrich.transform_batch(batch, &mut out);
                spent += started.elapsed();
                let outputs = out.take();
                assert_eq!(outputs[0].1.len(), BATCH);
                drop(outputs);
            }
            spent
        })
    });
    group.finish();
}

fn bench_sas(c: &mut Criterion, registry: &Arc<Registry>) {
    let device = registry.get("dev-000042").expect("device");
    let primary = keys::decode(device.primary_key.expose_str()).expect("key");
    let secondary = keys::decode(device.secondary_key.expose_str()).expect("key");
    let expiry = jiff::Timestamp::now().as_second() as u64 + 3600;
    let token = sas::sign("devices/dev-000042", &secondary, expiry);
    let now = expiry - 60;
    let mut group = c.benchmark_group("sas");
    group.throughput(Throughput::Elements(1));
    group.bench_function("verify", |b| {
        b.iter(|| {
            let parsed = sas::parse(black_box(&token)).expect("parses");
            parsed
                .verify("dev-000042", &primary, &secondary, now)
                .expect("verifies")
        })
    });
    group.bench_function("authenticate", |b| {
        b.iter(|| {
            registry
                .authenticate(black_box("dev-000042"), Some(black_box(&token)))
                .expect("authenticated")
        })
    });
    group.finish();
}

fn benches(c: &mut Criterion) {
    let (_dir, registry) = fleet();
    bench_lookup(c, &registry);
    bench_sas(c, &registry);
}

criterion_group!(registry_benches, benches);
criterion_main!(registry_benches);
