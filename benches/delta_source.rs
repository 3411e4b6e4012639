//! The `delta_lake` source in batch runs: `cargo bench --bench delta_source`.
//!
//! A simulated fleet (10,000 devices, four fields) first writes `READINGS` readings into a
//! local Delta table (`delta_lake` sink, default settings, partitioned by `date`). Then two
//! `weir run --batch` runs read it back:
//!
//! 1. `delta_lake` source → `blackhole`: rows/s (start to exit).
//! 2. `delta_lake` source → `tumbling` 1-minute window per device (avg, max, count) →
//!    `delta_lake` sink (a second table, one commit): rows/s (start to exit).
//!
//! Beside each: weir's CPU seconds per million rows (user + system of the child, from
//! `getrusage(RUSAGE_CHILDREN)`), and its peak RSS.
//!
//! Targets (issue 19): >= 2,000,000 rows/s into the blackhole; >= 700,000 rows/s through
//! the window into a Delta table.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod support;

use support::peak_rss_kib;

const READINGS: u64 = 6_000_000;
const TARGET_BLACKHOLE: f64 = 2_000_000.0;
const TARGET_WINDOW: f64 = 700_000.0;

/// CPU seconds (user + system) of the children waited for so far.
fn children_cpu() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; RUSAGE_CHILDREN is always valid.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_CHILDREN, usage.as_mut_ptr());
        usage.assume_init()
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// Runs `weir run [--batch] pipeline`; returns wall seconds, CPU seconds, peak RSS (KiB).
fn run(pipeline: &Path, batch: bool) -> (f64, f64, u64) {
    let cpu_before = children_cpu();
    let started = Instant::now();
    let mut command = Command::new(env!("CARGO_BIN_EXE_weir"));
    command.arg("run");
    if batch {
        command.arg("--batch");
    }
    let mut weir = command
        .arg(pipeline)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start weir");
    let mut peak_kib = 0;
    let status = loop {
        if let Some(kib) = peak_rss_kib(weir.id()) {
            peak_kib = peak_kib.max(kib);
        }
        if let Some(status) = weir.try_wait().expect("wait for weir") {
            break status;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let elapsed = started.elapsed().as_secs_f64();
    assert!(status.success(), "weir failed: {status}");
    (elapsed, children_cpu() - cpu_before, peak_kib)
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write a pipeline");
    path
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path().display();
    let writer = write(
        dir.path(),
        "write.yaml",
        &format!(
            r#"api: {{ enabled: false }}
data_dir: {d}/state-write
sources:
  fleet:
    type: simulator
    devices: 10000
    realtime: false
    limit: {READINGS}
    batch_size: 1000
    rate: 200
    start_time: "2026-11-25T00:00:00Z"
    fields:
      temperature: {{ base: 70, spread: 5, drift: 0.1, noise: 0.5, decimals: 2 }}
      vibration: {{ base: 3, spread: 0.5, noise: 0.2, decimals: 3 }}
      pressure: {{ base: 101.3, noise: 0.4, decimals: 2 }}
      rpm: {{ base: 3000, spread: 200, noise: 20, decimals: 0 }}
sinks:
  lake: {{ type: delta_lake, inputs: [fleet], uri: {d}/lake, partition_by: [date] }}
"#
        ),
    );
    let (seconds, _, _) = run(&writer, false);
    println!("table of {READINGS} readings written in {seconds:.1} s");

    let blackhole = write(
        dir.path(),
        "blackhole.yaml",
        &format!(
            r#"data_dir: {d}/state-blackhole
sources:
  readings: {{ type: delta_lake, uri: {d}/lake }}
sinks:
  out: {{ type: blackhole, inputs: [readings] }}
"#
        ),
    );
    let windowed = write(
        dir.path(),
        "window.yaml",
        &format!(
            r#"data_dir: {d}/state-window
sources:
  readings: {{ type: delta_lake, uri: {d}/lake, columns: [temperature] }}
aggregators:
  minute:
    type: tumbling
    inputs: [readings]
    size: 1m
    aggregates:
      temperature_avg: avg(temperature)
      temperature_max: max(temperature)
      readings: count()
sinks:
  out: {{ type: delta_lake, inputs: [minute], uri: {d}/minute, partition_by: [date] }}
"#
        ),
    );
    let verdict = |ok: bool| if ok { "PASS" } else { "MISS" };
    for (what, pipeline, target) in [
        (
            "delta_lake source -> blackhole",
            &blackhole,
            TARGET_BLACKHOLE,
        ),
        (
            "delta_lake source -> tumbling 1m -> delta_lake",
            &windowed,
            TARGET_WINDOW,
        ),
    ] {
        let (seconds, cpu, peak_kib) = run(pipeline, true);
        let per_s = READINGS as f64 / seconds;
        println!("{what}, {READINGS} rows, local table");
        println!(
            "  throughput  {per_s:>12.0} rows/s ({seconds:.2} s, start to exit)   target >= {target:.0}: {}",
            verdict(per_s >= target)
        );
        println!(
            "  cpu         {:>12.3} s of weir per million rows ({cpu:.2} s in all, {:.2} cores)",
            cpu / (READINGS as f64 / 1e6),
            cpu / seconds
        );
        println!(
            "  memory      {:>12.1} MiB peak RSS",
            peak_kib as f64 / 1024.0
        );
    }
}
