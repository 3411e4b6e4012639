//! A window definition that changes under open windows: at a start (the checkpoint was
//! made under another definition) and at a reload, for every window type that keeps
//! windows open. The open windows are closed early and emitted with `partial: true`,
//! counted in `aggregator_windows_closed_early_total`; never dropped. With `ack:
//! on_checkpoint`, a reading whose window was closed before any checkpoint held it is
//! acknowledged only once the sink has committed the partial result holding it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use weir::telemetry::Telemetry;
use weir::topology::RunningTopology;

use crate::support::{eventually, free_port, lines, metric, pipeline};
use crate::window_reload::written;

const T0: i64 = 1_800_000_000_000;

/// An http source into aggregator `agg` (its type and own options in `window`), written to
/// `windows.ndjson`, or to `sink` when given.
fn config(port: u16, dir: &Path, window: &str, ack: &str, sink: Option<&str>) -> String {
    let d = dir.display();
    let file = format!("{{ type: file, inputs: [agg], path: '{d}/windows.ndjson' }}");
    format!(
        "data_dir: '{d}/state'
api: {{ enabled: false }}
sources:
  devices: {{ type: http, listen: 127.0.0.1:{port}, event_time: ts, ack_timeout: 3s }}
aggregators:
  agg:
    {window}
    inputs: [devices]
    max_future: 1000d
    idle_timeout: 1h
    {ack}
    aggregates:
      n: count()
sinks:
  windows: {sink}
",
        sink = sink.unwrap_or(&file)
    )
}

/// One reading of device `a` every 10 s for `from..to` (in tens of seconds).
fn readings(from: i64, to: i64) -> Vec<Value> {
    (from..to)
        .map(|i| json!({ "ts": T0 + i * 10_000, "x": 1 }))
        .collect()
}

/// Posts the readings in one request; the answer's status.
async fn post(port: u16, readings: &[Value]) -> u16 {
    reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/v1/devices/a/messages"))
        .json(readings)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn partial(dir: &Path) -> Vec<(String, bool, u64)> {
    written(dir).into_iter().filter(|w| w.1).collect()
}

fn closed_early(telemetry: &Arc<Telemetry>) -> f64 {
    metric(
        telemetry,
        "aggregator_windows_closed_early_total",
        &[r#"component_id="agg""#],
    )
}

const ON_CHECKPOINT: &str = "ack: on_checkpoint\n    checkpoint_interval: 200ms";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_under_a_changed_definition_closes_the_checkpointed_windows_early() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let minutes = config(
        port,
        dir.path(),
        "type: tumbling\n    size: 1m",
        ON_CHECKPOINT,
        None,
    );
    let telemetry = Telemetry::new();
    let topology = RunningTopology::start(&pipeline(&minutes), &telemetry).unwrap();
    // Two windows close; the third (08:02) holds three readings, acknowledged once
    // checkpointed.
    assert_eq!(post(port, &readings(0, 15)).await, 200);
    let failures = topology.stop(Duration::from_secs(10)).await;
    assert!(failures.is_empty(), "{failures:?}");
    assert!(partial(dir.path()).is_empty());

    let halves = config(
        port,
        dir.path(),
        "type: tumbling\n    size: 30s",
        ON_CHECKPOINT,
        None,
    );
    let telemetry = Telemetry::new();
    let topology = RunningTopology::start(&pipeline(&halves), &telemetry).unwrap();
    let emitted = eventually(Duration::from_secs(10), || !partial(dir.path()).is_empty()).await;
    let failures = topology.stop(Duration::from_secs(10)).await;
    assert!(failures.is_empty(), "{failures:?}");

    assert!(emitted, "{:?}", written(dir.path()));
    assert_eq!(
        written(dir.path()),
        [
            ("2027-01-15T08:00:00Z".to_owned(), false, 6),
            ("2027-01-15T08:01:00Z".to_owned(), false, 6),
            // The checkpointed window, closed early as the old definition had it.
            ("2027-01-15T08:02:00Z".to_owned(), true, 3),
        ]
    );
    let line = lines(&dir.path().join("windows.ndjson"))
        .into_iter()
        .find(|w| w.get("partial").is_some())
        .unwrap();
    assert_eq!(line["window_end"], "2027-01-15T08:03:00Z", "{line}");
    assert_eq!(closed_early(&telemetry), 1.0);
    let left =
        std::fs::read_to_string(dir.path().join("state/aggregators/agg.json")).unwrap_or_default();
    assert!(!left.contains("08:02"), "not emitted twice: {left}");
}

/// Posts `0..15` under `before`, reloads to `after`, and returns the telemetry once the
/// reload's partial results are written.
async fn reload_closes_early(before: &str, after: &str) -> (tempfile::TempDir, Arc<Telemetry>) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let telemetry = Telemetry::new();
    let ack = "ack: on_receive\n    checkpoint_interval: 1h";
    let mut topology = RunningTopology::start(
        &pipeline(&config(port, dir.path(), before, ack, None)),
        &telemetry,
    )
    .unwrap();
    assert_eq!(post(port, &readings(0, 15)).await, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(partial(dir.path()).is_empty(), "{:?}", written(dir.path()));
    topology
        .reload(pipeline(&config(port, dir.path(), after, ack, None)))
        .await
        .unwrap();
    let emitted = eventually(Duration::from_secs(10), || !partial(dir.path()).is_empty()).await;
    let failures = topology.stop(Duration::from_secs(10)).await;
    assert!(failures.is_empty(), "{failures:?}");
    assert!(emitted, "{:?}", written(dir.path()));
    (dir, telemetry)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_closes_an_open_session_early() {
    let (dir, telemetry) =
        reload_closes_early("type: session\n    gap: 1m", "type: session\n    gap: 30s").await;
    // One session: all fifteen readings, 10 s apart.
    assert_eq!(
        partial(dir.path()),
        [("2027-01-15T08:00:00Z".to_owned(), true, 15)]
    );
    assert_eq!(closed_early(&telemetry), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_closes_pending_sliding_windows_early() {
    let (dir, telemetry) = reload_closes_early(
        "type: sliding\n    size: 1m",
        "type: sliding\n    size: 30s",
    )
    .await;
    // The windows still to come when readings leave them (the last at 08:03:20, when the
    // 08:02:20 reading leaves), each counted once.
    let partial = partial(dir.path());
    assert!(!partial.is_empty());
    assert_eq!(closed_early(&telemetry), partial.len() as f64);
    let all = written(dir.path());
    assert!(
        all.iter().all(|w| w.2 <= 6),
        "a one-minute window holds at most six readings: {all:?}"
    );
}

/// The readings of the open window wait, under `ack: on_checkpoint` with no checkpoint
/// soon, until a reload closes it early; their request is answered by the fate of the
/// partial result. Returns that answer's status.
async fn answer_after_reload(dir: &Path, sink: Option<&str>) -> u16 {
    let port = free_port();
    let telemetry = Telemetry::new();
    let ack = "ack: on_checkpoint\n    checkpoint_interval: 1h";
    let before = config(port, dir, "type: session\n    gap: 1m", ack, sink);
    let after = config(port, dir, "type: session\n    gap: 30s", ack, sink);
    let mut topology = RunningTopology::start(&pipeline(&before), &telemetry).unwrap();
    let request = tokio::spawn(async move { post(port, &readings(0, 15)).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!request.is_finished(), "held until a checkpoint");
    topology.reload(pipeline(&after)).await.unwrap();
    let status = request.await.unwrap();
    let _ = topology.stop(Duration::from_secs(5)).await;
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_closed_early_are_acknowledged_once_their_partial_result_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let status = answer_after_reload(dir.path(), None).await;
    assert_eq!(status, 200);
    // Answered after the file sink wrote the result (read right after the answer).
    assert_eq!(
        partial(dir.path()),
        [("2027-01-15T08:00:00Z".to_owned(), true, 15)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_closed_early_are_not_acknowledged_while_their_partial_result_is_unwritten() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens there: the sink retries and never commits.
    let dead = free_port();
    let sink = format!(
        "{{ type: redis, inputs: [agg], url: 'redis://127.0.0.1:{dead}', key: 'window-redefine:{{{{ device_id }}}}' }}"
    );
    let status = answer_after_reload(dir.path(), Some(&sink)).await;
    assert_ne!(
        status, 200,
        "acknowledged though the partial result was never written"
    );
}
