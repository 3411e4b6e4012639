//! What the connections report, shared by all of them: counters, the connect and
//! publish→PUBACK latency histograms (behind a lock, fed in batches so the lock is taken
//! once per [`BATCH`] messages), and the source of unique `seq` numbers.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;

/// Latencies a connection collects before it takes the shared histogram's lock.
const BATCH: usize = 64;

pub struct Stats {
    next_seq: AtomicU64,
    pub connected: AtomicU64,
    /// Connections that ended before the run did (the gateway closed them, or they failed).
    pub lost: AtomicU64,
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    /// Publishes still waiting for their PUBACK when their connection ended.
    pub unacked: AtomicU64,
    /// Failed connection attempts by kind, with the first detail of each.
    failures: Mutex<BTreeMap<&'static str, (u64, String)>>,
    /// Microseconds from TCP connect to CONNACK.
    connect_us: Mutex<Histogram<u64>>,
    /// Microseconds from publish (or its due time) to PUBACK.
    puback_us: Mutex<Histogram<u64>>,
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 1 h, 3 significant digits; larger values are clamped.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant histogram bounds are valid")
}

fn micros(latency: Duration) -> u64 {
    u64::try_from(latency.as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

impl Stats {
    pub fn new(first_seq: u64) -> Self {
        Self {
            next_seq: AtomicU64::new(first_seq),
            connected: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            unacked: AtomicU64::new(0),
            failures: Mutex::new(BTreeMap::new()),
            connect_us: Mutex::new(histogram()),
            puback_us: Mutex::new(histogram()),
        }
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq.fetch_add(1, Ordering::Relaxed)
    }

    pub fn count_sent(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_acked(&self) {
        self.acked.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_unacked(&self, n: u64) {
        self.unacked.fetch_add(n, Ordering::Relaxed);
    }

    pub fn connected(&self, took: Duration) {
        self.connected.fetch_add(1, Ordering::Relaxed);
        lock(&self.connect_us).saturating_record(micros(took));
    }

    pub fn failed(&self, kind: &'static str, detail: String) {
        let mut failures = lock(&self.failures);
        let entry = failures.entry(kind).or_insert((0, detail));
        entry.0 += 1;
    }

    pub fn failures(&self) -> BTreeMap<&'static str, (u64, String)> {
        lock(&self.failures).clone()
    }

    pub fn failed_total(&self) -> u64 {
        lock(&self.failures).values().map(|(n, _)| n).sum()
    }

    /// `(p50, p99, max)` of the connect latency in milliseconds.
    pub fn connect_ms(&self) -> (f64, f64, f64) {
        let h = lock(&self.connect_us);
        (ms(&h, 0.5), ms(&h, 0.99), h.max() as f64 / 1000.0)
    }

    /// `(p50, p99, p99.9, max)` of publish→PUBACK in milliseconds.
    pub fn puback_ms(&self) -> (f64, f64, f64, f64) {
        let h = lock(&self.puback_us);
        (
            ms(&h, 0.5),
            ms(&h, 0.99),
            ms(&h, 0.999),
            h.max() as f64 / 1000.0,
        )
    }
}

fn ms(h: &Histogram<u64>, quantile: f64) -> f64 {
    h.value_at_quantile(quantile) as f64 / 1000.0
}

/// A poisoned lock still holds counts worth reporting.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One connection's latencies on their way into the shared histogram.
pub struct LatencyBatch<'a> {
    stats: &'a Stats,
    micros: Vec<u64>,
}

impl<'a> LatencyBatch<'a> {
    pub fn new(stats: &'a Stats) -> Self {
        Self {
            stats,
            micros: Vec::with_capacity(BATCH),
        }
    }

    pub fn record(&mut self, latency: Duration) {
        self.micros.push(micros(latency));
        if self.micros.len() >= BATCH {
            self.flush();
        }
    }

    pub fn flush(&mut self) {
        if self.micros.is_empty() {
            return;
        }
        let mut histogram = lock(&self.stats.puback_us);
        for us in self.micros.drain(..) {
            histogram.saturating_record(us);
        }
    }
}
