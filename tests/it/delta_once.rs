//! Exactly once into Delta Lake through the default disk buffer: HTTP is answered once a
//! reading is durable in the buffer (milliseconds, not the sink's batch timeout), each
//! commit records the buffer position it covers, and after a crash the sink skips what the
//! table already holds. Tables are read back with the `deltalake` crate.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::Commands as _;
use serde_json::{Value, json};

use crate::delta_lake::{read_table, start_with_sinks};
use crate::support::Weir;
use crate::support::services::{self, Broker, Lease};

/// Starts weir with an http source and `sinks`; see [`start_with_sinks`].
async fn start(
    dir: &Path,
    sinks: &str,
    env: &[(&str, &str)],
) -> (Weir, u16, PathBuf, std::net::SocketAddr) {
    start_with_sinks(dir, "", sinks, env).await
}

/// The app id the sink `lake` commits under: `weir-lake@<instance>/<buffer incarnation>`.
fn app_id(dir: &Path) -> String {
    let read = |path: &str| {
        std::fs::read_to_string(dir.join(path))
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .trim()
            .to_owned()
    };
    format!(
        "weir-lake@{}/{}",
        read("state/instance_id"),
        read("state/buffers/lake/incarnation")
    )
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// Posts readings with `ids`; true when weir answered 2xx.
async fn post(client: &reqwest::Client, port: u16, device: &str, ids: &[u64]) -> bool {
    let body: Vec<Value> = ids
        .iter()
        .map(|id| json!({"id": id, "temperature": 20.5}))
        .collect();
    client
        .post(format!(
            "http://127.0.0.1:{port}/v1/devices/{device}/messages"
        ))
        .json(&body)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

async fn terminate(weir: Weir) {
    let status = tokio::task::spawn_blocking(move || weir.terminate())
        .await
        .unwrap();
    assert!(status.success(), "weir exits cleanly: {status}");
}

/// The `q`-quantile of `sorted` (ascending).
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_http_to_redis_and_delta_answers_in_milliseconds_and_lands_each_reading_once() {
    let _redis = Lease::shared(&[Broker::Redis]).await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("weir-test-{}-delta-once", std::process::id());
    let redis_url = format!("{}/9", services::redis());
    // DESIGN's first example as a new user writes it: no `buffer:`, the default batch
    // (a commit every 60 s, longer than the source's 30 s `ack_timeout`).
    let sinks = format!(
        "  warm: {{ type: redis, inputs: [devices], url: '{redis_url}', key: '{prefix}:{{{{ device_id }}}}' }}
  lake: {{ type: delta_lake, inputs: [devices], uri: lake }}
"
    );
    let (weir, port, _, _) = start(dir.path(), &sinks, &[]).await;

    let client = client();
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let acknowledged = Arc::new(Mutex::new(BTreeSet::new()));
    let refused = Arc::new(Mutex::new(0usize));
    let until = Instant::now() + Duration::from_secs(10);
    let mut clients = Vec::new();
    for worker in 0..8u64 {
        let (client, latencies, acknowledged, refused) = (
            client.clone(),
            latencies.clone(),
            acknowledged.clone(),
            refused.clone(),
        );
        clients.push(tokio::spawn(async move {
            let mut request = 0u64;
            while Instant::now() < until {
                let ids: Vec<u64> = (0..10)
                    .map(|i| (worker << 32) | (request << 4) | i)
                    .collect();
                let started = Instant::now();
                let ok = post(&client, port, &format!("d{worker}"), &ids).await;
                latencies.lock().unwrap().push(started.elapsed());
                match ok {
                    true => acknowledged.lock().unwrap().extend(ids),
                    false => *refused.lock().unwrap() += 1,
                }
                request += 1;
            }
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
    let mut latencies = latencies.lock().unwrap().clone();
    latencies.sort();
    let (p50, p99, max) = (
        quantile(&latencies, 0.50),
        quantile(&latencies, 0.99),
        latencies[latencies.len() - 1],
    );
    let acknowledged = acknowledged.lock().unwrap().clone();
    println!(
        "default http → redis + delta_lake: {} requests ({} readings) in 10 s from 8 clients; latency p50 {p50:?}, p99 {p99:?}, max {max:?}",
        latencies.len(),
        acknowledged.len()
    );
    assert_eq!(*refused.lock().unwrap(), 0, "every request answered 2xx");
    // The promise is milliseconds; the bound is wide because the test shares two cores
    // with other tests and builds. Without the disk buffer every request took 30 s (503).
    assert!(
        p99 <= Duration::from_millis(1000),
        "p99 {p99:?} is far above the milliseconds a durable append takes"
    );
    let mut redis = redis::Client::open(redis_url.as_str())
        .and_then(|c| c.get_connection())
        .expect("connect to Redis");
    let warm: Vec<String> = redis.keys(format!("{prefix}:*")).unwrap();
    assert_eq!(warm.len(), 8, "redis holds one document per device");
    let _: redis::RedisResult<()> = redis.del(warm);

    terminate(weir).await;
    let table = read_table(&dir.path().join("lake"), &app_id(dir.path()), &[]).await;
    let lost = acknowledged
        .iter()
        .filter(|id| !table.ids.contains_key(id))
        .count();
    let duplicates: usize = table.ids.values().map(|n| n - 1).sum();
    assert_eq!(lost, 0, "every acknowledged reading is a row");
    assert_eq!(duplicates, 0, "no reading is a row twice");
    assert_eq!(table.rows, acknowledged.len());
    assert_eq!(
        table.txn_version,
        Some(acknowledged.len() as i64),
        "the last commit records the buffer position after the last reading"
    );
}

/// Reading ids that tell attempts apart: a request weir made durable but was killed before
/// answering is sent again by its client, and that copy is a reading of its own (a new
/// attempt), not a row weir wrote twice.
fn reading_id(worker: u64, request: u64, i: u64, attempt: u64) -> u64 {
    (((worker << 20 | request) << 8 | i) << 12) | attempt.min(4095)
}

fn reading_of(id: u64) -> u64 {
    id >> 12
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_kill_9s_under_load_lose_nothing_and_write_no_row_twice() {
    let dir = tempfile::tempdir().unwrap();
    // Frequent commits, so kills land before, during and after them.
    let (weir, port, pipeline, _) = start(
        dir.path(),
        "  lake: { type: delta_lake, inputs: [devices], uri: lake, batch: { timeout: 200ms } }\n",
        &[],
    )
    .await;

    let acknowledged = Arc::new(Mutex::new(BTreeSet::new()));
    let running = Arc::new(AtomicBool::new(true));
    let client = client();
    let mut workers = Vec::new();
    for worker in 0..8u64 {
        let (client, acknowledged, running) =
            (client.clone(), acknowledged.clone(), running.clone());
        workers.push(tokio::spawn(async move {
            let (mut request, mut attempt) = (0u64, 0u64);
            while running.load(Ordering::Relaxed) {
                let ids: Vec<u64> = (0..25)
                    .map(|i| reading_id(worker, request, i, attempt))
                    .collect();
                if post(&client, port, &format!("d{worker}"), &ids).await {
                    acknowledged.lock().unwrap().extend(ids);
                    request += 1;
                    attempt = 0;
                } else {
                    // Refused while weir is down, or not answered: the same readings again.
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }
    let weir = weir
        .crash_and_restart(3, Duration::from_millis(1500), dir.path(), &pipeline)
        .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    running.store(false, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    terminate(weir).await;

    let table = read_table(&dir.path().join("lake"), &app_id(dir.path()), &[]).await;
    let acknowledged = acknowledged.lock().unwrap();
    let lost = acknowledged
        .iter()
        .filter(|id| !table.ids.contains_key(id))
        .count();
    let duplicates: usize = table.ids.values().map(|n| n - 1).sum();
    let readings: BTreeSet<u64> = table.ids.keys().map(|id| reading_of(*id)).collect();
    let resent = table.ids.len() - readings.len();
    println!(
        "delta kill -9 x3: {} acknowledged, {} rows, {duplicates} duplicate rows, {lost} lost, {resent} readings also landed from a request killed before its answer",
        acknowledged.len(),
        table.rows
    );
    assert!(
        acknowledged.len() > 2000,
        "the load ran ({} readings acknowledged)",
        acknowledged.len()
    );
    assert_eq!(lost, 0, "{lost} acknowledged readings are missing");
    assert_eq!(duplicates, 0, "{duplicates} rows were written twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_a_commit_before_the_buffer_heard_of_it_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // One commit of exactly the first 500 readings, then the crash point.
    let (weir, port, pipeline, api_addr) = start(
        dir.path(),
        "  lake: { type: delta_lake, inputs: [devices], uri: lake, batch: { max_events: 500, timeout: 1h } }\n",
        &[("WEIR_CRASH_AT", "delta_lake.after_commit")],
    )
    .await;
    let client = client();
    let ids: Vec<u64> = (0..600).collect();
    let mut answered = 0;
    for request in ids[..500].chunks(100) {
        answered += usize::from(post(&client, port, "d1", request).await);
    }
    weir.wait_for_crash().await;
    assert!(
        answered >= 4,
        "the buffer acknowledged the readings before the commit ({answered} of 5 requests)"
    );
    let lake = dir.path().join("lake");
    let committed = read_table(&lake, &app_id(dir.path()), &[]).await;
    assert_eq!(committed.rows, 500, "the crash came after the commit");

    // The buffer hands everything out again; the table's position says it is there.
    let weir = Weir::start(dir.path(), &pipeline, api_addr).await;
    assert!(post(&client, port, "d1", &ids[500..]).await);
    terminate(weir).await;
    let table = read_table(&lake, &app_id(dir.path()), &[]).await;
    assert_eq!(table.rows, 600, "the first 500 once, then the next 100");
    assert!(table.ids.values().all(|n| *n == 1), "no row twice");
    assert_eq!(table.ids.len(), 600);
    assert_eq!(table.txn_version, Some(600));

    // A buffer made anew numbers its records from zero again: a new incarnation, whose
    // records the position of the old one must not hide.
    std::fs::remove_dir_all(dir.path().join("state/buffers/lake")).unwrap();
    let weir = Weir::start(dir.path(), &pipeline, api_addr).await;
    let fresh: Vec<u64> = (600..700).collect();
    assert!(post(&client, port, "d1", &fresh).await);
    terminate(weir).await;
    let table = read_table(&lake, &app_id(dir.path()), &[]).await;
    assert_eq!(table.ids.len(), 700, "the new buffer's readings landed");
    assert!(table.ids.values().all(|n| *n == 1));
    assert_eq!(
        table.txn_version,
        Some(100),
        "the new incarnation has a transaction of its own"
    );
}

/// Flips a bit in the payload of record `n` of the disk buffer segment at `path` (a
/// 24-byte header, then frames of `len: u32le, crc: u32le, payload`).
fn corrupt_record(path: &Path, n: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    let mut at = 24;
    for _ in 0..n {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        at += 8 + len;
    }
    bytes[at + 8] ^= 0x10;
    std::fs::write(path, bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_cut_by_recovery_do_not_make_the_sink_skip_new_readings() {
    let dir = tempfile::tempdir().unwrap();
    // One commit of the first 10 readings (position 10), then the crash point: the
    // buffer never heard of the commit, so all 10 are still on disk.
    let (weir, port, pipeline, api_addr) = start(
        dir.path(),
        "  lake: { type: delta_lake, inputs: [devices], uri: lake, batch: { max_events: 10, timeout: 1h } }\n",
        &[("WEIR_CRASH_AT", "delta_lake.after_commit")],
    )
    .await;
    let client = client();
    let ids: Vec<u64> = (0..10).collect();
    // Answered once durable in the buffer, or not at all if the crash came first.
    post(&client, port, "d1", &ids).await;
    weir.wait_for_crash().await;
    let lake = dir.path().join("lake");
    assert_eq!(
        read_table(&lake, &app_id(dir.path()), &[])
            .await
            .txn_version,
        Some(10)
    );

    // A bit rots in record 3: recovery cuts the segment there, throwing away records
    // 3..10, which the table holds as positions below 10.
    let buffer = dir.path().join("state/buffers/lake");
    let segments: Vec<PathBuf> = std::fs::read_dir(&buffer)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    assert_eq!(segments.len(), 1, "{segments:?}");
    corrupt_record(&segments[0], 3);

    let weir = Weir::start(dir.path(), &pipeline, api_addr).await;
    let fresh: Vec<u64> = (100..110).collect();
    assert!(post(&client, port, "d1", &fresh).await);
    terminate(weir).await;
    let table = read_table(&lake, &app_id(dir.path()), &[]).await;
    let missing: Vec<u64> = fresh
        .iter()
        .copied()
        .filter(|id| !table.ids.contains_key(id))
        .collect();
    assert!(
        missing.is_empty(),
        "new readings taken for committed ones: {missing:?}"
    );
    assert_eq!(table.ids.len(), 20, "the first 10 once, then the new 10");
    assert!(table.ids.values().all(|n| *n == 1), "no row twice");
}
