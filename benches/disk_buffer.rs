//! Disk buffer throughput and size: `cargo bench --bench disk_buffer`.
//!
//! First the disk itself: the latency of a 4 KiB write + `fdatasync`, and the throughput of
//! 1 MiB writes each followed by `fdatasync`, in the directory the bench uses. Then a
//! `buffer: { type: disk }` exactly as a sink has it (`Buffer`), fed through a real
//! input channel with prebuilt readings (not the simulator; one source `Delivery` per
//! batch of 1000, as an HTTP request has), in three phases:
//!
//! 1. append: every batch sent, until every source delivery reported `Committed` (durable,
//!    group-committed); bytes on disk per reading measured on the segment files;
//! 2. read + acknowledge: the sink side takes everything in chunks of 8192 and drops them
//!    (its "commit"), until the ack position covers it all;
//! 3. pipelined: append → read → acknowledge at once, the way a running sink uses it.
//!
//! Target (issue 14): the disk buffer alone (append with group commit → read →
//! acknowledge) >= 1,000,000 events/s. `WEIR_BENCH_EVENTS` overrides the count (default
//! 2,000,000); `WEIR_BENCH_DIR` the directory (default: a temp dir under `target/`).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mimalloc::MiMalloc;
use serde_json::json;
use weir::buffers::{Buffer, BufferConfig, BufferType, WhenFull};
use weir::config::{ByteSize, ComponentId, ComponentKind};
use weir::event::{Delivery, DeliveryStatus, Event, EventBatch, EventMeta, Fields};
use weir::telemetry::Telemetry;
use weir::topology::channel::{Fanout, input_channel, targets};

mod support;

use support::disk::DiskProbe;

#[global_allocator]
static ALLOCATOR: MiMalloc = MiMalloc;

const BATCH: usize = 1000;

fn main() {
    let events: usize = std::env::var("WEIR_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000_000);
    let base = std::env::var("WEIR_BENCH_DIR").map_or_else(
        |_| Path::new(env!("CARGO_TARGET_TMPDIR")).to_path_buf(),
        std::path::PathBuf::from,
    );
    std::fs::create_dir_all(&base).expect("bench dir");
    let scratch = tempfile::tempdir_in(&base).expect("temp dir");
    println!("disk buffer bench in {}", scratch.path().display());
    DiskProbe::measure(scratch.path())
        .expect("measure the disk")
        .print();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        phased(scratch.path(), events).await;
        pipelined(scratch.path(), events).await;
    });
}

/// Readings shaped like the load generator's, one device per batch.
fn prebuilt(events: usize) -> Vec<(EventBatch, tokio::sync::oneshot::Receiver<DeliveryStatus>)> {
    let meta = Arc::new(EventMeta::received_by(Arc::from("devices")));
    (0..events.div_ceil(BATCH))
        .map(|b| {
            let device: Arc<str> = Arc::from(format!("engine-{}", b % 1000));
            let mut batch: Vec<Event> = (0..BATCH)
                .map(|i| {
                    let seq = b * BATCH + i;
                    let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(json!({
                        "seq": seq,
                        "temperature": 80.0 + (seq % 40) as f64 * 0.5,
                        "vibration": 0.1 + (seq % 13) as f64 * 0.01,
                        "ts": 1_800_000_000_000u64 + seq as u64,
                    })) else {
                        unreachable!("an object")
                    };
                    let fields: Fields = fields;
                    Event::new(Some(Arc::clone(&device)), fields, Arc::clone(&meta))
                })
                .collect();
            let outcome = Delivery::attach_all(&mut batch);
            (EventBatch::new(batch), outcome)
        })
        .collect()
}

fn buffer_config() -> BufferConfig {
    BufferConfig {
        kind: Some(BufferType::Disk),
        max_events: None,
        max_size: Some(ByteSize::mib(64 * 1024)),
        when_full: WhenFull::Block,
    }
}

struct Rig {
    telemetry: Arc<Telemetry>,
    fanout: Fanout,
    buffer: Buffer,
}

fn rig(dir: &Path, name: &str) -> Rig {
    let telemetry = Telemetry::new();
    let component = telemetry.component(&ComponentId::new(name), ComponentKind::Sink, "bench");
    let (tx, rx) = input_channel(&component, 32);
    let fanout = Fanout::new("default", targets(vec![tx]), &component);
    let buffer = Buffer::new(
        rx,
        buffer_config(),
        BufferType::Disk,
        component,
        dir.join("buffers").join(name),
    );
    Rig {
        telemetry,
        fanout,
        buffer,
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn rate(events: usize, took: Duration) -> String {
    format!(
        "{:.0} events/s ({events} in {took:.2?})",
        events as f64 / took.as_secs_f64()
    )
}

async fn phased(dir: &Path, events: usize) {
    let batches = prebuilt(events);
    let events = batches.len() * BATCH;
    let Rig {
        telemetry,
        fanout,
        mut buffer,
    } = rig(dir, "phased");
    let (batches, outcomes): (Vec<_>, Vec<_>) = batches.into_iter().unzip();
    let started = Instant::now();
    let sender = tokio::spawn(async move {
        for batch in batches {
            fanout.send(batch).await;
        }
    });
    for outcome in outcomes {
        assert_eq!(outcome.await, Ok(DeliveryStatus::Committed));
    }
    let appended = started.elapsed();
    sender.await.expect("sender");
    let bytes = dir_bytes(&dir.join("buffers").join("phased"));
    println!(
        "append (group commit, every source delivery committed): {}",
        rate(events, appended)
    );
    println!(
        "bytes on disk per reading: {:.1} ({bytes} bytes of segments for {events} readings)",
        bytes as f64 / events as f64
    );
    let started = Instant::now();
    let mut read = 0;
    while read < events {
        match buffer.next(8192).await {
            Some(chunk) => read += chunk.events.len(),
            None => break,
        }
    }
    let took = started.elapsed();
    // The acknowledgements: the buffer's event gauge reaches zero once every chunk's
    // delivery reported and the position moved past it.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !buffer.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    println!(
        "read + acknowledge: {} (acknowledged {:?} after the last read)",
        rate(read, took),
        started.elapsed() - took
    );
    drop(buffer);
    drop(telemetry);
}

async fn pipelined(dir: &Path, events: usize) {
    let batches = prebuilt(events);
    let events = batches.len() * BATCH;
    let Rig {
        telemetry,
        fanout,
        mut buffer,
    } = rig(dir, "pipelined");
    let (batches, outcomes): (Vec<_>, Vec<_>) = batches.into_iter().unzip();
    let started = Instant::now();
    let sender = tokio::spawn(async move {
        for batch in batches {
            fanout.send(batch).await;
        }
    });
    let acks = tokio::spawn(async move {
        for outcome in outcomes {
            assert_eq!(outcome.await, Ok(DeliveryStatus::Committed));
        }
        Instant::now()
    });
    let mut read = 0;
    while read < events {
        match buffer.next(8192).await {
            Some(chunk) => read += chunk.events.len(),
            None => break,
        }
    }
    while !buffer.is_empty() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let took = started.elapsed();
    let sources_acked = acks.await.expect("acks") - started;
    sender.await.expect("sender");
    println!(
        "pipelined append → read → acknowledge: {} (sources all acknowledged after {sources_acked:.2?})",
        rate(read, took)
    );
    let encoded = telemetry.encode();
    for line in encoded
        .lines()
        .filter(|l| l.starts_with("buffer_") && l.contains("disk"))
    {
        println!("  {line}");
    }
    drop(buffer);
}
