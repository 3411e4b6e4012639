//! Disk buffers end to end, with a real sink (`delta_lake`): an HTTP source with `ack:
//! on_commit` hears 2xx once its readings are durable in the buffer, long before the
//! sink's batch commits; and a `kill -9` loses nothing that was acknowledged.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support::{Weir, free_port, metric_in};
use serde_json::{Value, json};

fn write_pipeline(dir: &Path, port: u16, api: u16, timeout: &str) -> PathBuf {
    let pipeline = dir.join("pipeline.yaml");
    std::fs::write(
        &pipeline,
        format!(
            "api: {{ listen: 127.0.0.1:{api} }}
data_dir: state
sources:
  devices: {{ type: http, listen: 127.0.0.1:{port}, ack: on_commit }}
sinks:
  lake:
    type: delta_lake
    inputs: [devices]
    uri: lake
    batch: {{ timeout: {timeout} }}
    buffer: {{ type: disk }}
"
        ),
    )
    .unwrap();
    pipeline
}

/// How often each `id` occurs in the local table at `root` (empty while it does not exist).
pub async fn table_ids(root: &Path) -> BTreeMap<u64, usize> {
    let url = url::Url::from_directory_path(root).expect("an absolute table path");
    crate::support::delta::ids(&url, &Default::default()).await
}

/// Waits until the table holds `expected` distinct ids (or 60 s passed).
async fn wait_for_rows(root: &Path, expected: usize) -> BTreeMap<u64, usize> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ids = table_ids(root).await;
        if ids.len() >= expected || Instant::now() >= deadline {
            return ids;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub fn readings(ids: std::ops::Range<u64>) -> Vec<Value> {
    ids.map(|id| json!({"id": id, "temperature": 20.0 + (id % 7) as f64}))
        .collect()
}

/// Posts `readings`; the status and how long the answer took.
async fn post(client: &reqwest::Client, port: u16, readings: &[Value]) -> (u16, Duration) {
    let started = Instant::now();
    let status = client
        .post(format!("http://127.0.0.1:{port}/v1/devices/d1/messages"))
        .json(readings)
        .send()
        .await
        .map_or(0, |r| r.status().as_u16());
    (status, started.elapsed())
}

/// Posts requests `chunks` of 50 readings each (ids `chunk * 50..`), each answered 200;
/// returns the slowest answer's time.
pub async fn post_all(
    client: &reqwest::Client,
    port: u16,
    chunks: std::ops::Range<u64>,
) -> Duration {
    let mut slowest = Duration::ZERO;
    for chunk in chunks {
        let (status, took) = post(client, port, &readings(chunk * 50..chunk * 50 + 50)).await;
        assert_eq!(status, 200, "request {chunk}");
        slowest = slowest.max(took);
    }
    slowest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_answers_once_durable_in_the_buffer_and_rows_land_after_the_batch_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (port, api) = (free_port(), free_port());
    let pipeline = write_pipeline(dir.path(), port, api, "10s");
    let weir = Weir::start(
        dir.path(),
        &pipeline,
        format!("127.0.0.1:{api}").parse().unwrap(),
    )
    .await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let started = Instant::now();
    let slowest = post_all(&client, port, 0..10).await;
    // With a memory buffer each answer would wait for the commit, 10 s away.
    assert!(
        slowest < Duration::from_secs(2),
        "slowest answer took {slowest:?}"
    );
    assert!(
        table_ids(&dir.path().join("lake")).await.is_empty(),
        "nothing committed yet: the answers came from the buffer"
    );
    let metrics = weir.metrics().await;
    let disk = ["component_id=\"lake\"", "buffer_type=\"disk\""];
    assert_eq!(
        metric_in(&metrics, "buffer_received_events_total", &disk),
        500.0
    );
    assert!(metric_in(&metrics, "buffer_byte_size", &disk) > 0.0);

    let ids = wait_for_rows(&dir.path().join("lake"), 500).await;
    assert!(
        started.elapsed() >= Duration::from_secs(9),
        "committed by the batch timeout"
    );
    assert_eq!(ids.len(), 500);
    assert!(ids.values().all(|n| *n == 1), "no duplicates");
    // The gauge follows the acknowledgement of the committed chunks.
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric_in(&weir.metrics().await, "buffer_events", &disk) != 0.0 {
        assert!(
            Instant::now() < deadline,
            "the buffer is empty once the sink committed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        tokio::task::spawn_blocking(move || weir.terminate())
            .await
            .unwrap()
            .success()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loses_nothing_the_buffer_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let (port, api) = (free_port(), free_port());
    let api_addr = format!("127.0.0.1:{api}").parse().unwrap();
    // A commit an hour away: everything acknowledged is only in the buffer when it dies.
    let pipeline = write_pipeline(dir.path(), port, api, "1h");
    let mut weir = Weir::start(dir.path(), &pipeline, api_addr).await;
    let client = reqwest::Client::new();
    post_all(&client, port, 0..6).await;
    weir.signal(libc::SIGKILL);
    let _ = weir.child.wait();
    assert!(table_ids(&dir.path().join("lake")).await.is_empty());

    write_pipeline(dir.path(), port, api, "300ms");
    let weir = Weir::start(dir.path(), &pipeline, api_addr).await;
    let ids = wait_for_rows(&dir.path().join("lake"), 300).await;
    assert_eq!(
        ids.len(),
        300,
        "every acknowledged reading came back from the buffer"
    );
    assert!(ids.values().all(|n| *n == 1), "once each");
    assert!(
        tokio::task::spawn_blocking(move || weir.terminate())
            .await
            .unwrap()
            .success()
    );
    // A clean stop recorded the acknowledgement: a third start delivers nothing again.
    let weir = Weir::start(dir.path(), &pipeline, api_addr).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ids = table_ids(&dir.path().join("lake")).await;
    assert!(
        ids.values().all(|n| *n == 1),
        "nothing delivered twice after a clean stop"
    );
    drop(weir);
}

async fn reload(weir: &Weir) -> u16 {
    weir.request(reqwest::Method::POST, "/v1/reload")
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_hands_the_buffer_to_the_new_instance_without_loss_or_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let (port, api) = (free_port(), free_port());
    let pipeline = write_pipeline(dir.path(), port, api, "1h");
    let weir = Weir::start(
        dir.path(),
        &pipeline,
        format!("127.0.0.1:{api}").parse().unwrap(),
    )
    .await;
    let client = reqwest::Client::new();
    post_all(&client, port, 0..4).await;
    // A changed sink: the old instance drains and commits, then the new one opens the
    // same buffer directory (never both at once).
    write_pipeline(dir.path(), port, api, "300ms");
    assert_eq!(reload(&weir).await, 200);
    post_all(&client, port, 4..8).await;
    let ids = wait_for_rows(&dir.path().join("lake"), 400).await;
    assert_eq!(ids.len(), 400, "both instances' readings landed");
    assert!(ids.values().all(|n| *n == 1), "once each");
    assert!(
        tokio::task::spawn_blocking(move || weir.terminate())
            .await
            .unwrap()
            .success()
    );
}
