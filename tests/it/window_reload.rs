//! A reload that changes a window aggregator: its open windows are carried over when the
//! new definition can hold them, and closed early (`partial: true`) when it cannot; never
//! dropped.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use weir::telemetry::Telemetry;
use weir::topology::RunningTopology;

use crate::support::{free_port, lines, pipeline};

/// Tumbling windows of `size`; `idle_timeout` is not part of the window definition. The
/// readings are acknowledged on receipt and the periodic checkpoint is far away, so only
/// the handover at the reload can carry the open windows.
fn windows(port: u16, dir: &Path, size: &str, idle_timeout: &str) -> String {
    format!(
        "data_dir: '{d}/state'
api: {{ enabled: false }}
sources:
  devices: {{ type: http, listen: 127.0.0.1:{port}, event_time: ts }}
aggregators:
  per_minute:
    type: tumbling
    inputs: [devices]
    size: {size}
    max_future: 1000d
    idle_timeout: {idle_timeout}
    ack: on_receive
    checkpoint_interval: 1h
    aggregates:
      n: count()
      sum: sum(x)
sinks:
  windows: {{ type: file, inputs: [per_minute], path: '{d}/windows.ndjson' }}
",
        d = dir.display()
    )
}

const T0: i64 = 1_800_000_000_000;

/// One reading of device `a` every 10 s for `from..to` (in tens of seconds), `x` = 1.
fn readings(from: i64, to: i64) -> Vec<Value> {
    (from..to)
        .map(|i| json!({ "ts": T0 + i * 10_000, "x": 1 }))
        .collect()
}

/// Posts the readings in one request.
async fn post(port: u16, readings: &[Value]) {
    let response = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/v1/devices/a/messages"))
        .json(readings)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

/// The windows written so far, by (start, partial), without metadata.
pub fn written(dir: &Path) -> Vec<(String, bool, u64)> {
    let mut out: Vec<(String, bool, u64)> = lines(&dir.join("windows.ndjson"))
        .into_iter()
        .map(|w| {
            (
                w["window_start"].as_str().unwrap().to_owned(),
                w.get("partial").and_then(Value::as_bool).unwrap_or(false),
                w["n"].as_u64().unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

/// Runs one-minute windows, posts two and a half minutes of readings (two windows close,
/// the third is open), then reloads with windows of `size` and `idle_timeout`.
async fn reload_mid_window(
    port: u16,
    dir: &Path,
    size: &str,
    idle_timeout: &str,
) -> RunningTopology {
    let telemetry = Telemetry::new();
    let mut topology =
        RunningTopology::start(&pipeline(&windows(port, dir, "1m", "1h")), &telemetry).unwrap();
    post(port, &readings(0, 15)).await;
    topology
        .reload(pipeline(&windows(port, dir, size, idle_timeout)))
        .await
        .unwrap();
    topology
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_definition_carries_open_windows_over_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let topology = reload_mid_window(port, dir.path(), "1m", "2h").await;
    post(port, &readings(15, 18)).await;
    // A reading far ahead closes the third window.
    post(port, &[json!({ "ts": T0 + 3_600_000, "x": 1 })]).await;
    let failures = topology.stop(Duration::from_secs(10)).await;
    assert!(failures.is_empty(), "{failures:?}");

    assert_eq!(
        written(dir.path()),
        [
            ("2027-01-15T08:00:00Z".to_owned(), false, 6),
            ("2027-01-15T08:01:00Z".to_owned(), false, 6),
            // 3 readings before the reload and 3 after: one window, nothing lost or split.
            ("2027-01-15T08:02:00Z".to_owned(), false, 6),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_definition_closes_open_windows_early_as_partial_results() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let topology = reload_mid_window(port, dir.path(), "30s", "1h").await;
    // The old instance has drained once the new one folds readings: wait for its output.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while written(dir.path()).len() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            written(dir.path())
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let failures = topology.stop(Duration::from_secs(10)).await;
    assert!(failures.is_empty(), "{failures:?}");

    assert_eq!(
        written(dir.path()),
        [
            ("2027-01-15T08:00:00Z".to_owned(), false, 6),
            ("2027-01-15T08:01:00Z".to_owned(), false, 6),
            // The window the new definition cannot take over: closed early, marked.
            ("2027-01-15T08:02:00Z".to_owned(), true, 3),
        ]
    );
    let checkpoint = dir.path().join("state/aggregators/per_minute.json");
    let left = std::fs::read_to_string(&checkpoint).unwrap_or_default();
    assert!(
        !left.contains("1800000120000") && !left.contains("08:02"),
        "the closed window is not also checkpointed: {left}"
    );
}
