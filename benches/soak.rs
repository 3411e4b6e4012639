//! The soak: half an hour of mixed load on one weir, watching its memory and file
//! descriptors, then checking that nothing acknowledged was lost.
//!
//! ```text
//! weir-load (HTTP) ──────┐
//! MQTT → Mosquitto ──────┼→ enrich (registry) ─┬→ redis (stream per device)
//! weir-devices (gateway) ┘                     ├→ delta_lake (temp dir)
//!                                              └→ tumbling 1m ─┬→ redis (hash)
//!                                                              └→ alarm → redis (hash)
//! ```
//!
//! Every reading carries a `seq` unique across the three loads (HTTP from 0, the gateway
//! from 10^12, MQTT from 2×10^12). weir's RSS (`VmRSS`) and open descriptors
//! (`/proc/<pid>/fd`) are sampled every `WEIR_SOAK_SAMPLE` (10 s). After the warm-up, the
//! **maximum** RSS of each window of `WEIR_SOAK_WINDOW` (5 min) is compared with the first
//! window's (the Delta sink's buffer fills and empties once per commit, so single samples
//! are a sawtooth): target growth ≤ 5%. Then weir drains and stops (SIGTERM), and every
//! reading a load saw acknowledged (an HTTP 2xx, a gateway PUBACK, Mosquitto's PUBACK)
//! must be in the Delta table and in Redis. The curve is printed and drawn into
//! `benches/soak-rss.svg` (`WEIR_SOAK_SVG` elsewhere).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

mod support;

use support::gateway::{Generator, Pki, import_fleet};
use support::{
    cpu_seconds, env_var, free_port, machine_busy_seconds, metric, open_fds, rss_kib, stop,
    wait_ready,
};

const WEIR: &str = env!("CARGO_BIN_EXE_weir");
const WEIR_LOAD: &str = env!("CARGO_BIN_EXE_weir-load");

const TARGET_GROWTH: f64 = 0.05;
const GATEWAY_FIRST_SEQ: u64 = 1_000_000_000_000;
const MQTT_FIRST_SEQ: u64 = 2_000_000_000_000;

struct Settings {
    duration: Duration,
    warmup: Duration,
    window: Duration,
    sample: Duration,
    /// HTTP requests per second (of `http_batch` readings each).
    http_rate: f64,
    http_batch: u32,
    mqtt_rate: u64,
    mqtt_devices: u32,
    gateway_rate: f64,
    gateway_devices: u32,
    svg: PathBuf,
}

fn duration_var(name: &str, default: &str) -> Result<Duration, String> {
    let text = env_var(name, default.to_owned())?;
    humantime::parse_duration(&text).map_err(|e| format!("{name}={text}: not a duration ({e})"))
}

impl Settings {
    fn from_env() -> Result<Self, String> {
        let settings = Self {
            duration: duration_var("WEIR_SOAK_DURATION", "30m")?,
            warmup: duration_var("WEIR_SOAK_WARMUP", "5m")?,
            window: duration_var("WEIR_SOAK_WINDOW", "5m")?,
            sample: duration_var("WEIR_SOAK_SAMPLE", "10s")?,
            http_rate: env_var("WEIR_SOAK_HTTP_RATE", 10.0)?,
            http_batch: env_var("WEIR_SOAK_HTTP_BATCH", 50)?,
            mqtt_rate: env_var("WEIR_SOAK_MQTT_RATE", 200)?,
            mqtt_devices: env_var("WEIR_SOAK_MQTT_DEVICES", 50)?,
            gateway_rate: env_var("WEIR_SOAK_GATEWAY_RATE", 300.0)?,
            gateway_devices: env_var("WEIR_SOAK_GATEWAY_DEVICES", 100)?,
            svg: env_var(
                "WEIR_SOAK_SVG",
                PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/benches/soak-rss.svg")),
            )?,
        };
        if settings.warmup + settings.window * 2 > settings.duration {
            return Err("WEIR_SOAK_DURATION must hold the warm-up and two windows".into());
        }
        Ok(settings)
    }
}

fn main() -> ExitCode {
    match Settings::from_env().and_then(|settings| soak(&settings)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            println!("soak: MISS (see above)");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("soak: {err}");
            ExitCode::FAILURE
        }
    }
}

/// One sample of weir.
struct Sample {
    at_s: f64,
    rss_kib: u64,
    /// The anonymous part of it (`RssAnon`): the heap, without the binary's pages.
    anon_kib: u64,
    fds: usize,
    cpu_s: f64,
}

/// What the loads saw acknowledged.
struct Acknowledged {
    http: Vec<u64>,
    gateway: Vec<u64>,
    /// MQTT: sent and acknowledged by Mosquitto (they are sent in `seq` order).
    mqtt_sent: u64,
    mqtt_acked: u64,
    mqtt_errors: u64,
}

fn soak(settings: &Settings) -> Result<bool, String> {
    let _ = support::raise_open_files_limit();
    let dir = tempfile::tempdir().map_err(|e| format!("cannot create a temp dir: {e}"))?;
    let prefix = format!(
        "weir-soak-{}-{}",
        std::process::id(),
        jiff::Timestamp::now().as_second()
    );
    let pki = Pki::generate(dir.path())?;
    let (api, http, gateway) = (free_port()?, free_port()?, free_port()?);
    let pipeline = dir.path().join("pipeline.yaml");
    std::fs::write(
        &pipeline,
        pipeline_yaml(dir.path(), &prefix, api, http, &pki.gateway_yaml(gateway)),
    )
    .map_err(|e| format!("cannot write the pipeline: {e}"))?;
    let log = std::fs::File::create(dir.path().join("weir.log")).map_err(|e| e.to_string())?;
    let mut weir = Command::new(WEIR)
        .arg("run")
        .arg(&pipeline)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start {WEIR}: {e}"))?;
    let result = run(
        settings,
        dir.path(),
        &prefix,
        &mut weir,
        api,
        http,
        gateway,
        &pki,
    );
    if weir.try_wait().ok().flatten().is_none() {
        stop(&mut weir, Duration::from_secs(120));
    }
    if result.is_err()
        && let Ok(log) = std::fs::read_to_string(dir.path().join("weir.log"))
    {
        eprintln!("--- weir log (last 60 lines) ---");
        for line in log
            .lines()
            .rev()
            .take(60)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            eprintln!("{line}");
        }
    }
    let _ = redis_delete(&prefix);
    result
}

fn pipeline_yaml(
    dir: &Path,
    prefix: &str,
    api: SocketAddr,
    http: SocketAddr,
    gateway: &str,
) -> String {
    format!(
        r#"data_dir: '{d}/data'
api: {{ listen: '{api}', auth: {{ public_metrics: true }} }}
log: {{ level: warn }}
registry: {{}}
sources:
  http_in: {{ type: http, listen: '{http}' }}
  mqtt_in:
    type: mqtt
    url: mqtt://127.0.0.1:1883
    client_id: '{prefix}'
    topics: ['{prefix}/+/telemetry']
    device_id: '{prefix}/{{device_id}}/telemetry'
    qos: 1
    session_expiry: 1h
    max_inflight: 1000
  gateway: {gateway}
transforms:
  enriched:
    type: enrich
    inputs: [http_in, mqtt_in, gateway]
    on_unknown_device: keep
  overheating:
    type: alarm
    inputs: [per_device_1m]
    raise: "temp_avg > 75"
    clear: "temp_avg < 70"
    severity: major
aggregators:
  per_device_1m:
    type: tumbling
    inputs: [enriched]
    size: 1m
    group_by: [device_id]
    idle_timeout: 30s
    aggregates:
      temp_avg: avg(temperature)
      temp_max: max(temperature)
      readings: count()
sinks:
  readings_redis:
    type: redis
    inputs: [enriched]
    url: redis://127.0.0.1:6379/0
    key: '{prefix}:r:{{{{ device_id }}}}'
    mode: stream
    maxlen: 100000000
  windows_redis:
    type: redis
    inputs: [per_device_1m]
    url: redis://127.0.0.1:6379/0
    key: '{prefix}:w:{{{{ device_id }}}}'
    mode: hash
  alarms_redis:
    type: redis
    inputs: [overheating]
    url: redis://127.0.0.1:6379/0
    key: '{prefix}:a:{{{{ device_id }}}}'
    mode: hash
  cold:
    type: delta_lake
    inputs: [enriched]
    uri: '{d}/lake'
    batch: {{ max_events: 1000000, max_bytes: 64MiB, timeout: 60s }}
"#,
        d = dir.display()
    )
}

#[allow(clippy::too_many_arguments)]
fn run(
    settings: &Settings,
    dir: &Path,
    prefix: &str,
    weir: &mut Child,
    api: SocketAddr,
    http: SocketAddr,
    gateway: SocketAddr,
    pki: &Pki,
) -> Result<bool, String> {
    wait_ready(weir, api)?;
    import_fleet(
        WEIR,
        api,
        &dir.join("data"),
        "soak-gw-",
        settings.gateway_devices,
    )?;
    let pid = weir.id();
    println!(
        "soak: {} of HTTP ({:.0} readings/s), MQTT ({} msg/s) and gateway ({:.0} msg/s over {} devices) load; weir pid {pid}",
        humantime::format_duration(settings.duration),
        settings.http_rate * f64::from(settings.http_batch),
        settings.mqtt_rate,
        settings.gateway_rate,
        settings.gateway_devices,
    );
    let seconds = format!("{}s", settings.duration.as_secs());
    let http_log = dir.join("http-accepted.txt");
    let http_load = Command::new(WEIR_LOAD)
        .args(["--url", &format!("http://{http}"), "--devices", "1000"])
        .args([
            "--batch",
            &settings.http_batch.to_string(),
            // Acknowledgements wait for the window's checkpoint and the Delta buffer's
            // group commit (about a second): enough workers to keep the offered rate.
            "--concurrency",
            "32",
        ])
        .args([
            "--rate",
            &settings.http_rate.to_string(),
            "--duration",
            &seconds,
        ])
        .arg("--accepted-log")
        .arg(&http_log)
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start weir-load: {e}"))?;
    let gateway_log = dir.join("gateway-acked.txt");
    let mut devices = Generator::start(
        gateway,
        &pki.ca,
        &[
            "--devices".into(),
            settings.gateway_devices.to_string(),
            "--prefix".into(),
            "soak-gw-".into(),
            "--connect-rate".into(),
            "100".into(),
            "publish".into(),
            "--duration".into(),
            seconds.clone(),
            "--rate".into(),
            settings.gateway_rate.to_string(),
            "--inflight".into(),
            "10".into(),
            "--first-seq".into(),
            GATEWAY_FIRST_SEQ.to_string(),
            "--acked-log".into(),
            gateway_log.display().to_string(),
        ],
    )?;
    let mqtt_done = Arc::new(AtomicBool::new(false));
    let mqtt = mqtt_publisher(settings, prefix, Arc::clone(&mqtt_done));

    let samples = sample(settings, pid)?;
    mqtt_done.store(true, Ordering::Relaxed);
    let http_out = http_load.wait_with_output().map_err(|e| e.to_string())?;
    let http_summary = String::from_utf8_lossy(&http_out.stdout).into_owned();
    println!(
        "  {}",
        http_summary
            .lines()
            .next()
            .unwrap_or("weir-load printed nothing")
    );
    let gateway_done = devices.wait_phase("done")?;
    devices.wait()?;
    let (mqtt_sent, mqtt_acked, mqtt_errors) =
        mqtt.join().map_err(|_| "the MQTT publisher panicked")?;
    println!(
        "  mqtt publisher: {mqtt_sent} sent, {mqtt_acked} acknowledged by Mosquitto, {mqtt_errors} connection errors"
    );

    // Let the MQTT source take what Mosquitto still holds for it, then drain and stop.
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let received = metric(
            api,
            "component_received_events_total",
            &["component_id=\"mqtt_in\""],
        )
        .unwrap_or(0.0) as u64;
        if received >= mqtt_acked {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let stopped_cleanly = stop(weir, Duration::from_secs(180));
    println!(
        "  weir stopped {}",
        if stopped_cleanly {
            "cleanly (SIGTERM)"
        } else {
            "UNCLEANLY"
        }
    );

    let acked = Acknowledged {
        http: read_seqs(&http_log)?,
        gateway: read_seqs(&gateway_log)?,
        mqtt_sent,
        mqtt_acked,
        mqtt_errors,
    };
    println!(
        "  acknowledged: http {} readings, gateway {} messages ({} unacked, {} lost connections), mqtt {}",
        acked.http.len(),
        acked.gateway.len(),
        gateway_done["unacked"],
        gateway_done["lost"],
        acked.mqtt_acked
    );
    let memory_ok = report_memory(settings, &samples)?;
    let loss_ok = check_loss(&acked, &dir.join("lake"), prefix)?;
    Ok(memory_ok && loss_ok && stopped_cleanly)
}

/// Publishes `seq`-numbered readings to Mosquitto at the MQTT rate until `done`; returns
/// (sent, acknowledged by the broker, connection errors).
fn mqtt_publisher(
    settings: &Settings,
    prefix: &str,
    done: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(u64, u64, u64)> {
    let (rate, devices, prefix) = (
        settings.mqtt_rate.max(1),
        settings.mqtt_devices.max(1),
        prefix.to_owned(),
    );
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        runtime.block_on(async move {
            let mut options =
                rumqttc::MqttOptions::new(format!("{prefix}-pub"), ("127.0.0.1", 1883));
            options.set_keep_alive(30).set_inflight(100);
            let (client, mut eventloop) = rumqttc::AsyncClient::builder(options)
                .capacity(1000)
                .build();
            let acked = Arc::new(AtomicU64::new(0));
            let errors = Arc::new(AtomicU64::new(0));
            let (acked_in, errors_in) = (Arc::clone(&acked), Arc::clone(&errors));
            let driver = tokio::spawn(async move {
                loop {
                    match eventloop.poll().await {
                        Ok(rumqttc::Event::Incoming(rumqttc::Incoming::PubAck(_))) => {
                            acked_in.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Disconnect)) => break,
                        Ok(_) => {}
                        Err(_) => {
                            errors_in.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
            });
            let started = Instant::now();
            let mut sent = 0u64;
            while !done.load(Ordering::Relaxed) {
                let due = started + Duration::from_secs_f64(sent as f64 / rate as f64);
                tokio::time::sleep_until(due.into()).await;
                let seq = MQTT_FIRST_SEQ + sent;
                let topic = format!("{prefix}/mq-{:03}/telemetry", sent % u64::from(devices));
                let payload = format!(
                    r#"{{"seq":{seq},"temperature":{:.2},"vibration":{:.3}}}"#,
                    60.0 + (sent % 300) as f64 / 10.0,
                    1.0 + (sent % 7) as f64 / 10.0
                );
                if client
                    .publish(
                        topic,
                        payload.into_bytes(),
                        rumqttc::PublishOptions::at_least_once(),
                    )
                    .await
                    .is_err()
                {
                    break;
                }
                sent += 1;
            }
            // Wait for the broker's last acknowledgements.
            let deadline = Instant::now() + Duration::from_secs(30);
            while acked.load(Ordering::Relaxed) < sent && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = client.disconnect().await;
            let _ = tokio::time::timeout(Duration::from_secs(5), driver).await;
            (
                sent,
                acked.load(Ordering::Relaxed),
                errors.load(Ordering::Relaxed),
            )
        })
    })
}

/// Samples weir every `settings.sample` for `settings.duration`, printing each sample.
fn sample(settings: &Settings, pid: u32) -> Result<Vec<Sample>, String> {
    let started = Instant::now();
    let machine_before = machine_busy_seconds().unwrap_or(0.0);
    let cpu_before = cpu_seconds(pid).unwrap_or(0.0);
    let mut samples = Vec::new();
    println!(
        "  {:>7}  {:>9}  {:>9}  {:>5}  {:>10}",
        "t", "RSS MiB", "anon MiB", "fds", "weir cores"
    );
    let mut last_cpu = (0.0, cpu_before);
    loop {
        let at = started.elapsed();
        let rss = rss_kib(pid).ok_or("weir is gone (no VmRSS)")?;
        let anon = support::status_kib(pid, "RssAnon:").unwrap_or(0);
        let fds = open_fds(pid).unwrap_or(0);
        let cpu = cpu_seconds(pid).unwrap_or(0.0);
        let cores = (cpu - last_cpu.1) / (at.as_secs_f64() - last_cpu.0).max(1e-9);
        last_cpu = (at.as_secs_f64(), cpu);
        println!(
            "  {:>6.0}s  {:>9.1}  {:>9.1}  {:>5}  {:>10.2}",
            at.as_secs_f64(),
            rss as f64 / 1024.0,
            anon as f64 / 1024.0,
            fds,
            cores
        );
        samples.push(Sample {
            at_s: at.as_secs_f64(),
            rss_kib: rss,
            anon_kib: anon,
            fds,
            cpu_s: cpu - cpu_before,
        });
        if at >= settings.duration {
            break;
        }
        let next = started + settings.sample * samples.len() as u32;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let machine = machine_busy_seconds().unwrap_or(0.0) - machine_before;
    let weir_cpu = samples.last().map_or(0.0, |s| s.cpu_s);
    println!(
        "  cpu: weir {:.2} cores on average; the whole machine {:.2} cores busy (of {}): other helpers' builds ran meanwhile",
        weir_cpu / elapsed,
        machine / elapsed,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    Ok(samples)
}

/// Per-window maxima after the warm-up, the growth verdict, and the SVG.
fn report_memory(settings: &Settings, samples: &[Sample]) -> Result<bool, String> {
    let (warmup, window) = (settings.warmup.as_secs_f64(), settings.window.as_secs_f64());
    let end = samples.last().map_or(0.0, |s| s.at_s);
    let mut windows = Vec::new();
    let mut start = warmup;
    while start + window <= end + settings.sample.as_secs_f64() / 2.0 {
        let inside: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.at_s >= start && s.at_s < start + window)
            .collect();
        if let (Some(rss), Some(fds)) = (
            inside.iter().map(|s| s.rss_kib).max(),
            inside.iter().map(|s| s.fds).max(),
        ) {
            let min_fds = inside.iter().map(|s| s.fds).min().unwrap_or(0);
            let anon = inside.iter().map(|s| s.anon_kib).max().unwrap_or(0);
            windows.push((start, start + window, rss, anon, min_fds, fds));
        }
        start += window;
    }
    let (Some(first), Some(last)) = (windows.first(), windows.last()) else {
        return Err("no complete window after the warm-up".into());
    };
    let growth = last.2 as f64 / first.2 as f64 - 1.0;
    let highest = windows.iter().map(|w| w.2).max().unwrap_or(0);
    let growth_max = highest as f64 / first.2 as f64 - 1.0;
    println!(
        "  RSS maxima per {} window after a {} warm-up:",
        humantime::format_duration(settings.window),
        humantime::format_duration(settings.warmup)
    );
    for (a, b, rss, anon, fds_lo, fds_hi) in &windows {
        println!(
            "    {:>5.1}–{:<5.1} min  max RSS {:>7.1} MiB (anonymous {:>7.1} MiB)   fds {fds_lo}–{fds_hi}",
            a / 60.0,
            b / 60.0,
            *rss as f64 / 1024.0,
            *anon as f64 / 1024.0
        );
    }
    let anon_growth = last.3 as f64 / first.3.max(1) as f64 - 1.0;
    println!(
        "  anonymous memory (the heap; RSS also counts the binary's pages as code runs for the first time): last window's max vs the first's {:+.2}%",
        anon_growth * 100.0
    );
    let ok = growth <= TARGET_GROWTH && growth_max <= TARGET_GROWTH;
    println!(
        "  memory: last window's max vs the first's {:+.2}%, highest window vs the first {:+.2}%   target ≤ +{:.0}%: {}",
        growth * 100.0,
        growth_max * 100.0,
        TARGET_GROWTH * 100.0,
        if ok { "PASS" } else { "MISS" }
    );
    let chart = support::svg::Chart {
        title: format!(
            "weir soak: RSS and open fds under mixed HTTP + MQTT + gateway load ({})",
            humantime::format_duration(settings.duration)
        ),
        x_label: "minutes".into(),
        primary: support::svg::Series {
            name: "RSS".into(),
            unit: "MiB".into(),
            colour: "#0077bb",
            points: samples
                .iter()
                .map(|s| (s.at_s / 60.0, s.rss_kib as f64 / 1024.0))
                .collect(),
        },
        secondary: Some(support::svg::Series {
            name: "open fds".into(),
            unit: "count".into(),
            colour: "#009988",
            points: samples
                .iter()
                .map(|s| (s.at_s / 60.0, s.fds as f64))
                .collect(),
        }),
        shaded: Some((0.0, warmup / 60.0, "warm-up".into())),
        marks: windows
            .iter()
            .map(|(a, b, rss, _, _, _)| support::svg::Mark {
                x0: a / 60.0,
                x1: b / 60.0,
                y: *rss as f64 / 1024.0,
                label: format!("max {:.1}", *rss as f64 / 1024.0),
            })
            .collect(),
    };
    std::fs::write(&settings.svg, chart.render())
        .map_err(|e| format!("cannot write {}: {e}", settings.svg.display()))?;
    println!("  curve drawn into {}", settings.svg.display());
    Ok(ok)
}

/// Every acknowledged reading must be in the Delta table and in Redis.
fn check_loss(acked: &Acknowledged, lake: &Path, prefix: &str) -> Result<bool, String> {
    let files = support::delta::table_files(lake)?;
    let (delta_values, delta_missing) = support::delta::column_values(&files, "seq")?;
    let delta_rows = delta_values.len() as u64 + delta_missing;
    let delta: HashSet<u64> = delta_values.into_iter().map(|v| v as u64).collect();
    let redis = redis_seqs(prefix)?;
    println!(
        "  delta: {delta_rows} rows in {} files, {} distinct seq ({} rows without one); redis: {} stream entries, {} distinct seq",
        files.len(),
        delta.len(),
        delta_missing,
        redis.1,
        redis.0.len()
    );
    let mqtt_range: Vec<u64> = (MQTT_FIRST_SEQ..MQTT_FIRST_SEQ + acked.mqtt_sent).collect();
    let mut ok = true;
    for (name, seqs) in [("http", &acked.http), ("gateway", &acked.gateway)] {
        ok &= report_missing(name, seqs, &delta, &redis.0);
    }
    if acked.mqtt_acked == acked.mqtt_sent && acked.mqtt_errors == 0 {
        ok &= report_missing("mqtt", &mqtt_range, &delta, &redis.0);
    } else {
        // Not every publish was acknowledged: only the count can be checked.
        let in_delta = mqtt_range.iter().filter(|s| delta.contains(s)).count() as u64;
        let in_redis = mqtt_range.iter().filter(|s| redis.0.contains(s)).count() as u64;
        let enough = in_delta >= acked.mqtt_acked && in_redis >= acked.mqtt_acked;
        println!(
            "  mqtt: {} of {} publishes acknowledged by the broker; {in_delta} in Delta, {in_redis} in Redis: {}",
            acked.mqtt_acked,
            acked.mqtt_sent,
            if enough { "PASS (by count)" } else { "LOST" }
        );
        ok &= enough;
    }
    println!(
        "  loss: {}",
        if ok {
            "nothing acknowledged was lost: PASS"
        } else {
            "MISS"
        }
    );
    Ok(ok)
}

fn report_missing(name: &str, seqs: &[u64], delta: &HashSet<u64>, redis: &HashSet<u64>) -> bool {
    let not_in_delta = seqs.iter().filter(|s| !delta.contains(s)).count();
    let not_in_redis = seqs.iter().filter(|s| !redis.contains(s)).count();
    println!(
        "  {name}: {} acknowledged; missing from Delta {not_in_delta}, from Redis {not_in_redis}",
        seqs.len()
    );
    not_in_delta == 0 && not_in_redis == 0
}

fn read_seqs(path: &Path) -> Result<Vec<u64>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    text.lines()
        .map(|l| {
            l.trim()
                .parse()
                .map_err(|_| format!("{}: `{l}` is not a seq", path.display()))
        })
        .collect()
}

/// The `seq` of every entry of the readings streams (`{prefix}:r:*`), and how many
/// entries there were.
fn redis_seqs(prefix: &str) -> Result<(HashSet<u64>, u64), String> {
    let err = |e: redis::RedisError| format!("redis: {e}");
    let mut conn = redis::Client::open("redis://127.0.0.1:6379/0")
        .and_then(|c| c.get_connection())
        .map_err(err)?;
    let keys = scan(&mut conn, &format!("{prefix}:r:*"))?;
    let mut seqs = HashSet::new();
    let mut entries = 0u64;
    for key in keys {
        let mut start = "-".to_owned();
        loop {
            let page: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
                .arg(&key)
                .arg(&start)
                .arg("+")
                .arg("COUNT")
                .arg(10_000)
                .query(&mut conn)
                .map_err(err)?;
            let Some((last_id, _)) = page.last() else {
                break;
            };
            start = format!("({last_id}");
            let full = page.len() == 10_000;
            for (_, fields) in page {
                entries += 1;
                if let Some((_, seq)) = fields.iter().find(|(name, _)| name == "seq")
                    && let Ok(seq) = seq.parse()
                {
                    seqs.insert(seq);
                }
            }
            if !full {
                break;
            }
        }
    }
    Ok((seqs, entries))
}

/// Deletes every key of this run.
fn redis_delete(prefix: &str) -> Result<(), String> {
    let err = |e: redis::RedisError| format!("redis: {e}");
    let mut conn = redis::Client::open("redis://127.0.0.1:6379/0")
        .and_then(|c| c.get_connection())
        .map_err(err)?;
    let keys = scan(&mut conn, &format!("{prefix}:*"))?;
    for chunk in keys.chunks(500) {
        redis::cmd("DEL")
            .arg(chunk)
            .query::<()>(&mut conn)
            .map_err(err)?;
    }
    Ok(())
}

/// The keys matching `pattern` (SCAN, so a shared Redis is not blocked).
fn scan(conn: &mut redis::Connection, pattern: &str) -> Result<Vec<String>, String> {
    use redis::Commands as _;
    let keys: Result<Vec<String>, _> = conn
        .scan_match::<_, String>(pattern)
        .map_err(|e| format!("redis: SCAN {pattern}: {e}"))?
        .collect();
    keys.map_err(|e| format!("redis: SCAN {pattern}: {e}"))
}
