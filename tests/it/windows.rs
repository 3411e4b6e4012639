//! Windows end to end: output shape, late routing, and checkpoints across a restart.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use weir::telemetry::Telemetry;
use weir::topology::RunningTopology;

use crate::support::{free_port, lines, metric, pipeline};

fn window_pipeline(port: u16, dir: &Path) -> String {
    format!(
        "data_dir: '{d}/state'
api: {{ enabled: false }}
sources:
  devices: {{ type: http, listen: 127.0.0.1:{port}, event_time: ts }}
aggregators:
  per_minute:
    type: tumbling
    inputs: [devices]
    size: 1m
    late_events: route
    max_future: 1000d
    idle_timeout: 1h
    aggregates:
      n: count()
      avg: avg(temperature)
      max: max(temperature)
      p50: percentile(temperature, 0.5)
      last: last(temperature)
sinks:
  windows: {{ type: file, inputs: [per_minute], path: '{d}/windows.ndjson' }}
  late: {{ type: file, inputs: [per_minute.late], path: '{d}/late.ndjson' }}
",
        d = dir.display()
    )
}

/// Readings for two devices over five minutes, one every 10 s, in order.
fn readings() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for i in 0..30i64 {
        for device in ["a", "b"] {
            let t = 1_800_000_000_000i64 + i * 10_000;
            let temperature = if device == "a" { 20 + i } else { 100 - i };
            out.push((
                device.to_owned(),
                json!({"ts": t, "temperature": temperature}),
            ));
        }
    }
    out
}

/// The last reading: far ahead, so every earlier window closes.
fn closer(device: &str) -> (String, Value) {
    (
        device.to_owned(),
        json!({"ts": 1_800_000_000_000i64 + 3_600_000, "temperature": 0}),
    )
}

/// Posts each device's readings, in order, as one request (a request waits for the
/// window's checkpoint, so one request per reading would take a second each).
async fn post(port: u16, readings: &[(String, Value)]) {
    let client = reqwest::Client::new();
    let mut devices: Vec<&str> = readings.iter().map(|(d, _)| d.as_str()).collect();
    devices.dedup();
    devices.sort_unstable();
    devices.dedup();
    for device in devices {
        let body: Vec<&Value> = readings
            .iter()
            .filter(|(d, _)| d == device)
            .map(|(_, body)| body)
            .collect();
        let response = client
            .post(format!(
                "http://127.0.0.1:{port}/v1/devices/{device}/messages"
            ))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
}

async fn run(dir: &Path, batches: &[Vec<(String, Value)>]) -> Vec<Value> {
    for batch in batches {
        let port = free_port();
        let telemetry = Telemetry::new();
        let topology =
            RunningTopology::start(&pipeline(&window_pipeline(port, dir)), &telemetry).unwrap();
        post(port, batch).await;
        let failures = topology.stop(Duration::from_secs(10)).await;
        assert!(failures.is_empty(), "{failures:?}");
    }
    let mut windows: Vec<Value> = lines(&dir.join("windows.ndjson"))
        .into_iter()
        .map(|mut w| {
            w.as_object_mut().unwrap().remove("meta");
            w
        })
        .collect();
    windows.sort_by_key(|w| {
        (
            w["device_id"].as_str().unwrap().to_owned(),
            w["window_start"].as_str().unwrap().to_owned(),
        )
    });
    windows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_open_windows_with_the_same_results() {
    let mut all = readings();
    all.push(closer("a"));
    all.push(closer("b"));

    let uninterrupted = tempfile::tempdir().unwrap();
    let expected = run(uninterrupted.path(), std::slice::from_ref(&all)).await;
    assert_eq!(
        expected.len(),
        10,
        "5 one-minute windows for each of 2 devices: {expected:#?}"
    );
    let first = &expected[0];
    assert_eq!(first["device_id"], "a");
    assert_eq!(first["window_start"], "2027-01-15T08:00:00Z");
    assert_eq!(first["window_end"], "2027-01-15T08:01:00Z");
    assert_eq!(first["n"], 6);
    assert_eq!(first["avg"], 22.5);
    assert_eq!(first["max"], 25.0);
    assert_eq!(first["last"], 25);

    // Stop in the middle of a window (after 25 s of the third minute), then resume.
    let restarted = tempfile::tempdir().unwrap();
    let (before, after) = all.split_at(27 * 2 - 1);
    let resumed = run(restarted.path(), &[before.to_vec(), after.to_vec()]).await;
    assert_eq!(resumed, expected, "the restart changed no window");
    // The last run checkpointed the windows its closing readings opened.
    let checkpoint =
        std::fs::read_to_string(restarted.path().join("state/aggregators/per_minute.json"))
            .unwrap();
    assert!(checkpoint.contains("\"groups\""), "{checkpoint}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_readings_are_routed_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let telemetry = Telemetry::new();
    let topology =
        RunningTopology::start(&pipeline(&window_pipeline(port, dir.path())), &telemetry).unwrap();
    let t0 = 1_800_000_000_000i64;
    post(
        port,
        &[
            ("a".into(), json!({"ts": t0 + 61_000, "temperature": 1})),
            ("a".into(), json!({"ts": t0 + 1_000, "temperature": 2})),
        ],
    )
    .await;
    let _ = topology.stop(Duration::from_secs(10)).await;
    let late = lines(&dir.path().join("late.ndjson"));
    assert_eq!(late.len(), 1);
    assert_eq!(late[0]["temperature"], 2);
    let routed = metric(
        &telemetry,
        "aggregator_out_of_bounds_events_total",
        &[r#"bound="late""#, r#"action="route""#],
    );
    assert_eq!(routed, 1.0);
}
