//! The `http` source: what devices get back, and what operators see, for good and bad input.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use weir::telemetry::Telemetry;
use weir::topology::RunningTopology;

use crate::support::{eventually, free_port, lines, metric, pipeline};

struct Harness {
    base: String,
    dir: tempfile::TempDir,
    telemetry: Arc<Telemetry>,
    topology: RunningTopology,
    client: reqwest::Client,
}

impl Harness {
    async fn start(extra: &str) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = pipeline(&format!(
            "api: {{ enabled: false }}
sources:
  devices:
    type: http
    listen: 127.0.0.1:{port}
    max_body: 64KiB
{extra}
sinks:
  readings: {{ type: file, inputs: [devices], path: '{d}/readings.ndjson' }}
  rejected: {{ type: file, inputs: [devices.errors], path: '{d}/rejected.ndjson' }}
",
            d = dir.path().display()
        ));
        let telemetry = Telemetry::new();
        let topology = RunningTopology::start(&config, &telemetry).unwrap();
        Harness {
            base: format!("http://127.0.0.1:{port}"),
            dir,
            telemetry,
            topology,
            client: reqwest::Client::new(),
        }
    }

    async fn post(&self, path: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body = response.json::<Value>().await.unwrap_or(Value::Null);
        (status, body)
    }

    fn errors(&self, error_type: &str) -> f64 {
        metric(
            &self.telemetry,
            "component_errors_total",
            &[
                r#"component_id="devices""#,
                &format!(r#"error_type="{error_type}""#),
            ],
        )
    }

    async fn finish(self) -> (Vec<Value>, Vec<Value>) {
        let failures = self.topology.stop(Duration::from_secs(10)).await;
        assert!(failures.is_empty(), "{failures:?}");
        (
            lines(&self.dir.path().join("readings.ndjson")),
            lines(&self.dir.path().join("rejected.ndjson")),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepts_an_object_an_array_and_ndjson() {
    let h = Harness::start("    event_time: ts").await;
    let path = "/v1/devices/engine-7/messages";
    assert_eq!(
        h.post(
            path,
            r#"{"temperature": 71.5, "ts": "2026-11-26T10:00:00Z"}"#
        )
        .await,
        (200, json!({"accepted": 1}))
    );
    assert_eq!(
        h.post(path, r#"[{"temperature": 1}, {"temperature": 2}]"#)
            .await,
        (200, json!({"accepted": 2}))
    );
    assert_eq!(
        h.post(path, "{\"temperature\": 3}\n{\"temperature\": 4}\n")
            .await,
        (200, json!({"accepted": 2}))
    );
    let received = metric(
        &h.telemetry,
        "component_received_events_total",
        &[r#"component_id="devices""#],
    );
    assert_eq!(received, 5.0);
    let listening =
        |t: &Arc<Telemetry>| metric(t, "source_connected", &[r#"component_id="devices""#]);
    assert_eq!(listening(&h.telemetry), 1.0, "listening shows as connected");
    let telemetry = Arc::clone(&h.telemetry);
    let (readings, rejected) = h.finish().await;
    assert_eq!(listening(&telemetry), 0.0, "a stopped source is not");
    assert_eq!(readings.len(), 5);
    assert!(rejected.is_empty());
    assert!(readings.iter().all(|r| r["device_id"] == "engine-7"));
    assert_eq!(
        readings[0]["meta"]["event_time"], "2026-11-26T10:00:00Z",
        "event time comes from `ts`"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_get_400_with_a_reason_are_counted_and_kept() {
    let h = Harness::start("    event_time: ts").await;
    let path = "/v1/devices/engine-7/messages";
    let cases: [(&str, &str); 5] = [
        (r#"{"temperature": "#, "invalid JSON"),
        ("42", "expected an object"),
        (r#"[{"t": 1}, 7]"#, "item 1 of the array"),
        ("", "empty body"),
        (
            r#"{"temperature": 1, "ts": "last tuesday"}"#,
            "expected RFC 3339",
        ),
    ];
    for (body, reason) in cases {
        let (status, answer) = h.post(path, body).await;
        assert_eq!(status, 400, "{body:?}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(reason),
            "{body:?}: {error:?} should say {reason:?}"
        );
    }
    assert_eq!(h.errors("decode_failed"), 5.0);

    // Too large: 413, counted, and the server still serves the next request.
    let (status, answer) = h.post(path, vec![b' '; 65 * 1024]).await;
    assert_eq!(status, 413);
    assert!(answer["error"].as_str().unwrap().contains("max_body"));
    assert_eq!(h.errors("request_invalid"), 1.0);

    // Not the device path: 404; wrong method: 405.
    assert_eq!(h.post("/v1/other", "{}").await.0, 404);
    let get = h
        .client
        .get(format!("{}{path}", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(get.status().as_u16(), 405);

    assert_eq!(
        h.post(path, r#"{"temperature": 20}"#).await,
        (200, json!({"accepted": 1}))
    );
    let ok = metric(
        &h.telemetry,
        "http_server_requests_total",
        &[r#"status="200""#],
    );
    let bad = metric(
        &h.telemetry,
        "http_server_requests_total",
        &[r#"status="400""#],
    );
    assert_eq!((ok, bad), (1.0, 5.0));

    let (readings, rejected) = h.finish().await;
    assert_eq!(
        readings.len(),
        1,
        "no part of a rejected request entered the pipeline"
    );
    assert_eq!(
        rejected.len(),
        5,
        "every undecodable body is on devices.errors"
    );
    assert_eq!(rejected[0]["body"], r#"{"temperature": "#);
    assert_eq!(rejected[0]["device_id"], "engine-7");
    assert!(
        rejected[0]["meta"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("invalid JSON")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_id_can_come_from_a_field() {
    let h = Harness::start("    path: /ingest\n    device_id_field: serial").await;
    assert_eq!(
        h.post(
            "/ingest",
            r#"[{"serial": "a-1", "t": 1}, {"serial": 42, "t": 2}]"#
        )
        .await
        .0,
        200
    );
    let (status, answer) = h.post("/ingest", r#"[{"serial": "a-1"}, {"t": 3}]"#).await;
    assert_eq!(status, 400);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("reading 1: field `serial` (the device id) is missing")
    );
    assert!(eventually(Duration::from_secs(2), || h.errors("decode_failed") == 1.0).await);
    let (readings, _) = h.finish().await;
    let ids: Vec<&str> = readings
        .iter()
        .map(|r| r["device_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a-1", "42"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_frames_are_decoded_by_the_declared_layout() {
    let h = Harness::start(
        "    decoding:\n      codec: binary\n      layout:\n        - { name: temperature, type: i16le, scale: 0.01 }\n        - { name: battery, type: u8 }",
    )
    .await;
    let mut frame = (2150i16).to_le_bytes().to_vec();
    frame.push(87);
    assert_eq!(
        h.post("/v1/devices/node-1/messages", frame).await,
        (200, json!({"accepted": 1}))
    );
    let (status, answer) = h.post("/v1/devices/node-1/messages", vec![1u8]).await;
    assert_eq!(status, 400);
    assert!(
        answer["error"].as_str().unwrap().contains("too short"),
        "{answer}"
    );
    let (readings, rejected) = h.finish().await;
    assert_eq!(readings[0]["temperature"], 21.5);
    assert_eq!(readings[0]["battery"], 87);
    assert_eq!(rejected.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msgpack_bodies_are_decoded() {
    let h = Harness::start("    decoding: { codec: msgpack }").await;
    let body =
        rmp_serde::to_vec_named(&json!([{"temperature": 20.5}, {"temperature": 21.5}])).unwrap();
    assert_eq!(
        h.post("/v1/devices/m/messages", body).await,
        (200, json!({"accepted": 2}))
    );
    let (readings, _) = h.finish().await;
    assert_eq!(readings.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_over_the_decoding_bounds_get_400_and_nothing_lands() {
    let h = Harness::start("    decoding: { max_fields: 3, max_depth: 2 }").await;
    assert_eq!(
        h.post("/v1/devices/d/messages", r#"{"a":1,"b":{"c":2}}"#)
            .await,
        (200, json!({"accepted": 1}))
    );
    let (status, answer) = h
        .post(
            "/v1/devices/d/messages",
            r#"[{"a":1},{"a":1,"b":2,"c":3,"d":4}]"#,
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("max_fields"),
        "{answer}"
    );
    let (status, answer) = h
        .post("/v1/devices/d/messages", r#"{"a":{"b":{"c":1}}}"#)
        .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("max_depth"),
        "{answer}"
    );
    let (readings, rejected) = h.finish().await;
    assert_eq!(readings.len(), 1, "only the reading within the bounds");
    assert_eq!(rejected.len(), 2);
}
