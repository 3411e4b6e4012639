//! The device gateway under load from `weir-devices` (the repo's own connection-count
//! load generator, a separate process), with the real binaries and TLS on:
//!
//! 1. **idle**: `WEIR_GW_IDLE_DEVICES` (10,000) devices connected at once; weir's RSS
//!    (`VmRSS`) once they settle minus before they connected, divided by their number.
//!    Target ≤ 16 KiB per idle connection.
//! 2. **throughput**: 1,000 connections publishing QoS 1 messages of 100 bytes, 10 in
//!    flight each, as fast as PUBACKs return, into a `blackhole`. Target ≥ 100,000 msg/s;
//!    reported with weir's and the generator's CPU time per message (`/proc/<pid>/stat`).
//! 3. **latency**: 10,000 msg/s in all (coordinated-omission-free schedule) into a `file`
//!    sink without fsync; publish→PUBACK p99. Target ≤ 10 ms.
//!
//! Each part runs a fresh weir in a temp dir, registers the fleet through `weir devices
//! import`, and stops weir with SIGTERM. A missed target is reported, not failed; a broken
//! harness (weir not starting, no device admitted) fails. `WEIR_GW_PARTS=idle,latency`
//! runs some parts; the other variables are in benches/README.md.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

mod support;

use support::gateway::{Generator, Pki, import_fleet};
use support::{
    cpu_seconds, env_var, free_port, machine_busy_seconds, metric, open_fds, rss_kib, stop,
    wait_ready,
};

const WEIR: &str = env!("CARGO_BIN_EXE_weir");

const TARGET_KIB_PER_CONNECTION: f64 = 16.0;
const TARGET_MSGS_PER_S: f64 = 100_000.0;
const TARGET_P99_MS: f64 = 10.0;

struct Settings {
    parts: Vec<String>,
    idle_devices: u32,
    connect_rate: f64,
    devices: u32,
    inflight: usize,
    duration: String,
    latency_rate: f64,
    latency_duration: String,
    threads: usize,
}

impl Settings {
    fn from_env() -> Result<Self, String> {
        Ok(Self {
            parts: env_var("WEIR_GW_PARTS", "idle,throughput,latency".to_owned())?
                .split(',')
                .map(|p| p.trim().to_owned())
                .collect(),
            idle_devices: env_var("WEIR_GW_IDLE_DEVICES", 10_000)?,
            connect_rate: env_var("WEIR_GW_CONNECT_RATE", 1000.0)?,
            devices: env_var("WEIR_GW_DEVICES", 1000)?,
            inflight: env_var("WEIR_GW_INFLIGHT", 10)?,
            duration: env_var("WEIR_GW_DURATION", "20s".to_owned())?,
            latency_rate: env_var("WEIR_GW_LATENCY_RATE", 10_000.0)?,
            latency_duration: env_var("WEIR_GW_LATENCY_DURATION", "30s".to_owned())?,
            threads: env_var("WEIR_GW_LOAD_THREADS", 1)?,
        })
    }
}

fn main() -> ExitCode {
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("device_gateway: {err}");
            return ExitCode::FAILURE;
        }
    };
    match support::raise_open_files_limit() {
        Ok(limit) => {
            println!("device_gateway: open-files limit {limit} (weir and weir-devices inherit it)")
        }
        Err(err) => eprintln!("device_gateway: cannot raise the open-files limit: {err}"),
    }
    for part in &settings.parts {
        let result = match part.as_str() {
            "idle" => Weir::start(Sink::Blackhole, settings.idle_devices)
                .and_then(|mut weir| weir.measure(|w| idle(&settings, w))),
            "throughput" => Weir::start(Sink::Blackhole, settings.devices)
                .and_then(|mut weir| weir.measure(|w| throughput(&settings, w))),
            "latency" => Weir::start(Sink::File, settings.devices)
                .and_then(|mut weir| weir.measure(|w| latency(&settings, w))),
            other => Err(format!(
                "unknown part `{other}` in WEIR_GW_PARTS (idle, throughput, latency)"
            )),
        };
        if let Err(err) = result {
            eprintln!("device_gateway: {part}: {err}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

fn verdict(ok: bool) -> &'static str {
    if ok { "PASS" } else { "MISS" }
}

#[derive(Clone, Copy, PartialEq)]
enum Sink {
    Blackhole,
    File,
}

/// A weir with a gateway and a registry holding the fleet, in a temp dir of its own.
struct Weir {
    child: Child,
    dir: tempfile::TempDir,
    api: SocketAddr,
    gateway: SocketAddr,
    pki: Pki,
}

impl Weir {
    fn start(sink: Sink, devices: u32) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("cannot create a temp dir: {e}"))?;
        let pki = Pki::generate(dir.path())?;
        let (api, gateway) = (free_port()?, free_port()?);
        let sink_yaml = match sink {
            Sink::Blackhole => "{ type: blackhole, inputs: [devices] }".to_owned(),
            Sink::File => format!(
                "{{ type: file, inputs: [devices], path: '{}', fsync: false }}",
                dir.path().join("out.ndjson").display()
            ),
        };
        let pipeline = format!(
            "data_dir: '{d}'
api: {{ listen: '{api}', auth: {{ public_metrics: true }} }}
log: {{ level: warn }}
registry: {{}}
sources:
  devices: {gateway_yaml}
sinks:
  sink: {sink_yaml}
",
            d = dir.path().display(),
            gateway_yaml = pki.gateway_yaml(gateway),
        );
        let path = dir.path().join("pipeline.yaml");
        std::fs::write(&path, pipeline).map_err(|e| format!("cannot write the pipeline: {e}"))?;
        let log = std::fs::File::create(dir.path().join("weir.log"))
            .map_err(|e| format!("cannot create the log: {e}"))?;
        let child = Command::new(WEIR)
            .arg("run")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {WEIR}: {e}"))?;
        let mut weir = Self {
            child,
            dir,
            api,
            gateway,
            pki,
        };
        let ready = wait_ready(&mut weir.child, api)
            .and_then(|()| import_fleet(WEIR, api, weir.dir.path(), "gw-", devices));
        match ready {
            Ok(()) => Ok(weir),
            Err(err) => {
                weir.finish(true);
                Err(err)
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Runs `part`, then stops weir (printing its log when the part failed).
    fn measure(
        &mut self,
        part: impl FnOnce(&mut Weir) -> Result<(), String>,
    ) -> Result<(), String> {
        let result = part(self);
        self.finish(result.is_err());
        result
    }

    fn finish(&mut self, show_log: bool) {
        stop(&mut self.child, Duration::from_secs(60));
        if show_log && let Ok(log) = std::fs::read_to_string(self.dir.path().join("weir.log")) {
            eprintln!("--- weir log ---\n{log}--- end of weir log ---");
        }
    }

    fn generator(
        &self,
        settings: &Settings,
        devices: u32,
        mode: &[String],
    ) -> Result<Generator, String> {
        let mut args = vec![
            "--devices".to_owned(),
            devices.to_string(),
            "--prefix".to_owned(),
            "gw-".to_owned(),
            "--connect-rate".to_owned(),
            settings.connect_rate.to_string(),
            "--threads".to_owned(),
            settings.threads.to_string(),
        ];
        args.extend_from_slice(mode);
        Generator::start(self.gateway, &self.pki.ca, &args)
    }

    fn connected_devices(&self) -> f64 {
        metric(
            self.api,
            "device_gateway_connected_devices",
            &["component_id=\"devices\""],
        )
        .unwrap_or(0.0)
    }
}

/// Waits until weir's RSS has moved less than 0.5% over three samples a second apart (at
/// most `patience`); the last sample, KiB.
fn settled_rss(pid: u32, patience: Duration) -> Result<u64, String> {
    let deadline = Instant::now() + patience;
    let mut samples: Vec<u64> = Vec::new();
    loop {
        samples.push(rss_kib(pid).ok_or("cannot read weir's VmRSS")?);
        if let [.., a, b, c] = samples[..] {
            let (lo, hi) = (a.min(b).min(c), a.max(b).max(c));
            if (hi - lo) as f64 <= hi as f64 * 0.005 || Instant::now() >= deadline {
                return Ok(c);
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn idle(settings: &Settings, weir: &mut Weir) -> Result<(), String> {
    let n = settings.idle_devices;
    let pid = weir.pid();
    let before = settled_rss(pid, Duration::from_secs(20))?;
    let fds_before = open_fds(pid).unwrap_or(0);
    let mut load = weir.generator(settings, n, &["idle".to_owned()])?;
    let connected = load.wait_phase("connected")?;
    let admitted = connected["connected"].as_u64().unwrap_or(0);
    if admitted == 0 {
        return Err(format!("no device was admitted: {connected}"));
    }
    // Every admitted device is counted by weir once its session started.
    let deadline = Instant::now() + Duration::from_secs(30);
    while weir.connected_devices() < admitted as f64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let cpu_before = cpu_seconds(pid).unwrap_or(0.0);
    let settle_started = Instant::now();
    let after = settled_rss(pid, Duration::from_secs(30))?;
    let idle_cores =
        (cpu_seconds(pid).unwrap_or(0.0) - cpu_before) / settle_started.elapsed().as_secs_f64();
    let fds = open_fds(pid).unwrap_or(0);
    let in_weir = weir.connected_devices();
    let load_rss = rss_kib(load.pid()).unwrap_or(0);
    load.close_stdin();
    load.wait_phase("done")?;
    load.wait()?;

    let per_connection = after.saturating_sub(before) as f64 / admitted as f64;
    println!("device_gateway idle: {n} devices, TLS, keep-alive 5 min");
    println!(
        "  connected   {admitted} of {n} ({} failed) in {:.2} s; weir counts {in_weir:.0} connected",
        connected["failed"], connected["elapsed_s"],
    );
    println!(
        "  memory      weir RSS {:.1} MiB before, {:.1} MiB with them idle: {per_connection:.2} KiB per connection   target ≤ {TARGET_KIB_PER_CONNECTION} KiB: {}",
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        verdict(per_connection <= TARGET_KIB_PER_CONNECTION),
    );
    println!(
        "  fds         weir {fds_before} before, {fds} with them idle; weir {idle_cores:.3} cores while idle; weir-devices RSS {:.1} MiB ({:.1} KiB per connection)",
        load_rss as f64 / 1024.0,
        load_rss as f64 / f64::from(n),
    );
    Ok(())
}

/// Runs one `publish` round; the generator's summary and the CPU seconds weir and the
/// machine used while it published.
struct Round {
    done: serde_json::Value,
    weir_cpu_s: f64,
    machine_busy_s: f64,
}

/// Publishes 100-byte QoS 1 messages for `duration`, `settings.inflight` in flight per
/// connection, as fast as PUBACKs return or at `rate` messages/s in all.
fn publish_round(
    settings: &Settings,
    weir: &mut Weir,
    duration: &str,
    rate: Option<f64>,
) -> Result<Round, String> {
    let mut mode: Vec<String> = vec![
        "publish".into(),
        "--duration".into(),
        duration.into(),
        "--inflight".into(),
        settings.inflight.to_string(),
        "--payload".into(),
        "100".into(),
    ];
    if let Some(rate) = rate {
        mode.extend(["--rate".into(), rate.to_string()]);
    }
    let mut load = weir.generator(settings, settings.devices, &mode)?;
    let connected = load.wait_phase("connected")?;
    if connected["connected"].as_u64().unwrap_or(0) == 0 {
        return Err(format!("no device was admitted: {connected}"));
    }
    load.wait_phase("publishing")?;
    let (weir_before, machine_before) = (
        cpu_seconds(weir.pid()).unwrap_or(0.0),
        machine_busy_seconds().unwrap_or(0.0),
    );
    let done = load.wait_phase("done")?;
    let weir_cpu_s = cpu_seconds(weir.pid()).unwrap_or(0.0) - weir_before;
    let machine_busy_s = machine_busy_seconds().unwrap_or(0.0) - machine_before;
    load.wait()?;
    if done["acked"].as_u64().unwrap_or(0) == 0 {
        return Err(format!("no publish was acknowledged: {done}"));
    }
    Ok(Round {
        done,
        weir_cpu_s,
        machine_busy_s,
    })
}

impl Round {
    fn print_cpu(&self) {
        let acked = self.done["acked"].as_f64().unwrap_or(0.0).max(1.0);
        let elapsed = self.done["elapsed_s"].as_f64().unwrap_or(0.0).max(1e-9);
        let load_cpu_s = self.done["cpu_s"].as_f64().unwrap_or(0.0);
        let others = (self.machine_busy_s - self.weir_cpu_s - load_cpu_s).max(0.0);
        println!(
            "  cpu         weir {:.2} cores ({:.2} µs per message), weir-devices {:.2} cores ({:.2} µs per message), everything else {:.2} cores (of {})",
            self.weir_cpu_s / elapsed,
            self.weir_cpu_s * 1e6 / acked,
            load_cpu_s / elapsed,
            load_cpu_s * 1e6 / acked,
            others / elapsed,
            std::thread::available_parallelism().map_or(0, |n| n.get()),
        );
        if others / elapsed > 0.2 {
            println!(
                "  warning     other processes used {:.2} cores meanwhile: the numbers above are low",
                others / elapsed
            );
        }
    }
}

fn throughput(settings: &Settings, weir: &mut Weir) -> Result<(), String> {
    let round = publish_round(settings, weir, &settings.duration, None)?;
    let done = &round.done;
    let per_s = done["msgs_per_s"].as_f64().unwrap_or(0.0);
    let in_sink = metric(
        weir.api,
        "component_sent_events_total",
        &["component_id=\"sink\"", "output=\"default\""],
    )
    .unwrap_or(0.0);
    println!(
        "device_gateway throughput: {} connections, {} in flight each, 100-byte QoS 1 publishes → blackhole",
        settings.devices, settings.inflight
    );
    println!(
        "  throughput  {per_s:>10.0} msg/s acknowledged ({} of {} in {} s; {} unacked, {} connections lost)   target ≥ {TARGET_MSGS_PER_S:.0}: {}",
        done["acked"],
        done["sent"],
        done["elapsed_s"],
        done["unacked"],
        done["lost"],
        verdict(per_s >= TARGET_MSGS_PER_S),
    );
    println!(
        "  latency     PUBACK p50 {} ms, p99 {} ms, max {} ms; the blackhole counted {in_sink:.0} events",
        done["p50_ms"], done["p99_ms"], done["max_ms"]
    );
    round.print_cpu();
    Ok(())
}

fn latency(settings: &Settings, weir: &mut Weir) -> Result<(), String> {
    let round = publish_round(
        settings,
        weir,
        &settings.latency_duration,
        Some(settings.latency_rate),
    )?;
    let done = &round.done;
    let p99 = done["p99_ms"].as_f64().unwrap_or(f64::MAX);
    let lines = count_lines(&weir.dir.path().join("out.ndjson"));
    println!(
        "device_gateway latency: {} msg/s offered over {} connections → file sink (no fsync)",
        settings.latency_rate, settings.devices
    );
    println!(
        "  rate        {} msg/s acknowledged ({} of {}; {} lines in the file)",
        done["msgs_per_s"], done["acked"], done["sent"], lines
    );
    println!(
        "  latency     publish→PUBACK p50 {} ms, p99 {p99} ms, p99.9 {} ms, max {} ms (from when each was due)   target p99 ≤ {TARGET_P99_MS} ms: {}",
        done["p50_ms"],
        done["p999_ms"],
        done["max_ms"],
        verdict(p99 <= TARGET_P99_MS),
    );
    round.print_cpu();
    Ok(())
}

fn count_lines(path: &Path) -> usize {
    std::fs::read(path)
        .map(|bytes| bytes.iter().filter(|&&b| b == b'\n').count())
        .unwrap_or(0)
}
