//! End-to-end throughput of the `redis` sink in `hash` mode: a real weir process runs
//!
//! ```text
//! simulator (realtime: false, D devices) → redis (hash, pipelined batches)
//! ```
//!
//! against the local Redis (127.0.0.1:6379, database 15, emptied before and after), and
//! prints updates/s (readings written, counted by the sink once Redis replied), weir's peak
//! RSS and the CPU weir and redis-server used. Target: ≥ 150,000 updates/s.
//!
//! The simulator makes readings as fast as the sink takes them (backpressure), so the rate
//! the sink writes at is the sink's (and Redis's) limit on this machine.
//!
//! `cargo bench --bench redis_sink`; `WEIR_REDIS_SECONDS` (measured span, default 10),
//! `WEIR_REDIS_DEVICES` (10,000), `WEIR_REDIS_BATCH` (`max_batch`, 1000), `WEIR_REDIS_TTL`
//! (e.g. `1h`; default none) change the round.

use std::net::SocketAddr;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

mod support;

use support::{cpu_seconds, free_port, http_get, machine_busy_seconds, peak_rss_kib};

const WEIR: &str = env!("CARGO_BIN_EXE_weir");
const TARGET_UPDATES_PER_S: f64 = 150_000.0;
const DB: u32 = 15;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

fn main() -> ExitCode {
    // `cargo bench` passes `--bench`; a filter argument that is not ours skips the run.
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with('-') && a != "redis_sink")
    {
        return ExitCode::SUCCESS;
    }
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("redis_sink: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let duration = Duration::from_secs(env_or("WEIR_REDIS_SECONDS", 10));
    let devices: u64 = env_or("WEIR_REDIS_DEVICES", 10_000);
    let batch: u64 = env_or("WEIR_REDIS_BATCH", 1000);
    let ttl = std::env::var("WEIR_REDIS_TTL").ok();
    let redis_pid = redis_pid()?;
    flush()?;

    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let api = free_port()?;
    let ttl_line = ttl
        .as_deref()
        .map_or(String::new(), |t| format!("    ttl: {t}\n"));
    let pipeline = format!(
        "api: {{ listen: '{api}', auth: {{ public_metrics: true }} }}
data_dir: '{d}/data'
sources:
  fleet:
    type: simulator
    devices: {devices}
    realtime: false
    batch_size: 1000
    fields:
      temperature: {{ base: 72, spread: 8, noise: 0.4 }}
      vibration: {{ base: 2.0, spread: 0.4, noise: 0.15, min: 0 }}
      battery: {{ base: 95, spread: 3, noise: 0.05, max: 100, decimals: 1 }}
sinks:
  sink:
    type: redis
    inputs: [fleet]
    url: redis://127.0.0.1:6379/{DB}
    key: 'bench:{{{{ device_id }}}}'
    mode: hash
    max_batch: {batch}
{ttl_line}",
        d = dir.path().display()
    );
    let path = dir.path().join("pipeline.yaml");
    std::fs::write(&path, pipeline).map_err(|e| e.to_string())?;
    let mut weir = Command::new(WEIR)
        .arg("run")
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start weir: {e}"))?;
    let result = measure(&mut weir, api, redis_pid, duration);
    let _ = weir.kill();
    let _ = weir.wait();
    let keys = db_size();
    flush()?;
    let m = result?;
    let rate = m.written as f64 / m.seconds;
    println!(
        "redis_sink hash: {} updates of {devices} devices in {:.2} s = {:.0} updates/s (target ≥ {:.0}: {})",
        m.written,
        m.seconds,
        rate,
        TARGET_UPDATES_PER_S,
        if rate >= TARGET_UPDATES_PER_S {
            "MET"
        } else {
            "MISS"
        }
    );
    println!(
        "  max_batch {batch}, ttl {}; {} documents in Redis at the end",
        ttl.as_deref().unwrap_or("none"),
        keys.map_or("?".into(), |k| k.to_string())
    );
    println!(
        "  weir: peak RSS {:.1} MiB, {:.2} cores ({:.2} µs CPU per update); redis-server: {:.2} cores",
        m.peak_rss_kib as f64 / 1024.0,
        m.weir_cpu / m.seconds,
        m.weir_cpu / m.written as f64 * 1e6,
        m.redis_cpu / m.seconds,
    );
    let others = (m.machine_cpu - m.weir_cpu - m.redis_cpu) / m.seconds;
    println!("  everything else on the machine: {others:.2} cores");
    if others > 0.2 {
        println!("  WARNING: the machine was busy with other work; the numbers are pessimistic");
    }
    Ok(())
}

struct Measurement {
    written: u64,
    seconds: f64,
    peak_rss_kib: u64,
    weir_cpu: f64,
    redis_cpu: f64,
    /// CPU seconds the whole machine was busy (every process, every core).
    machine_cpu: f64,
}

/// Over `duration`, after a warm-up of 2 s (start-up, connection, first batches).
fn measure(
    weir: &mut Child,
    api: SocketAddr,
    redis_pid: u32,
    duration: Duration,
) -> Result<Measurement, String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while sink_events(api).unwrap_or(0) == 0 {
        if let Ok(Some(status)) = weir.try_wait() {
            return Err(format!("weir exited ({status}) before writing anything"));
        }
        if Instant::now() > deadline {
            return Err("nothing was written to Redis within 60 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(2));
    let (t0, w0, cpu0) = (Instant::now(), sink_events(api)?, cpu(weir.id(), redis_pid));
    std::thread::sleep(duration);
    let (w1, cpu1) = (sink_events(api)?, cpu(weir.id(), redis_pid));
    let seconds = t0.elapsed().as_secs_f64();
    if let Ok(Some(status)) = weir.try_wait() {
        return Err(format!("weir exited ({status}) during the measurement"));
    }
    Ok(Measurement {
        written: w1 - w0,
        seconds,
        peak_rss_kib: peak_rss_kib(weir.id()).unwrap_or(0),
        weir_cpu: cpu1[0] - cpu0[0],
        redis_cpu: cpu1[1] - cpu0[1],
        machine_cpu: cpu1[2] - cpu0[2],
    })
}

/// CPU seconds so far of weir, of redis-server and of the whole machine.
fn cpu(weir: u32, redis: u32) -> [f64; 3] {
    [
        cpu_seconds(weir).unwrap_or(0.0),
        cpu_seconds(redis).unwrap_or(0.0),
        machine_busy_seconds().unwrap_or(0.0),
    ]
}

fn redis_cli(args: &[&str]) -> Result<String, String> {
    let output = Command::new("redis-cli")
        .args(["-n", &DB.to_string()])
        .args(args)
        .output()
        .map_err(|e| format!("cannot run redis-cli (is Redis installed?): {e}"))?;
    if !output.status.success() {
        return Err(format!("redis-cli {args:?} failed"));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

fn redis_pid() -> Result<u32, String> {
    let info = redis_cli(&["info", "server"])?;
    info.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|pid| pid.trim().parse().ok())
        .ok_or_else(|| "Redis on 127.0.0.1:6379 does not answer (start it first)".into())
}

fn flush() -> Result<(), String> {
    redis_cli(&["flushdb"]).map(|_| ())
}

fn db_size() -> Option<u64> {
    redis_cli(&["dbsize"]).ok()?.parse().ok()
}

/// `component_sent_events_total` of the sink.
fn sink_events(api: SocketAddr) -> Result<u64, String> {
    let (_, body) = http_get(api, "/metrics").map_err(|e| format!("GET /metrics: {e}"))?;
    Ok(body
        .lines()
        .filter(|line| {
            line.starts_with("component_sent_events_total{")
                && line.contains("component_id=\"sink\"")
        })
        .filter_map(|line| line.rsplit(' ').next()?.trim().parse::<f64>().ok())
        .sum::<f64>() as u64)
}
