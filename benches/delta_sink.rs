//! The `delta_lake` sink end to end: `cargo bench --bench delta_sink`.
//!
//! A simulated fleet (10,000 devices, four measured fields, eight hours of event time)
//! emits `READINGS` readings as fast as the pipeline takes them into a `delta_lake` sink
//! with **default settings** on local disk, partitioned by `date`. weir exits once the
//! simulator is done and the sink has committed everything. Reported: readings/s from start
//! to exit, weir's peak RSS, and the files of the table (read back from its Delta log):
//! count and sizes.
//!
//! Target (issue 4): >= 300,000 readings/s, files >= 32 MiB at default settings.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod support;

use support::delta::table_files;
use support::peak_rss_kib;

const READINGS: u64 = 6_000_000;
const TARGET_PER_S: f64 = 300_000.0;
const TARGET_FILE_MIB: f64 = 32.0;

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pipeline = dir.path().join("pipeline.yaml");
    std::fs::write(
        &pipeline,
        format!(
            r#"api: {{ enabled: false }}
data_dir: {data}
sources:
  fleet:
    type: simulator
    devices: 10000
    realtime: false
    limit: {READINGS}
    batch_size: 1000
    # 200 readings per simulated second: the run covers 8 hours of one date, as a plant
    # does between midnights (the first and last file of each date hold what was left).
    rate: 200
    start_time: "2026-11-25T00:00:00Z"
    fields:
      temperature: {{ base: 70, spread: 5, drift: 0.1, noise: 0.5, decimals: 2 }}
      vibration: {{ base: 3, spread: 0.5, noise: 0.2, decimals: 3 }}
      pressure: {{ base: 101.3, noise: 0.4, decimals: 2 }}
      rpm: {{ base: 3000, spread: 200, noise: 20, decimals: 0 }}
sinks:
  lake:
    type: delta_lake
    inputs: [fleet]
    uri: {lake}
    partition_by: [date]
"#,
            data = dir.path().join("state").display(),
            lake = dir.path().join("lake").display(),
        ),
    )
    .expect("write pipeline");

    let started = Instant::now();
    let mut weir = Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("run")
        .arg(&pipeline)
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
        std::thread::sleep(Duration::from_millis(100));
    };
    let elapsed = started.elapsed().as_secs_f64();
    assert!(status.success(), "weir failed: {status}");

    let files = table_files(&dir.path().join("lake")).expect("read the table back");
    let rows: u64 = files.iter().map(|f| f.rows).sum();
    assert_eq!(rows, READINGS, "every reading is a row");
    let per_s = rows as f64 / elapsed;
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    let smallest = files.iter().map(|f| f.bytes).min().unwrap_or(0);
    let largest = files.iter().map(|f| f.bytes).max().unwrap_or(0);
    let total: u64 = files.iter().map(|f| f.bytes).sum();
    // A partition's last file of a run is whatever was left; judge the full ones.
    let full: Vec<_> = files.iter().filter(|f| f.rows >= 1_000_000).collect();
    let smallest_full = full.iter().map(|f| f.bytes).min().unwrap_or(0);
    let verdict = |ok: bool| if ok { "PASS" } else { "MISS" };
    println!("delta_lake sink, default settings, {READINGS} readings, local disk");
    println!(
        "  throughput  {per_s:>12.0} readings/s ({elapsed:.1} s, start to exit)   target >= {TARGET_PER_S:.0}: {}",
        verdict(per_s >= TARGET_PER_S)
    );
    println!(
        "  files       {:>12} in the log, {:.1} MiB in all; smallest {:.1} MiB, largest {:.1} MiB",
        files.len(),
        mib(total),
        mib(smallest),
        mib(largest)
    );
    println!(
        "  full files  {:>12} (>= 1M rows), smallest {:.1} MiB   target >= {TARGET_FILE_MIB:.0} MiB: {}",
        full.len(),
        mib(smallest_full),
        verdict(!full.is_empty() && mib(smallest_full) >= TARGET_FILE_MIB)
    );
    println!(
        "  memory      {:>12.1} MiB peak RSS of weir (VmHWM)",
        peak_kib as f64 / 1024.0
    );
}
