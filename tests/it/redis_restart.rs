//! Redis restarts while readings stream in: the `redis` sink retries what Redis did not
//! answer, reconnects, and every reading weir acknowledged (HTTP 2xx) is in Redis at the
//! end. It holds the exclusive lease on Redis (see `support::services`): it stops the
//! Redis other tests use.
//!
//! Redis is stopped with `SHUTDOWN SAVE` so that what it had stored survives its own
//! restart (the shared instance runs without persistence): what this test checks is that
//! weir loses nothing, not Redis's durability.

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::Commands as _;
use serde_json::{Value, json};

use crate::support::services::{Broker, Lease};
use crate::support::{Weir, free_port, metric_in, services};

const DB: u32 = 9;
const T0: u64 = 1_795_694_400_000;

/// Makes sure the shared Redis is up when the test ends, passed or failed.
struct RestartGuard;

impl Drop for RestartGuard {
    fn drop(&mut self) {
        services::ensure_redis();
        let _ = std::fs::remove_file("/var/lib/redis/dump.rdb");
    }
}

fn stop_redis() {
    let output = Command::new("redis-cli")
        .args(["shutdown", "save"])
        .output()
        .expect("run redis-cli");
    // redis-cli reports the closed connection of a successful shutdown as an error.
    let deadline = Instant::now() + Duration::from_secs(10);
    while services::redis_answers() {
        assert!(
            Instant::now() < deadline,
            "Redis did not stop: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_mid_stream_loses_nothing() {
    // Dropped after `_guard` has brought Redis back.
    let _redis = Lease::exclusive(Broker::Redis).await;
    let url = services::redis();
    let _guard = RestartGuard;
    let prefix = format!("weir-restart-{}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let (port, api) = (free_port(), free_port());
    let text = format!(
        "api: {{ listen: '127.0.0.1:{api}' }}
data_dir: '{d}/data'
sources:
  devices: {{ type: http, listen: '127.0.0.1:{port}', event_time: ts }}
sinks:
  warm:
    type: redis
    inputs: [devices]
    url: '{url}/{DB}'
    key: '{prefix}:{{{{ seq }}}}'
    retry: {{ initial_backoff: 50ms, max_backoff: 500ms }}
",
        d = dir.path().display()
    );
    let path = dir.path().join("pipeline.yaml");
    std::fs::write(&path, text).unwrap();
    let weir = Weir::start(dir.path(), &path, ([127, 0, 0, 1], api).into()).await;

    // Four devices post batches of 20 readings, each with a unique `seq`, as fast as
    // weir acknowledges them.
    let stop = Arc::new(AtomicBool::new(false));
    let next_seq = Arc::new(AtomicU64::new(0));
    let accepted = Arc::new(Mutex::new(BTreeSet::new()));
    let refused = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..4)
        .map(|worker| {
            let (stop, next_seq, accepted, refused) = (
                Arc::clone(&stop),
                Arc::clone(&next_seq),
                Arc::clone(&accepted),
                Arc::clone(&refused),
            );
            let endpoint = format!("http://127.0.0.1:{port}/v1/devices/dev-{worker}/messages");
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                while !stop.load(Ordering::Relaxed) {
                    let first = next_seq.fetch_add(20, Ordering::Relaxed);
                    let seqs: Vec<u64> = (first..first + 20).collect();
                    let body: Vec<Value> = seqs
                        .iter()
                        .map(|seq| json!({"seq": seq, "ts": T0 + seq, "v": worker}))
                        .collect();
                    match client.post(&endpoint).json(&body).send().await {
                        Ok(response) if response.status().is_success() => {
                            accepted.lock().unwrap().extend(seqs);
                        }
                        _ => {
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_secs(2)).await;
    let before_stop = accepted.lock().unwrap().len();
    stop_redis();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during_outage = accepted.lock().unwrap().len();
    services::ensure_redis();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    let accepted = accepted.lock().unwrap().clone();
    assert!(before_stop > 0, "readings were written before the restart");
    assert!(
        accepted.len() > during_outage,
        "readings were written after the restart ({} before it, {} in all)",
        during_outage,
        accepted.len()
    );

    let mut redis = redis::Client::open(format!("{url}/{DB}"))
        .unwrap()
        .get_connection()
        .unwrap();
    let mut pipe = redis::pipe();
    for seq in &accepted {
        pipe.exists(format!("{prefix}:{seq}"));
    }
    let present: Vec<bool> = pipe.query(&mut redis).unwrap();
    let missing: Vec<u64> = accepted
        .iter()
        .zip(&present)
        .filter(|(_, present)| !**present)
        .map(|(seq, _)| *seq)
        .collect();
    let metrics = weir.metrics().await;
    let retries = metric_in(&metrics, "sink_retries_total", &[r#"component_id="warm""#]);
    let keys: Vec<String> = redis.keys(format!("{prefix}:*")).unwrap();
    if !keys.is_empty() {
        let _: () = redis.del(keys).unwrap();
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged readings are missing from Redis, e.g. {:?}",
        missing.len(),
        accepted.len(),
        &missing[..missing.len().min(10)]
    );
    assert!(
        retries > 0.0,
        "the sink retried while Redis was down: {retries}"
    );
    eprintln!(
        "{} readings acknowledged ({} before the restart), {} requests refused, {retries} retries",
        accepted.len(),
        before_stop,
        refused.load(Ordering::Relaxed)
    );
}
