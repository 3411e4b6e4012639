//! Durable delivery end to end: `weir-load` → weir's `http` source (`ack: on_commit`) →
//! `delta_lake` with `buffer: { type: disk }`, the real binaries:
//! `cargo bench --bench http_delta`.
//!
//! First the disk the bench runs on (fsync latency, synced throughput: a durable
//! acknowledgement cannot be faster than one fsync). Then two rounds, each with a fresh weir
//! in a temp dir:
//!
//! 1. **max**: `weir-load` as fast as weir answers. A reading counts only if its request got
//!    a 2xx, which with a disk buffer means "durable in the buffer". After the load weir
//!    is stopped with SIGTERM (the sink commits what its buffer holds), and the table is read
//!    back with the `deltalake` crate: its rows must equal the acknowledged readings, and
//!    their `seq` values must all differ (exactly once).
//! 2. **fixed**: a fixed offered load (`weir-load --rate`), for the p99 request latency.
//!
//! Each round reports throughput, the generator's p50/p99, the CPU time per reading of
//! weir and of `weir-load` (from `/proc/<pid>/stat`) and of everything else on the machine,
//! and the bytes on disk per reading in the buffer (segment bytes over the records they
//! hold, at the end of the load) and in the table (data files, and with the log).
//!
//! Targets (issue 14): ≥ 400,000 acknowledged readings/s; p99 ≤ 20 ms at 100,000
//! readings/s. A MISS does not fail the bench; a broken harness (weir not starting, no
//! request accepted, the table unreadable) does, and prints weir's log.
//!
//! | variable | default | meaning |
//! | --- | --- | --- |
//! | `WEIR_HTTP_DELTA_DURATION` | `15s` | how long `weir-load` sends, each round |
//! | `WEIR_HTTP_DELTA_CONCURRENCY` | `64` | requests in flight |
//! | `WEIR_HTTP_DELTA_BATCH` | `100` | readings per request |
//! | `WEIR_HTTP_DELTA_RATE` | `100000` | readings/s offered in the fixed round |
//! | `WEIR_HTTP_DELTA_LOAD_THREADS` | `1` | `weir-load --threads` |
//! | `WEIR_BENCH_DIR` | `target/tmp` | where the temp dirs (buffer, table) go: the disk measured |

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Duration;

mod support;

use support::delta::{distinct_values, table_files};
use support::disk::DiskProbe;
use support::load::{self, LoadRun};
use support::{
    cpu_seconds, dir_bytes, env_var, free_port, machine_busy_seconds, metric, stop, wait_ready,
};

const WEIR: &str = env!("CARGO_BIN_EXE_weir");
const WEIR_LOAD: &str = env!("CARGO_BIN_EXE_weir-load");

const TARGET_ACKED_PER_S: f64 = 400_000.0;
const TARGET_P99_MS: f64 = 20.0;
/// A stop commits what the buffer holds; it gets this long before the bench kills it.
const STOP_PATIENCE: Duration = Duration::from_secs(120);

struct Settings {
    duration: String,
    concurrency: usize,
    batch: u32,
    rate: f64,
    load_threads: usize,
    base: PathBuf,
}

impl Settings {
    fn from_env() -> Result<Self, String> {
        Ok(Self {
            duration: env_var("WEIR_HTTP_DELTA_DURATION", "15s".to_owned())?,
            concurrency: env_var("WEIR_HTTP_DELTA_CONCURRENCY", 64)?,
            batch: env_var("WEIR_HTTP_DELTA_BATCH", 100)?,
            rate: env_var("WEIR_HTTP_DELTA_RATE", 100_000.0)?,
            load_threads: env_var("WEIR_HTTP_DELTA_LOAD_THREADS", 1)?,
            base: env_var("WEIR_BENCH_DIR", PathBuf::from(env!("CARGO_TARGET_TMPDIR")))?,
        })
    }
}

/// How much load a round offers.
#[derive(Clone, Copy)]
enum Offered {
    /// As fast as weir answers.
    Max,
    /// This many readings per second.
    Fixed(f64),
}

/// What one round measured.
struct Round {
    offered: Offered,
    load: LoadRun,
    weir_cpu_s: f64,
    /// Busy CPU time of the whole machine during the load (all processes, all cores).
    machine_busy_s: f64,
    buffer: Option<BufferBytes>,
    table: Table,
    /// weir exited by itself, successfully, after SIGTERM.
    stopped_cleanly: bool,
}

/// The buffer's segments at the end of the load.
struct BufferBytes {
    bytes: u64,
    records: u64,
}

/// The table after weir stopped.
struct Table {
    rows: u64,
    distinct_seqs: usize,
    rows_without_seq: u64,
    data_bytes: u64,
    all_bytes: u64,
}

impl Table {
    fn exactly_once(&self, accepted: u64) -> bool {
        self.rows == accepted && self.distinct_seqs as u64 == self.rows
    }
}

fn main() -> ExitCode {
    // `cargo bench` passes `--bench` (and any filter); this harness takes no arguments.
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("http_delta: {err}");
            return ExitCode::FAILURE;
        }
    };
    let scratch = match std::fs::create_dir_all(&settings.base)
        .and_then(|()| tempfile::tempdir_in(&settings.base))
    {
        Ok(dir) => dir,
        Err(err) => {
            eprintln!(
                "http_delta: cannot make a temp dir in {}: {err}",
                settings.base.display()
            );
            return ExitCode::FAILURE;
        }
    };
    println!("http_delta in {}", scratch.path().display());
    match DiskProbe::measure(scratch.path()) {
        Ok(probe) => probe.print(),
        Err(err) => {
            eprintln!("http_delta: cannot measure the disk: {err}");
            return ExitCode::FAILURE;
        }
    }
    for offered in [Offered::Max, Offered::Fixed(settings.rate)] {
        match round(&settings, scratch.path(), offered) {
            Ok(round) => report(&settings, &round),
            Err(err) => {
                eprintln!("http_delta: {err}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}

fn report(settings: &Settings, r: &Round) {
    let verdict = |ok: bool| if ok { "PASS" } else { "MISS" };
    let accepted = r.load.readings_accepted;
    let per_reading_us = |cpu_s: f64| cpu_s * 1e6 / accepted.max(1) as f64;
    let cores = |cpu_s: f64| cpu_s / r.load.elapsed_s.max(f64::EPSILON);
    match r.offered {
        Offered::Max => println!(
            "http_delta: http (ack: on_commit) → delta_lake (buffer: disk), as fast as weir answers, concurrency {}",
            settings.concurrency
        ),
        Offered::Fixed(rate) => println!(
            "http_delta: http (ack: on_commit) → delta_lake (buffer: disk), {rate:.0} readings/s offered"
        ),
    }
    println!("  {}", r.load.human);
    match r.offered {
        Offered::Max => println!(
            "  throughput  {:>12.0} readings/s acknowledged ({accepted} readings, {} failed requests of {})   target ≥ {TARGET_ACKED_PER_S:.0}: {}",
            r.load.readings_per_s,
            r.load.errors,
            r.load.requests,
            verdict(r.load.readings_per_s >= TARGET_ACKED_PER_S && r.load.errors == 0),
        ),
        Offered::Fixed(rate) => println!(
            "  latency     p50 {:.2} ms, p99 {:.2} ms at {:.0} readings/s acknowledged ({} failed requests)   target p99 ≤ {TARGET_P99_MS:.0} ms at {rate:.0}/s: {}",
            r.load.p50_ms,
            r.load.p99_ms,
            r.load.readings_per_s,
            r.load.errors,
            verdict(
                r.load.p99_ms <= TARGET_P99_MS
                    && r.load.errors == 0
                    && r.load.readings_per_s >= rate * 0.95
            ),
        ),
    }
    let others_s = (r.machine_busy_s - r.weir_cpu_s - r.load.cpu_s).max(0.0);
    println!(
        "  cpu         weir {:.2} cores ({:.2} µs per reading), weir-load {:.2} cores ({:.2} µs per reading), everything else {:.2} cores (of {})",
        cores(r.weir_cpu_s),
        per_reading_us(r.weir_cpu_s),
        cores(r.load.cpu_s),
        per_reading_us(r.load.cpu_s),
        cores(others_s),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    if cores(others_s) > 0.2 {
        println!(
            "  warning     other processes used {:.2} cores during the load: the numbers above are low",
            cores(others_s)
        );
    }
    let t = &r.table;
    println!(
        "  table       {} rows, {} distinct seq ({} without), {accepted} readings acknowledged   exactly once: {}",
        t.rows,
        t.distinct_seqs,
        t.rows_without_seq,
        verdict(t.exactly_once(accepted)),
    );
    if !r.stopped_cleanly {
        println!("  warning     weir did not stop cleanly after SIGTERM (see its log)");
    }
    let rows = t.rows.max(1) as f64;
    match &r.buffer {
        Some(b) => println!(
            "  disk        buffer {:.1} B/reading ({} B of segments holding {} records at the end of the load); table {:.1} B/reading in data files, {:.1} with its log",
            b.bytes as f64 / b.records.max(1) as f64,
            b.bytes,
            b.records,
            t.data_bytes as f64 / rows,
            t.all_bytes as f64 / rows,
        ),
        None => println!(
            "  disk        buffer: no segments at the end of the load; table {:.1} B/reading in data files, {:.1} with its log",
            t.data_bytes as f64 / rows,
            t.all_bytes as f64 / rows,
        ),
    }
}

/// Runs weir and one load; weir is stopped whatever happens.
fn round(settings: &Settings, base: &Path, offered: Offered) -> Result<Round, String> {
    let dir = tempfile::tempdir_in(base).map_err(|e| format!("cannot create a temp dir: {e}"))?;
    let source = free_port()?;
    let api = free_port()?;
    let data = dir.path().join("data");
    let lake = dir.path().join("lake");
    let pipeline = dir.path().join("pipeline.yaml");
    std::fs::write(&pipeline, pipeline_yaml(&data, &lake, source, api))
        .map_err(|e| format!("cannot write {}: {e}", pipeline.display()))?;
    let log_path = dir.path().join("weir.log");
    let log = std::fs::File::create(&log_path).map_err(|e| format!("cannot create log: {e}"))?;
    let mut weir = Command::new(WEIR)
        .arg("run")
        .arg(&pipeline)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start {WEIR}: {e}"))?;
    let measured = measure(settings, offered, &mut weir, &data, source, api);
    let stopped_cleanly = stop(&mut weir, STOP_PATIENCE);
    let result = measured.and_then(|(load, weir_cpu_s, machine_busy_s, buffer)| {
        let files = table_files(&lake)?;
        let (distinct_seqs, rows_without_seq) = distinct_values(&files, "seq")?;
        let table = Table {
            rows: files.iter().map(|f| f.rows).sum(),
            distinct_seqs,
            rows_without_seq,
            data_bytes: files.iter().map(|f| f.bytes).sum(),
            all_bytes: dir_bytes(&lake),
        };
        Ok(Round {
            offered,
            load,
            weir_cpu_s,
            machine_busy_s,
            buffer,
            table,
            stopped_cleanly,
        })
    });
    let failed = result.is_err()
        || result
            .as_ref()
            .is_ok_and(|r| !r.stopped_cleanly || !r.table.exactly_once(r.load.readings_accepted));
    if failed && let Ok(log) = std::fs::read_to_string(&log_path) {
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        eprintln!(
            "--- weir log (last 40 lines) ---\n{}\n--- end of weir log ---",
            tail.join("\n")
        );
    }
    result
}

type Measured = (LoadRun, f64, f64, Option<BufferBytes>);

fn measure(
    settings: &Settings,
    offered: Offered,
    weir: &mut Child,
    data: &Path,
    source: SocketAddr,
    api: SocketAddr,
) -> Result<Measured, String> {
    wait_ready(weir, api)?;
    let weir_cpu_before = cpu_seconds(weir.id()).unwrap_or(0.0);
    let machine_before = machine_busy_seconds().unwrap_or(0.0);
    let mut args: Vec<String> = vec![
        "--url".into(),
        format!("http://{source}"),
        "--batch".into(),
        settings.batch.to_string(),
        "--concurrency".into(),
        settings.concurrency.to_string(),
        "--duration".into(),
        settings.duration.clone(),
        "--threads".into(),
        settings.load_threads.to_string(),
    ];
    if let Offered::Fixed(readings_per_s) = offered {
        args.push("--rate".into());
        args.push((readings_per_s / f64::from(settings.batch)).to_string());
    }
    let load = load::run(WEIR_LOAD, &args)?;
    let machine_busy_s = machine_busy_seconds().unwrap_or(0.0) - machine_before;
    let weir_cpu_s = cpu_seconds(weir.id()).unwrap_or(0.0) - weir_cpu_before;
    if load.readings_accepted == 0 {
        return Err(format!("no reading was accepted: {}", load.human));
    }
    let buffer = buffer_bytes(&data.join("buffers").join("lake"), api)?;
    Ok((load, weir_cpu_s, machine_busy_s, buffer))
}

/// The segments in `dir` and the records they hold: every record appended
/// (`buffer_received_events_total`) from the oldest segment's first sequence number on.
fn buffer_bytes(dir: &Path, api: SocketAddr) -> Result<Option<BufferBytes>, String> {
    let appended = metric(
        api,
        "buffer_received_events_total",
        &["component_id=\"lake\""],
    )? as u64;
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut bytes = 0;
    let mut oldest: Option<u64> = None;
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(first_seq) = name.strip_suffix(".seg").and_then(|n| n.parse().ok()) else {
            continue;
        };
        bytes += entry.metadata().map_or(0, |m| m.len());
        oldest = Some(oldest.map_or(first_seq, |o: u64| o.min(first_seq)));
    }
    Ok(oldest.map(|first_seq| BufferBytes {
        bytes,
        records: appended.saturating_sub(first_seq),
    }))
}

fn pipeline_yaml(data_dir: &Path, lake: &Path, source: SocketAddr, api: SocketAddr) -> String {
    format!(
        r#"data_dir: {data_dir}
api:
  listen: {api}
  auth: {{ public_metrics: true }}
log:
  level: warn
sources:
  devices:
    type: http
    listen: {source}
    ack: on_commit
sinks:
  lake:
    type: delta_lake
    inputs: [devices]
    uri: {lake}
    buffer: {{ type: disk }}
"#,
        data_dir = data_dir.display(),
        lake = lake.display(),
    )
}
