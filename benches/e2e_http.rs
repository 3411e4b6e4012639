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
//! | `WEIR_E2E_TAP` | `0` | `1`: a tap (`GET /v1/tap?outputs_of=*`, as `weir tap` attaches with its defaults) reads every output for the whole load; `ab`: a round without and one with |
//! | `WEIR_E2E_BASELINE` | `1` | `0`: no bare-parse baseline round ([`bare`]) |
//! | `WEIR_E2E_REPEAT` | `1` | rounds of each kind per concurrency, interleaved (baseline, weir, weir with a tap, baseline, …) |
//!
//! Each concurrency also runs the **bare-parse baseline** (`support/bare.rs`: weir's HTTP
//! stack and `json` decoder, readings built and dropped) under the same load, and the
//! summary gives weir's CPU time per reading beside the baseline's and their ratio, from
//! each process's own CPU time (wall-clock throughput is limited by the load generator on
//! the same cores). With repeats, the medians.
//!
//! The targets (≥ 500,000 events/s, ≤ 100 MiB peak RSS; CPU per reading ≤ 3× the baseline
//! and ≤ 650 ns) are reported as PASS/MISS; a miss does not fail the bench, a broken
//! harness (weir not starting, no request accepted) does.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

#[path = "support/bare.rs"]
mod bare;
mod support;
#[path = "support/tap.rs"]
mod tap;

/// The daemon's allocator, so the baseline (this binary, re-run) allocates as weir does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use support::load;
use support::{
    cpu_seconds, env_var, free_port, machine_busy_seconds, metric, peak_rss_kib, stop, wait_ready,
};

const WEIR: &str = env!("CARGO_BIN_EXE_weir");
const WEIR_LOAD: &str = env!("CARGO_BIN_EXE_weir-load");

const TARGET_EVENTS_PER_S: f64 = 500_000.0;
const TARGET_RSS_MIB: f64 = 100.0;
/// weir's CPU per reading at most this many times the bare-parse baseline's (issue 22).
const TARGET_RATIO: f64 = 3.0;
const TARGET_CPU_NS: f64 = 650.0;

/// What serves the load in a round.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Server {
    /// The bare-parse baseline ([`bare`]).
    Bare,
    /// weir, with or without a tap attached to every output.
    Weir { tap: bool },
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::Bare => "bare-parse baseline",
            Server::Weir { tap: false } => "weir",
            Server::Weir { tap: true } => "weir + tap",
        }
    }
}

struct Settings {
    duration: String,
    concurrencies: Vec<usize>,
    batch: u32,
    devices: u32,
    load_threads: usize,
    /// What serves each round of a concurrency, in order; repeated `repeat` times.
    servers: Vec<Server>,
    repeat: usize,
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
            servers: servers(
                env_var("WEIR_E2E_BASELINE", 1u8)? == 1,
                &env_var("WEIR_E2E_TAP", "0".to_owned())?,
            )?,
            repeat: env_var("WEIR_E2E_REPEAT", 1usize)?.max(1),
        })
    }
}

fn servers(baseline: bool, tap: &str) -> Result<Vec<Server>, String> {
    let mut servers = Vec::new();
    if baseline {
        servers.push(Server::Bare);
    }
    match tap {
        "0" => servers.push(Server::Weir { tap: false }),
        "1" => servers.push(Server::Weir { tap: true }),
        "ab" => servers.extend([Server::Weir { tap: false }, Server::Weir { tap: true }]),
        other => return Err(format!("WEIR_E2E_TAP={other}: expected 0, 1 or ab")),
    }
    Ok(servers)
}

/// What one round measured.
struct Round {
    server: Server,
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

    /// CPU time of the server per reading it took, in nanoseconds.
    fn cpu_ns_per_event(&self) -> f64 {
        self.weir_cpu_s * 1e9 / self.events.max(1) as f64
    }
}

fn main() -> ExitCode {
    if let Ok(listen) = std::env::var(bare::SERVE_ENV) {
        let served = listen
            .parse()
            .map_err(|e| format!("{}={listen}: {e}", bare::SERVE_ENV))
            .and_then(bare::serve);
        if let Err(err) = served {
            eprintln!("e2e_http baseline: {err}");
            return ExitCode::FAILURE;
        }
        return ExitCode::SUCCESS;
    }
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
        for _ in 0..settings.repeat {
            for &server in &settings.servers {
                match round(&settings, server, concurrency) {
                    Ok(round) => {
                        report(&round);
                        rounds.push(round);
                    }
                    Err(err) => {
                        eprintln!(
                            "e2e_http: {}, concurrency {concurrency}: {err}",
                            server.name()
                        );
                        return ExitCode::FAILURE;
                    }
                }
            }
        }
        summarise(&settings, concurrency, &rounds);
    }
    ExitCode::SUCCESS
}

/// The medians of a concurrency's rounds of each server, and weir's against the baseline.
fn summarise(settings: &Settings, concurrency: usize, rounds: &[Round]) {
    let median_of = |server: Server, of: fn(&Round) -> f64| {
        let mut values: Vec<f64> = rounds
            .iter()
            .filter(|r| r.server == server && r.concurrency == concurrency)
            .map(of)
            .collect();
        values.sort_by(f64::total_cmp);
        values.get(values.len() / 2).copied()
    };
    println!(
        "summary, concurrency {concurrency} ({} round(s) each; medians):",
        settings.repeat
    );
    for &server in &settings.servers {
        if let (Some(ns), Some(rate)) = (
            median_of(server, Round::cpu_ns_per_event),
            median_of(server, Round::events_per_s),
        ) {
            println!(
                "  {:<20} {ns:>8.0} ns of CPU per reading   {rate:>10.0} readings/s",
                server.name()
            );
        }
    }
    let bare = median_of(Server::Bare, Round::cpu_ns_per_event);
    for tap in [false, true] {
        let server = Server::Weir { tap };
        if let (Some(bare), Some(weir)) = (bare, median_of(server, Round::cpu_ns_per_event)) {
            let ratio = weir / bare;
            let verdict = |ok: bool| if ok { "PASS" } else { "MISS" };
            println!(
                "  {:<20} {ratio:>8.2}× the baseline's CPU per reading   target ≤ {TARGET_RATIO}× and ≤ {TARGET_CPU_NS} ns: {}",
                server.name(),
                verdict(ratio <= TARGET_RATIO && weir <= TARGET_CPU_NS),
            );
        }
    }
}

fn report(r: &Round) {
    let verdict = |ok: bool| if ok { "PASS" } else { "MISS" };
    let events_per_s = r.events_per_s();
    let cores = |cpu_s: f64| cpu_s / r.load_elapsed_s;
    match r.server {
        Server::Bare => println!(
            "e2e_http: the bare-parse baseline (decode and drop), concurrency {}",
            r.concurrency
        ),
        Server::Weir { .. } => println!(
            "e2e_http: http → remap → filter → blackhole, concurrency {}, {}",
            r.concurrency,
            match r.tap_lines {
                Some(events) => format!("a tap attached to every output ({events} events shown)"),
                None => "no tap attached".to_owned(),
            }
        ),
    }
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
        "  memory      {:>12.1} MiB peak RSS of the server (VmHWM)   target ≤ {TARGET_RSS_MIB:.0} MiB: {}",
        r.peak_rss_mib,
        verdict(r.peak_rss_mib <= TARGET_RSS_MIB),
    );
    let others_s = (r.machine_busy_s - r.weir_cpu_s - r.load_cpu_s).max(0.0);
    println!(
        "  cpu         server {:.2} cores ({:.0} ns of CPU per event), weir-load {:.2} cores, everything else {:.2} cores (of {})",
        cores(r.weir_cpu_s),
        r.cpu_ns_per_event(),
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

/// Runs the server and one load; the server is stopped whatever happens.
fn round(settings: &Settings, server: Server, concurrency: usize) -> Result<Round, String> {
    match server {
        Server::Bare => bare_round(settings, concurrency),
        Server::Weir { tap } => weir_round(settings, tap, concurrency),
    }
}

/// The baseline: this binary re-run as the bare server.
fn bare_round(settings: &Settings, concurrency: usize) -> Result<Round, String> {
    let listen = free_port()?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let mut child = Command::new(exe)
        .env(bare::SERVE_ENV, listen.to_string())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start the baseline: {e}"))?;
    let result = wait_ready(&mut child, listen).and_then(|()| {
        let (load, cpu) = load_against(settings, concurrency, listen, child.id(), || None)?;
        let events = load.readings_accepted;
        finish(Server::Bare, concurrency, &child, load, cpu, events)
    });
    stop(&mut child, Duration::from_secs(5));
    result
}

fn weir_round(settings: &Settings, tap: bool, concurrency: usize) -> Result<Round, String> {
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
        (tap, concurrency),
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
    (with_tap, concurrency): (bool, usize),
    weir: &mut Child,
    (source, api): (SocketAddr, SocketAddr),
    data_dir: &Path,
) -> Result<Round, String> {
    wait_ready(weir, api)?;
    let tap = match with_tap {
        true => Some(tap::attach(api, data_dir)?),
        false => None,
    };
    let (load, cpu) = load_against(settings, concurrency, source, weir.id(), || {
        tap.map(tap::Reader::detach)
    })?;
    let events = wait_drained(api, load.readings_accepted)?;
    let server = Server::Weir { tap: with_tap };
    finish(server, concurrency, weir, load, cpu, events)
}

/// What was read around a load: CPU times, and the events an attached tap was shown.
struct AroundLoad {
    server_before_s: f64,
    machine_busy_s: f64,
    tap_lines: Option<u64>,
}

/// Runs `weir-load` against `target`; `after_load` runs as soon as the load ends (to
/// detach a tap before the drain is waited for).
fn load_against(
    settings: &Settings,
    concurrency: usize,
    target: SocketAddr,
    server_pid: u32,
    after_load: impl FnOnce() -> Option<u64>,
) -> Result<(load::LoadRun, AroundLoad), String> {
    let server_before_s = cpu_seconds(server_pid).unwrap_or(0.0);
    let machine_before = machine_busy_seconds().unwrap_or(0.0);
    let load = load::run(
        WEIR_LOAD,
        &[
            "--url".into(),
            format!("http://{target}"),
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
    let tap_lines = after_load();
    println!("  {}", load.human);
    Ok((
        load,
        AroundLoad {
            server_before_s,
            machine_busy_s,
            tap_lines,
        },
    ))
}

/// The round's figures, once the server has taken every reading it will.
fn finish(
    server: Server,
    concurrency: usize,
    child: &Child,
    load: load::LoadRun,
    cpu: AroundLoad,
    events: u64,
) -> Result<Round, String> {
    let weir_cpu_s = cpu_seconds(child.id()).unwrap_or(0.0) - cpu.server_before_s;
    let peak_rss_mib = peak_rss_kib(child.id())
        .map(|kib| kib as f64 / 1024.0)
        .ok_or("cannot read VmHWM of the server")?;
    let accepted = load.readings_accepted;
    Ok(Round {
        server,
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
        machine_busy_s: cpu.machine_busy_s,
        tap_lines: cpu.tap_lines,
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
