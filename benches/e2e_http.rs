//! End-to-end HTTP throughput: `weir-load` → weir's `http` source → `remap` → `filter` →
//! `blackhole`, with the real binaries.
//!
//! `cargo bench --bench e2e_http` builds both binaries in release mode, then for each
//! concurrency it:
//!
//! 1. writes a pipeline into a temp dir (http source and API on free local ports,
//!    `data_dir` in the temp dir) and starts `weir run <file>`;
//! 2. waits for `/ready`, then runs `weir-load` for the load duration with batches of 100;
//! 3. waits until the blackhole has counted every accepted reading (or stops moving), reads
//!    `component_sent_events_total` of the blackhole from `/metrics` and weir's peak RSS
//!    (`VmHWM` in `/proc/<pid>/status`), and stops weir with SIGTERM;
//! 4. prints events/s (blackhole count / load duration), the generator's accepted
//!    readings/s and p99 latency, peak RSS, the CPU time each process used, and the targets.
//!
//! Environment overrides:
//!
//! | variable | default | meaning |
//! | --- | --- | --- |
//! | `WEIR_E2E_DURATION` | `15s` | how long `weir-load` sends |
//! | `WEIR_E2E_CONCURRENCY` | `32` | requests in flight; a list (`8,32,64`) runs one round each |
//! | `WEIR_E2E_BATCH` | `100` | readings per request |
//! | `WEIR_E2E_DEVICES` | `1000` | simulated devices |
//! | `WEIR_E2E_LOAD_THREADS` | `1` | `weir-load --threads` |
//! | `WEIR_E2E_TAP` | `0` | `1`: a tap (`GET /v1/tap?outputs_of=*`, as `weir tap` attaches with its defaults) reads every output for the whole load |
//!
//! The targets (≥ 500,000 events/s, ≤ 100 MiB peak RSS) are reported as PASS/MISS; a miss
//! does not fail the bench, a broken harness (weir not starting, no request accepted) does.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

mod support;
#[path = "support/tap.rs"]
mod tap;

use support::load;
use support::{
    cpu_seconds, env_var, free_port, machine_busy_seconds, metric, peak_rss_kib, stop, wait_ready,
};

const WEIR: &str = env!("CARGO_BIN_EXE_weir");
const WEIR_LOAD: &str = env!("CARGO_BIN_EXE_weir-load");

const TARGET_EVENTS_PER_S: f64 = 500_000.0;
const TARGET_RSS_MIB: f64 = 100.0;

struct Settings {
    duration: String,
    concurrencies: Vec<usize>,
    batch: u32,
    devices: u32,
    load_threads: usize,
    /// Attach a tap to every output during the load.
    tap: bool,
}

impl Settings {
    fn from_env() -> Result<Self, String> {
        let concurrencies = env_var("WEIR_E2E_CONCURRENCY", "32".to_owned())?
            .split(',')
            .map(|c| {
                c.trim()
                    .parse()
                    .map_err(|_| format!("WEIR_E2E_CONCURRENCY: `{c}` is not a number"))
            })
            .collect::<Result<Vec<usize>, _>>()?;
        Ok(Self {
            duration: env_var("WEIR_E2E_DURATION", "15s".to_owned())?,
            concurrencies,
            batch: env_var("WEIR_E2E_BATCH", 100)?,
            devices: env_var("WEIR_E2E_DEVICES", 1000)?,
            load_threads: env_var("WEIR_E2E_LOAD_THREADS", 1)?,
            tap: env_var("WEIR_E2E_TAP", 0u8)? == 1,
        })
    }
}

/// What one round measured.
struct Round {
    concurrency: usize,
    events: u64,
    load_elapsed_s: f64,
    accepted: u64,
    accepted_per_s: f64,
    errors: u64,
    p50_ms: f64,
    p99_ms: f64,
    peak_rss_mib: f64,
    weir_cpu_s: f64,
    load_cpu_s: f64,
    /// Busy CPU time of the whole machine during the load (all processes, all cores).
    machine_busy_s: f64,
    /// With `WEIR_E2E_TAP=1`: the events the attached tap was shown.
    tap_lines: Option<u64>,
}

impl Round {
    fn events_per_s(&self) -> f64 {
        self.events as f64 / self.load_elapsed_s
    }
}

fn main() -> ExitCode {
    // `cargo bench` passes `--bench` (and any filter); this harness takes no arguments.
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("e2e_http: {err}");
            return ExitCode::FAILURE;
        }
    };
    let mut rounds = Vec::new();
    for &concurrency in &settings.concurrencies {
        match round(&settings, concurrency) {
            Ok(round) => {
                report(&round);
                rounds.push(round);
            }
            Err(err) => {
                eprintln!("e2e_http: concurrency {concurrency}: {err}");
                return ExitCode::FAILURE;
            }
        }
    }
    if rounds.len() > 1 {
        let best = rounds
            .iter()
            .max_by(|a, b| a.events_per_s().total_cmp(&b.events_per_s()))
            .expect("at least two rounds");
        println!(
            "best: concurrency {} with {:.0} events/s",
            best.concurrency,
            best.events_per_s()
        );
    }
    ExitCode::SUCCESS
}

fn report(r: &Round) {
    let verdict = |ok: bool| if ok { "PASS" } else { "MISS" };
    let events_per_s = r.events_per_s();
    let cores = |cpu_s: f64| cpu_s / r.load_elapsed_s;
    println!(
        "e2e_http: http → remap → filter → blackhole, concurrency {}, {}",
        r.concurrency,
        match r.tap_lines {
            Some(events) => format!("a tap attached to every output ({events} events shown)"),
            None => "no tap attached".to_owned(),
        }
    );
    println!(
        "  throughput  {events_per_s:>12.0} events/s at the blackhole ({} events in {:.2} s)   target ≥ {TARGET_EVENTS_PER_S:.0}: {}",
        r.events,
        r.load_elapsed_s,
        verdict(events_per_s >= TARGET_EVENTS_PER_S),
    );
    println!(
        "  load        {:>12.0} readings/s accepted ({} readings, {} failed requests), p50 {:.2} ms, p99 {:.2} ms",
        r.accepted_per_s, r.accepted, r.errors, r.p50_ms, r.p99_ms
    );
    println!(
        "  memory      {:>12.1} MiB peak RSS of weir (VmHWM)   target ≤ {TARGET_RSS_MIB:.0} MiB: {}",
        r.peak_rss_mib,
        verdict(r.peak_rss_mib <= TARGET_RSS_MIB),
    );
    let others_s = (r.machine_busy_s - r.weir_cpu_s - r.load_cpu_s).max(0.0);
    println!(
        "  cpu         weir {:.2} cores ({:.2} µs of CPU per event), weir-load {:.2} cores, everything else {:.2} cores (of {})",
        cores(r.weir_cpu_s),
        r.weir_cpu_s * 1e6 / r.events.max(1) as f64,
        cores(r.load_cpu_s),
        cores(others_s),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    if cores(others_s) > 0.2 {
        println!(
            "  warning     other processes used {:.2} cores during the load: the numbers above are low",
            cores(others_s)
        );
    }
    if r.accepted > 0 && r.events != r.accepted {
        println!(
            "  note        the blackhole counted {} events but {} readings were accepted",
            r.events, r.accepted
        );
    }
}

/// Runs weir and one load; weir is stopped whatever happens.
fn round(settings: &Settings, concurrency: usize) -> Result<Round, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("cannot create a temp dir: {e}"))?;
    let source = free_port()?;
    let api = free_port()?;
    let pipeline = dir.path().join("pipeline.yaml");
    std::fs::write(
        &pipeline,
        pipeline_yaml(&dir.path().join("data"), source, api),
    )
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
    let result = measure(
        settings,
        concurrency,
        &mut weir,
        (source, api),
        &dir.path().join("data"),
    );
    stop(&mut weir, Duration::from_secs(30));
    if result.is_err()
        && let Ok(log) = std::fs::read_to_string(&log_path)
    {
        eprintln!("--- weir log ---\n{log}--- end of weir log ---");
    }
    result
}

fn measure(
    settings: &Settings,
    concurrency: usize,
    weir: &mut Child,
    (source, api): (SocketAddr, SocketAddr),
    data_dir: &Path,
) -> Result<Round, String> {
    wait_ready(weir, api)?;
    let tap = match settings.tap {
        true => Some(tap::attach(api, data_dir)?),
        false => None,
    };
    let weir_cpu_before = cpu_seconds(weir.id()).unwrap_or(0.0);
    let machine_before = machine_busy_seconds().unwrap_or(0.0);

    let load = load::run(
        WEIR_LOAD,
        &[
            "--url".into(),
            format!("http://{source}"),
            "--devices".into(),
            settings.devices.to_string(),
            "--batch".into(),
            settings.batch.to_string(),
            "--concurrency".into(),
            concurrency.to_string(),
            "--duration".into(),
            settings.duration.clone(),
            "--threads".into(),
            settings.load_threads.to_string(),
        ],
    )?;
    let machine_busy_s = machine_busy_seconds().unwrap_or(0.0) - machine_before;
    let tap_lines = tap.map(tap::Reader::detach);
    println!("  {}", load.human);
    let accepted = load.readings_accepted;

    let events = wait_drained(api, accepted)?;
    let weir_cpu_s = cpu_seconds(weir.id()).unwrap_or(0.0) - weir_cpu_before;
    let peak_rss_mib = peak_rss_kib(weir.id())
        .map(|kib| kib as f64 / 1024.0)
        .ok_or("cannot read VmHWM of weir")?;
    Ok(Round {
        concurrency,
        events,
        load_elapsed_s: load.elapsed_s,
        accepted,
        accepted_per_s: load.readings_per_s,
        errors: load.errors,
        p50_ms: load.p50_ms,
        p99_ms: load.p99_ms,
        peak_rss_mib,
        weir_cpu_s,
        load_cpu_s: load.cpu_s,
        machine_busy_s,
        tap_lines,
    })
}

fn pipeline_yaml(data_dir: &Path, source: SocketAddr, api: SocketAddr) -> String {
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
transforms:
  shaped:
    type: remap
    inputs: [devices]
    set:
      temperature_f: "temperature * 9 / 5 + 32"
    rename:
      vibration: vibration_g
    drop: [ts]
  valid:
    type: filter
    inputs: [shaped]
    condition: "temperature is number and temperature < 200"
sinks:
  sink:
    type: blackhole
    inputs: [valid]
"#,
        data_dir = data_dir.display()
    )
}

/// Waits until the blackhole has counted `accepted` events, or its count stops moving.
fn wait_drained(api: SocketAddr, accepted: u64) -> Result<u64, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = None;
    loop {
        let count = sink_events(api)?;
        if count >= accepted || last == Some(count) || Instant::now() >= deadline {
            return Ok(count);
        }
        last = Some(count);
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `component_sent_events_total` of the blackhole `sink`.
fn sink_events(api: SocketAddr) -> Result<u64, String> {
    metric(
        api,
        "component_sent_events_total",
        &["component_id=\"sink\"", "output=\"default\""],
    )
    .map(|value| value as u64)
}
