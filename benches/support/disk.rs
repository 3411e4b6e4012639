//! The disk under a bench: fsync latency and synced sequential throughput, measured before
//! the benches that make data durable so their numbers can be read against the disk's.

use std::fs::File;
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

/// 4 KiB writes each followed by `fdatasync`.
const SYNC_RUNS: usize = 200;
/// 1 MiB writes each followed by `fdatasync`.
const THROUGHPUT_MIB: usize = 128;

/// What the disk did.
pub struct DiskProbe {
    pub sync_mean: Duration,
    pub sync_p50: Duration,
    pub sync_p99: Duration,
    pub synced_mib_per_s: f64,
}

impl DiskProbe {
    /// Measures the disk holding `dir` with a scratch file there (deleted afterwards).
    pub fn measure(dir: &Path) -> std::io::Result<Self> {
        let path = dir.join("disk-probe");
        let result = Self::measure_file(&path);
        let _ = std::fs::remove_file(&path);
        result
    }

    fn measure_file(path: &Path) -> std::io::Result<Self> {
        let mut file = File::create(path)?;
        let block = vec![7u8; 4096];
        let mut latencies = Vec::with_capacity(SYNC_RUNS);
        for _ in 0..SYNC_RUNS {
            let started = Instant::now();
            file.write_all(&block)?;
            file.sync_data()?;
            latencies.push(started.elapsed());
        }
        latencies.sort();
        let percentile = |p: usize| latencies[(SYNC_RUNS * p / 100).min(SYNC_RUNS - 1)];
        let mib = vec![7u8; 1 << 20];
        let started = Instant::now();
        for _ in 0..THROUGHPUT_MIB {
            file.write_all(&mib)?;
            file.sync_data()?;
        }
        let took = started.elapsed();
        Ok(Self {
            sync_mean: latencies.iter().sum::<Duration>() / SYNC_RUNS as u32,
            sync_p50: percentile(50),
            sync_p99: percentile(99),
            synced_mib_per_s: THROUGHPUT_MIB as f64 / took.as_secs_f64(),
        })
    }

    /// Two lines for the bench's report.
    pub fn print(&self) {
        println!(
            "disk: 4 KiB write + fdatasync: mean {:?}, p50 {:?}, p99 {:?} ({SYNC_RUNS} runs)",
            self.sync_mean, self.sync_p50, self.sync_p99
        );
        println!(
            "disk: 1 MiB write + fdatasync: {:.0} MiB/s ({THROUGHPUT_MIB} MiB)",
            self.synced_mib_per_s
        );
    }
}
