//! `weir-devices run`: opens the fleet's connections at the connect rate, reports when
//! every attempt has ended, then idles or publishes, and reports what happened.

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use tokio::io::AsyncReadExt as _;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::connection::{self, Ending, PublishPlan, Published, Target};
use crate::fleet::Fleet;
use crate::payload::Payload;
use crate::stats::Stats;
use crate::{Mode, PublishArgs, RunArgs};

/// Linux reports CPU time in `/proc/<pid>/stat` in ticks of 1/100 s (USER_HZ).
const TICKS_PER_S: f64 = 100.0;

pub fn main(args: RunArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.connect_rate.is_finite() && args.connect_rate > 0.0,
        "--connect-rate must be a positive number of connections per second"
    );
    anyhow::ensure!(args.threads > 0, "--threads must be at least 1");
    anyhow::ensure!(
        args.keep_alive >= Duration::from_secs(2),
        "--keep-alive must be at least 2s"
    );
    if let Mode::Publish(publish) = &args.mode {
        anyhow::ensure!(publish.inflight > 0, "--inflight must be at least 1");
        anyhow::ensure!(
            publish.rate.is_none_or(|r| r.is_finite() && r > 0.0),
            "--rate must be a positive number of messages per second"
        );
    }
    if let Some(soft) = open_files_limit()
        && soft < u64::from(args.fleet.devices) + 64
    {
        eprintln!(
            "weir-devices: warning: the open-files limit is {soft}, too low for {} connections (raise it with `ulimit -n`)",
            args.fleet.devices
        );
    }
    let runtime = match args.threads {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build()?,
    };
    runtime.block_on(run(args))
}

/// What every device task shares once publishing.
struct PublishShared {
    payload: Arc<Payload>,
    inflight: usize,
    /// Time between one connection's publishes, at `--rate`.
    interval: Option<Duration>,
    /// Between consecutive connections' first publishes, to spread them over the interval.
    stagger: Duration,
    drain: Duration,
    keep_acked: bool,
}

async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let fleet = Arc::new(Fleet::new(
        &args.fleet.prefix,
        args.fleet.first_device,
        args.fleet.devices,
        &args.fleet.fleet_key,
    )?);
    let tls = weir::tls::TlsConfig {
        ca_file: args.ca.clone(),
        cert_file: None,
        key_file: None,
    }
    .client_config()
    .context("cannot build the TLS client configuration")?;
    let name = args
        .server_name
        .clone()
        .unwrap_or_else(|| args.address.ip().to_string());
    let server_name = rustls::pki_types::ServerName::try_from(name.clone())
        .with_context(|| format!("--server-name `{name}` is not a host name or IP address"))?;
    let target = Arc::new(Target {
        addr: args.address,
        connector: tokio_rustls::TlsConnector::from(tls),
        server_name,
        keep_alive: args.keep_alive,
        connect_timeout: args.connect_timeout,
    });
    let count = fleet.len();
    let publish = match &args.mode {
        Mode::Publish(p) => Some(Arc::new(publish_shared(p, count))),
        Mode::Idle { .. } => None,
    };
    let stats = Arc::new(Stats::new(match &args.mode {
        Mode::Publish(p) => p.first_seq,
        Mode::Idle { .. } => 0,
    }));
    let stop = CancellationToken::new();
    let (go_tx, go_rx) = watch::channel(None::<Instant>);
    let (attempted_tx, mut attempted_rx) = mpsc::unbounded_channel::<()>();

    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for n in 0..count as u32 {
        let device = Device {
            n,
            due: started + Duration::from_secs_f64(f64::from(n) / args.connect_rate),
            fleet: Arc::clone(&fleet),
            target: Arc::clone(&target),
            stats: Arc::clone(&stats),
            attempted: attempted_tx.clone(),
            go: go_rx.clone(),
            stop: stop.clone(),
            publish: publish.clone(),
            hub_host: args.hub_host.clone(),
            token_ttl_s: args.token_ttl.as_secs(),
        };
        tasks.spawn(device.run());
    }
    drop(attempted_tx);
    let mut attempted = 0;
    while attempted < count && attempted_rx.recv().await.is_some() {
        attempted += 1;
    }
    let connected = stats.connected.load(Ordering::Relaxed);
    print_connected(&stats, count, started.elapsed());

    let mut publishing = None;
    match &args.mode {
        Mode::Idle { hold } => {
            match hold {
                Some(hold) => tokio::time::sleep(*hold).await,
                None => wait_for_stdin_eof().await,
            }
            stop.cancel();
        }
        Mode::Publish(p) => {
            println!("{}", serde_json::json!({ "phase": "publishing" }));
            let _ = std::io::stdout().flush();
            let go = Instant::now();
            let cpu_before = own_cpu_seconds();
            let _ = go_tx.send(Some(go));
            tokio::time::sleep(p.duration).await;
            stop.cancel();
            publishing = Some((go, cpu_before));
        }
    }
    let mut acked_seqs = Vec::new();
    while let Some(done) = tasks.join_next().await {
        acked_seqs.extend(done.context("a device task panicked")?.acked_seqs);
    }
    match (&args.mode, publishing) {
        (Mode::Publish(p), Some((go, cpu_before))) => {
            let elapsed = go.elapsed();
            let cpu_s = own_cpu_seconds().zip(cpu_before).map(|(a, b)| a - b);
            print_published(&stats, elapsed, cpu_s);
            if let Some(path) = &p.acked_log {
                write_acked(path, acked_seqs)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
        }
        _ => print_idle_done(&stats),
    }
    Ok(match connected {
        0 => ExitCode::FAILURE,
        _ => ExitCode::SUCCESS,
    })
}

fn publish_shared(p: &PublishArgs, count: usize) -> PublishShared {
    let interval = p
        .rate
        .map(|rate| Duration::from_secs_f64(count as f64 / rate));
    PublishShared {
        payload: Arc::new(Payload::new(p.payload)),
        inflight: p.inflight,
        interval,
        stagger: p
            .rate
            .map_or(Duration::ZERO, |rate| Duration::from_secs_f64(1.0 / rate)),
        drain: p.drain,
        keep_acked: p.acked_log.is_some(),
    }
}

/// One simulated device.
struct Device {
    n: u32,
    /// When it connects.
    due: Instant,
    fleet: Arc<Fleet>,
    target: Arc<Target>,
    stats: Arc<Stats>,
    /// Told once the connection attempt ended, either way.
    attempted: mpsc::UnboundedSender<()>,
    /// When publishing starts.
    go: watch::Receiver<Option<Instant>>,
    stop: CancellationToken,
    publish: Option<Arc<PublishShared>>,
    hub_host: String,
    token_ttl_s: u64,
}

impl Device {
    async fn run(mut self) -> Published {
        tokio::time::sleep_until(self.due.into()).await;
        let id = self.fleet.id(self.n);
        let (username, password) = self
            .fleet
            .credentials(&self.hub_host, &id, self.token_ttl_s);
        let started = Instant::now();
        let result = connection::connect(&self.target, &id, username, password).await;
        match &result {
            Ok(_) => self.stats.connected(started.elapsed()),
            Err(failure) => self.stats.failed(failure.kind, failure.detail.clone()),
        }
        let _ = self.attempted.send(());
        let Ok(connection) = result else {
            return Published::default();
        };
        let Some(shared) = self.publish.clone() else {
            if connection.idle(&self.stop).await == Ending::Lost {
                self.stats.lost.fetch_add(1, Ordering::Relaxed);
            }
            return Published::default();
        };
        let go = tokio::select! {
            _ = self.stop.cancelled() => return Published::default(),
            go = self.go.wait_for(Option::is_some) => match go {
                Ok(go) => go.unwrap_or_else(Instant::now),
                Err(_) => return Published::default(),
            },
        };
        let plan = PublishPlan {
            topic: Bytes::from(format!("devices/{id}/messages/events/")),
            inflight: shared.inflight,
            interval: shared.interval,
            first_due: go + shared.stagger * self.n,
            stop: self.stop.clone(),
            drain: shared.drain,
            payload: Arc::clone(&shared.payload),
            keep_acked: shared.keep_acked,
        };
        let (ending, published) = connection.publish(&plan, &self.stats).await;
        if ending == Ending::Lost {
            self.stats.lost.fetch_add(1, Ordering::Relaxed);
        }
        published
    }
}

fn print_connected(stats: &Stats, count: usize, took: Duration) {
    let connected = stats.connected.load(Ordering::Relaxed);
    let (p50, p99, max) = stats.connect_ms();
    let failures: serde_json::Map<String, serde_json::Value> = stats
        .failures()
        .into_iter()
        .map(|(kind, (n, detail))| {
            eprintln!("weir-devices: {n} connections failed ({kind}), the first: {detail}");
            (kind.to_owned(), n.into())
        })
        .collect();
    println!(
        "weir-devices: {connected} of {count} devices connected in {:.2} s ({:.0}/s), CONNACK p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms",
        took.as_secs_f64(),
        connected as f64 / took.as_secs_f64().max(1e-9),
    );
    println!(
        "{}",
        serde_json::json!({
            "phase": "connected",
            "devices": count,
            "connected": connected,
            "failed": stats.failed_total(),
            "failures": failures,
            "elapsed_s": round3(took.as_secs_f64()),
            "connect_p50_ms": round3(p50),
            "connect_p99_ms": round3(p99),
            "connect_max_ms": round3(max),
        })
    );
    let _ = std::io::stdout().flush();
}

fn print_idle_done(stats: &Stats) {
    let lost = stats.lost.load(Ordering::Relaxed);
    println!("weir-devices: idle connections closed; {lost} had been lost before");
    println!(
        "{}",
        serde_json::json!({
            "phase": "done",
            "connected": stats.connected.load(Ordering::Relaxed),
            "failed": stats.failed_total(),
            "lost": lost,
        })
    );
}

fn print_published(stats: &Stats, elapsed: Duration, cpu_s: Option<f64>) {
    let (sent, acked, unacked, lost) = (
        stats.sent.load(Ordering::Relaxed),
        stats.acked.load(Ordering::Relaxed),
        stats.unacked.load(Ordering::Relaxed),
        stats.lost.load(Ordering::Relaxed),
    );
    let elapsed_s = elapsed.as_secs_f64();
    let per_s = acked as f64 / elapsed_s.max(1e-9);
    let (p50, p99, p999, max) = stats.puback_ms();
    println!(
        "weir-devices: {sent} publishes, {acked} acknowledged ({unacked} not, {lost} connections lost) in {elapsed_s:.2} s: {per_s:.0} msg/s, PUBACK p50 {p50:.2} ms, p99 {p99:.2} ms, p99.9 {p999:.2} ms, max {max:.2} ms"
    );
    println!(
        "{}",
        serde_json::json!({
            "phase": "done",
            "connected": stats.connected.load(Ordering::Relaxed),
            "failed": stats.failed_total(),
            "lost": lost,
            "sent": sent,
            "acked": acked,
            "unacked": unacked,
            "elapsed_s": round3(elapsed_s),
            "msgs_per_s": per_s.round(),
            "p50_ms": round3(p50),
            "p99_ms": round3(p99),
            "p999_ms": round3(p999),
            "max_ms": round3(max),
            "cpu_s": cpu_s.map(round3),
        })
    );
}

/// Returns once standard input is closed (or unreadable).
async fn wait_for_stdin_eof() {
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 256];
    while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
}

fn write_acked(path: &std::path::Path, mut seqs: Vec<u64>) -> std::io::Result<()> {
    seqs.sort_unstable();
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for seq in seqs {
        writeln!(out, "{seq}")?;
    }
    out.flush()
}

/// User + system CPU seconds of this process, from `/proc/self/stat`.
fn own_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_S)
}

/// The soft limit of open files, from `/proc/self/limits`.
fn open_files_limit() -> Option<u64> {
    std::fs::read_to_string("/proc/self/limits")
        .ok()?
        .lines()
        .find(|line| line.starts_with("Max open files"))?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
