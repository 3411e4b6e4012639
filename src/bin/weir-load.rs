//! `weir-load`: an HTTP load generator for weir's `http` source.
//!
//! It plays a fleet of devices that POST batches of readings to
//! `{url}/v1/devices/{device_id}/messages`, as fast as weir answers (or at `--rate` requests
//! per second), and reports what weir accepted and how long it took:
//!
//! ```text
//! weir-load --url http://127.0.0.1:9000 --devices 1000 --batch 100 --concurrency 32 --duration 10s
//! ```
//!
//! Why it looks the way it does:
//!
//! - **It is cheap.** On a small machine the generator shares the cores with weir, so every
//!   cycle it spends is one weir does not get. The parts of each reading that never change
//!   (field names, the random temperature and vibration values) are rendered once into a
//!   pool; a request only splices in the sequence numbers and the timestamp. The runtime is
//!   single-threaded by default (`--threads`).
//! - **Connections are reused.** One `reqwest` client and `--concurrency` worker tasks, each
//!   with at most one request in flight, so weir sees `concurrency` keep-alive connections.
//! - **Nothing accepted goes unnoticed.** Every reading carries a unique `seq` (request `i`
//!   holds `i * batch .. (i + 1) * batch`). With `--accepted-log FILE` the sequence numbers of
//!   every reading that got a 2xx are written out, one per line, so a test can check that
//!   every accepted reading reached the other end.
//! - **Latency is honest under `--rate`.** Requests are scheduled at fixed times; a request
//!   that leaves late because the generator fell behind is timed from when it was due, so a
//!   stalled server cannot hide behind fewer requests (coordinated omission).
//!
//! At the end it prints one line for people and one JSON line for scripts:
//! `{"requests":..,"readings_accepted":..,"errors":..,"transport_errors":..,
//! "status_counts":{"200":..},"elapsed_s":..,"readings_per_s":..,"p50_ms":..,"p99_ms":..}`.
//! `errors` counts every request that did not get a 2xx (including `transport_errors`,
//! those that got no HTTP answer at all). The exit status is non-zero when no request
//! succeeded.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{ArgGroup, Parser};
use hdrhistogram::Histogram;
use reqwest::Url;
use reqwest::header::{CONTENT_TYPE, HeaderValue};

/// How many distinct readings are pre-rendered; requests cycle through them.
const READING_POOL: usize = 4096;

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "weir-load",
    version,
    about = "POST batches of readings to weir's http source and report throughput and latency",
    group(ArgGroup::new("stop").required(true).args(["duration", "requests"]))
)]
struct Args {
    /// Base URL of the http source; requests go to `{url}/v1/devices/{device_id}/messages`.
    #[arg(long, default_value = "http://127.0.0.1:9000")]
    url: String,
    /// Number of simulated devices (`load-000001` ...), used in turn.
    #[arg(long, default_value_t = 1000)]
    devices: u32,
    /// Readings per request (a JSON array).
    #[arg(long, default_value_t = 100)]
    batch: u32,
    /// Requests in flight at once (worker tasks, each with its own keep-alive connection).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// How long to send, e.g. `10s`, `1m`.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// How many requests to send in total.
    #[arg(long)]
    requests: Option<u64>,
    /// Requests per second across all workers (default: as fast as weir answers).
    #[arg(long)]
    rate: Option<f64>,
    /// Name of the per-reading sequence number field.
    #[arg(long, default_value = "seq")]
    seq_field: String,
    /// Write the `seq` of every reading that got a 2xx to this file, one per line.
    #[arg(long)]
    accepted_log: Option<PathBuf>,
    /// Threads of the generator's async runtime.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Give up on a request after this long (counted as a transport error).
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    timeout: Duration,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration: jiff::SignedDuration = text
        .parse()
        .map_err(|err| format!("expected a duration such as `10s` or `2m`: {err}"))?;
    Duration::try_from(duration).map_err(|_| "expected a positive duration".to_owned())
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("weir-load: error: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.devices == 0 || args.batch == 0 || args.concurrency == 0 || args.threads == 0 {
        bail!("--devices, --batch, --concurrency and --threads must be at least 1");
    }
    if args
        .rate
        .is_some_and(|rate| !(rate.is_finite() && rate > 0.0))
    {
        bail!("--rate must be a positive number of requests per second");
    }
    let runtime = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()?
    };
    let report = runtime.block_on(generate(&args))?;
    report.print();
    if let Some(path) = &args.accepted_log {
        report
            .write_accepted(path, args.batch)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if report.ok_requests() == 0 {
        eprintln!("weir-load: every request failed");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// What every worker shares: the plan and the pre-built request parts.
struct Plan {
    client: reqwest::Client,
    /// One URL per device.
    urls: Vec<Url>,
    body: BodyTemplate,
    batch: u32,
    /// The next request index to claim.
    next: AtomicU64,
    requests: Option<u64>,
    deadline: Option<Instant>,
    rate: Option<f64>,
    start: Instant,
    keep_accepted: bool,
}

async fn generate(args: &Args) -> anyhow::Result<Report> {
    let base = args.url.trim_end_matches('/');
    let urls = (1..=args.devices)
        .map(|n| {
            let url = format!("{base}/v1/devices/load-{n:06}/messages");
            Url::parse(&url).with_context(|| format!("invalid --url: `{url}`"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let client = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(args.concurrency)
        .timeout(args.timeout)
        .build()
        .context("cannot build the HTTP client")?;
    let start = Instant::now();
    let plan = Arc::new(Plan {
        client,
        urls,
        body: BodyTemplate::new(&args.seq_field),
        batch: args.batch,
        next: AtomicU64::new(0),
        requests: args.requests,
        deadline: args.duration.map(|d| start + d),
        rate: args.rate,
        start,
        keep_accepted: args.accepted_log.is_some(),
    });
    let workers: Vec<_> = (0..args.concurrency)
        .map(|_| tokio::spawn(worker(Arc::clone(&plan))))
        .collect();
    let mut report = Report::new();
    for worker in workers {
        report.merge(worker.await.context("a worker task panicked")?);
    }
    report.elapsed = start.elapsed();
    Ok(report)
}

/// Sends requests until the plan says stop; returns what it saw.
async fn worker(plan: Arc<Plan>) -> Report {
    let mut report = Report::new();
    let mut body_len = 0;
    let content_type = HeaderValue::from_static("application/json");
    loop {
        let i = plan.next.fetch_add(1, Ordering::Relaxed);
        if plan.requests.is_some_and(|n| i >= n) {
            break;
        }
        // When the request starts, for its latency: when it was due if the generator is
        // behind schedule, else when it actually leaves (not counting timer slack).
        let started = match plan.rate {
            Some(rate) => {
                let due = plan.start + Duration::from_secs_f64(i as f64 / rate);
                if Instant::now() < due {
                    tokio::time::sleep_until(due.into()).await;
                    Instant::now()
                } else {
                    due
                }
            }
            None => Instant::now(),
        };
        if plan
            .deadline
            .is_some_and(|deadline| Instant::now() >= deadline)
        {
            break;
        }

        let first_seq = i * u64::from(plan.batch);
        let mut body = Vec::with_capacity(body_len);
        plan.body.render(first_seq, plan.batch, &mut body);
        body_len = body.len();
        let device = (i % plan.urls.len() as u64) as usize;
        let sent = plan
            .client
            .post(plan.urls[device].clone())
            .header(CONTENT_TYPE, content_type.clone())
            .body(body)
            .send()
            .await;
        // Read the whole answer so the connection goes back to the pool.
        let outcome = match sent {
            Ok(response) => {
                let status = response.status();
                response.bytes().await.map(|_| status)
            }
            Err(err) => Err(err),
        };
        report.record_latency(started.elapsed());
        match outcome {
            Ok(status) => {
                *report.status_counts.entry(status.as_u16()).or_default() += 1;
                if status.is_success() {
                    report.readings_accepted += u64::from(plan.batch);
                    if plan.keep_accepted {
                        report.accepted_first_seqs.push(first_seq);
                    }
                }
            }
            Err(err) => {
                report.transport_errors += 1;
                report.first_error.get_or_insert_with(|| error_chain(&err));
            }
        }
    }
    report
}

/// Request bodies, pre-rendered except for the per-request parts.
///
/// A reading is `{"seq":<seq>,"temperature":<t>,"vibration":<v>,"ts":<ms>}`; everything
/// between the sequence number and the timestamp comes from a pool of pre-rendered values.
struct BodyTemplate {
    /// `{"seq":`
    head: Vec<u8>,
    /// `,"temperature":71.23,"vibration":1.234,"ts":`, one per pooled reading.
    middles: Vec<Vec<u8>>,
}

impl BodyTemplate {
    fn new(seq_field: &str) -> Self {
        let field = serde_json::to_string(seq_field).unwrap_or_else(|_| "\"seq\"".into());
        let mut rng = SplitMix64(0x5745_4952); // "WEIR": the same values on every run.
        let middles = (0..READING_POOL)
            .map(|_| {
                let temperature = 20.0 + 100.0 * rng.unit();
                let vibration = 0.5 + 3.0 * rng.unit();
                format!(",\"temperature\":{temperature:.2},\"vibration\":{vibration:.3},\"ts\":")
                    .into_bytes()
            })
            .collect();
        Self {
            head: format!("{{{field}:").into_bytes(),
            middles,
        }
    }

    /// Renders a JSON array of `batch` readings numbered from `first_seq` into `out`.
    fn render(&self, first_seq: u64, batch: u32, out: &mut Vec<u8>) {
        let ts = jiff::Timestamp::now().as_millisecond().to_string();
        out.push(b'[');
        for n in 0..u64::from(batch) {
            let seq = first_seq + n;
            if n > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&self.head);
            // Writing to a Vec cannot fail.
            let _ = write!(out, "{seq}");
            out.extend_from_slice(&self.middles[(seq % READING_POOL as u64) as usize]);
            out.extend_from_slice(ts.as_bytes());
            out.push(b'}');
        }
        out.push(b']');
    }
}

/// A tiny deterministic PRNG (SplitMix64): enough for plausible sensor values.
struct SplitMix64(u64);

impl SplitMix64 {
    /// A float in `0..1`.
    fn unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// What one worker, or all of them, saw.
struct Report {
    /// Request latency in microseconds.
    latency_us: Histogram<u64>,
    status_counts: BTreeMap<u16, u64>,
    transport_errors: u64,
    readings_accepted: u64,
    /// First `seq` of each request that got a 2xx (kept only for `--accepted-log`).
    accepted_first_seqs: Vec<u64>,
    first_error: Option<String>,
    elapsed: Duration,
}

impl Report {
    fn new() -> Self {
        Self {
            // 1 µs to 1 h with 3 significant digits; larger values are clamped.
            latency_us: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .expect("constant histogram bounds are valid"),
            status_counts: BTreeMap::new(),
            transport_errors: 0,
            readings_accepted: 0,
            accepted_first_seqs: Vec::new(),
            first_error: None,
            elapsed: Duration::ZERO,
        }
    }

    fn record_latency(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency_us.saturating_record(us.max(1));
    }

    fn merge(&mut self, other: Report) {
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = self.latency_us.add(&other.latency_us);
        for (status, count) in other.status_counts {
            *self.status_counts.entry(status).or_default() += count;
        }
        self.transport_errors += other.transport_errors;
        self.readings_accepted += other.readings_accepted;
        self.accepted_first_seqs.extend(other.accepted_first_seqs);
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    fn requests(&self) -> u64 {
        self.status_counts.values().sum::<u64>() + self.transport_errors
    }

    fn ok_requests(&self) -> u64 {
        self.status_counts
            .iter()
            .filter(|(status, _)| (200..300).contains(*status))
            .map(|(_, count)| count)
            .sum()
    }

    fn print(&self) {
        let requests = self.requests();
        let errors = requests - self.ok_requests();
        let elapsed = self.elapsed.as_secs_f64();
        let per_s = if elapsed > 0.0 {
            self.readings_accepted as f64 / elapsed
        } else {
            0.0
        };
        let ms = |q: f64| self.latency_us.value_at_quantile(q) as f64 / 1000.0;
        if let Some(err) = &self.first_error {
            eprintln!("weir-load: first transport error: {err}");
        }
        println!(
            "weir-load: {requests} requests ({errors} errors) in {elapsed:.2} s: \
             {} readings accepted, {per_s:.0} readings/s, p50 {:.2} ms, p99 {:.2} ms",
            self.readings_accepted,
            ms(0.5),
            ms(0.99),
        );
        let status_counts: serde_json::Map<String, serde_json::Value> = self
            .status_counts
            .iter()
            .map(|(status, count)| (status.to_string(), (*count).into()))
            .collect();
        let json = serde_json::json!({
            "requests": requests,
            "readings_accepted": self.readings_accepted,
            "errors": errors,
            "transport_errors": self.transport_errors,
            "status_counts": status_counts,
            "elapsed_s": round3(elapsed),
            "readings_per_s": per_s.round(),
            "p50_ms": round3(ms(0.5)),
            "p99_ms": round3(ms(0.99)),
        });
        println!("{json}");
    }

    /// Writes the `seq` of every accepted reading, in order, one per line.
    fn write_accepted(&self, path: &std::path::Path, batch: u32) -> std::io::Result<()> {
        let mut firsts = self.accepted_first_seqs.clone();
        firsts.sort_unstable();
        let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
        for first in firsts {
            for seq in first..first + u64::from(batch) {
                writeln!(out, "{seq}")?;
            }
        }
        out.flush()
    }
}

/// An error and its causes on one line (reqwest's own message leaves out the cause).
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
