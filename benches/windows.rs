//! Window engine throughput and state size: `cargo bench --bench windows`.
//!
//! A `tumbling 10s` window over 1,000,000 distinct devices, driven on one core (one
//! engine, as one shard runs): first with `avg, max, count` (the state-size target), then
//! with `percentile` added. Live heap bytes are measured with a counting allocator, so
//! "bytes per open window" is what the process really holds, not an estimate.
//!
//! Targets (issue 5): >= 1,000,000 events/s through the aggregator on one core; <= 300
//! bytes per open window without percentile. `WEIR_BENCH_DEVICES` overrides the fleet.

use std::alloc::{GlobalAlloc, Layout};

use mimalloc::MiMalloc;
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use indexmap::IndexMap;
use serde_json::Value;
use weir::aggregators::aggregate::Aggregate;
use weir::aggregators::engine::WindowEngine;
use weir::aggregators::fixed::{Assigner, FixedWindows};
use weir::aggregators::window::{Emit, LatePolicy, WindowCommon, WindowSpec};
use weir::config;
use weir::event::{Event, EventMeta, Fields};

/// Counts live heap bytes, allocating with mimalloc as the `weir` binary does.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the underlying allocator.
        unsafe { MiMalloc.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the underlying allocator.
        unsafe { MiMalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: forwarded unchanged to the underlying allocator.
        unsafe { MiMalloc.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const T0: i64 = 1_800_000_000_000;

fn engine(aggregates: &[(&str, &str)]) -> FixedWindows {
    let aggregates: IndexMap<String, Aggregate> = aggregates
        .iter()
        .map(|(name, text)| {
            (
                (*name).to_owned(),
                Aggregate::parse(text).expect("aggregate"),
            )
        })
        .collect();
    let common = WindowCommon {
        group_by: vec!["device_id".into()],
        event_time: None,
        allowed_lateness: config::Duration::from_secs(0),
        late_events: LatePolicy::Drop,
        max_future: config::Duration::from_secs(3600),
        idle_timeout: None,
        aggregates,
        emit: Emit::OnClose,
        max_open_windows: usize::MAX,
        shards: Some(1),
        ack: weir::aggregators::window::WindowAck::OnReceive,
        checkpoint_interval: config::Duration::from_secs(5),
    };
    let spec = WindowSpec::new("bench".into(), &common, Duration::from_secs(10));
    FixedWindows::new(
        spec,
        Assigner::Tumbling {
            size: 10_000,
            offset: 0,
        },
    )
}

struct Outcome {
    fold_rate: f64,
    close_rate: f64,
    bytes_per_window: f64,
    open: usize,
}

fn run(devices: usize, rounds: usize, aggregates: &[(&str, &str)]) -> Outcome {
    let meta = Arc::new(EventMeta::received_by("bench".into()));
    // Each event gets its own device id, as from a source: a group keeps the first one.
    let make = |device: usize, t: i64, x: f64| {
        let mut fields = Fields::new();
        fields.insert("temperature".into(), Value::from(x));
        let id: Arc<str> = Arc::from(format!("dev-{device:07}"));
        let mut event = Event::new(Some(id), fields, meta.clone());
        event.time = jiff::Timestamp::from_millisecond(t).expect("time");
        event
    };

    let mut engine = engine(aggregates);
    let now = Instant::now();
    let mut emitted = Vec::new();
    let before = LIVE.load(Ordering::Relaxed);
    let mut folding = Duration::ZERO;
    const CHUNK: usize = 100_000;
    let mut folded = 0usize;
    for round in 0..rounds {
        for start in (0..devices).step_by(CHUNK) {
            let events: Vec<Event> = (start..(start + CHUNK).min(devices))
                .map(|d| {
                    make(
                        d,
                        T0 + (round as i64) * 1000 + (d as i64 % 997),
                        20.0 + (d % 50) as f64 + round as f64,
                    )
                })
                .collect();
            let clock = Instant::now();
            for event in &events {
                engine.add(event, T0, now, &mut emitted);
            }
            folding += clock.elapsed();
            folded += events.len();
        }
    }
    let open = engine.open_windows();
    let bytes = LIVE.load(Ordering::Relaxed) - before;

    // One event per device in the next window closes every open window.
    let mut closing = Duration::ZERO;
    for start in (0..devices).step_by(CHUNK) {
        let events: Vec<Event> = (start..(start + CHUNK).min(devices))
            .map(|d| make(d, T0 + 10_000, 1.0))
            .collect();
        let clock = Instant::now();
        for event in &events {
            engine.add(event, T0, now, &mut emitted);
        }
        closing += clock.elapsed();
        emitted.clear();
    }
    Outcome {
        fold_rate: folded as f64 / folding.as_secs_f64(),
        close_rate: devices as f64 / closing.as_secs_f64(),
        bytes_per_window: bytes as f64 / open as f64,
        open,
    }
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is accepted and ignored.
    let devices: usize = std::env::var("WEIR_BENCH_DEVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let rounds = 3;
    println!(
        "tumbling 10s, {devices} devices, {rounds} readings each per window, one engine (one core)"
    );
    for (label, aggregates, state_target) in [
        (
            "avg, max, count",
            &[
                ("avg", "avg(temperature)"),
                ("max", "max(temperature)"),
                ("n", "count()"),
            ][..],
            Some(300.0),
        ),
        (
            "avg, max, count, percentile",
            &[
                ("avg", "avg(temperature)"),
                ("max", "max(temperature)"),
                ("n", "count()"),
                ("p95", "percentile(temperature, 0.95)"),
            ][..],
            None,
        ),
    ] {
        let outcome = run(devices, rounds, aggregates);
        let verdict = |ok: bool| if ok { "PASS" } else { "MISS" };
        println!("  {label}:");
        println!(
            "    fold     {:>12.0} events/s   (target >= 1,000,000: {})",
            outcome.fold_rate,
            verdict(outcome.fold_rate >= 1_000_000.0)
        );
        println!(
            "    close    {:>12.0} windows/s (emitting one output event each)",
            outcome.close_rate
        );
        match state_target {
            Some(target) => println!(
                "    state    {:>12.1} bytes per open window over {} windows (target <= {target}: {})",
                outcome.bytes_per_window,
                outcome.open,
                verdict(outcome.bytes_per_window <= target)
            ),
            None => println!(
                "    state    {:>12.1} bytes per open window over {} windows",
                outcome.bytes_per_window, outcome.open
            ),
        }
    }
}
