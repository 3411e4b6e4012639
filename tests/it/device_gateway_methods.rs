//! Direct methods through the real `weir` binary, to devices on Microsoft's Python SDK:
//! `POST /v1/devices/{id}/methods/{name}` reaches `on_method_request_received` and
//! answers with the device's `send_method_response` (payload and status); 404 for a
//! device that is not connected, 504 for one that never answers; and a `direct_method`
//! action calls the device from a pipeline, its outcome on `<id>.outcomes`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::azure_device::SdkDevice;
use crate::support::azure_sdk::{self, connection_string, gateway_address};
use crate::support::{Weir, eventually, free_port, lines, metric_in};

const MINUTE: Duration = Duration::from_secs(60);

/// Registers `id`; its primary key.
pub(crate) async fn register(weir: &Weir, id: &str) -> String {
    let made = weir
        .request(Method::POST, "/v1/devices")
        .json(&json!({ "id": id }))
        .send()
        .await
        .unwrap();
    assert_eq!(made.status(), 201);
    let made: Value = made.json().await.unwrap();
    made["primary_key"].as_str().unwrap().to_owned()
}

async fn invoke(weir: &Weir, device: &str, method: &str, body: Value) -> (u16, Value) {
    let response = weir
        .request(
            Method::POST,
            &format!("/v1/devices/{device}/methods/{method}"),
        )
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn write_pipeline(
    dir: &Path,
    host: std::net::Ipv4Addr,
    api: SocketAddr,
    rest: &str,
) -> std::path::PathBuf {
    let text = format!(
        "data_dir: '{d}'
api: {{ listen: '{api}' }}
registry: {{}}
sources:
  devices: {gateway}
{rest}",
        d = dir.display(),
        gateway = azure_sdk::gateway_source(dir, host),
    );
    let pipeline = dir.join("pipeline.yaml");
    std::fs::write(&pipeline, text).unwrap();
    pipeline
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_methods_round_trip_and_answer_404_offline_and_504_when_silent() {
    let dir = tempfile::tempdir().unwrap();
    let host = gateway_address();
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let pipeline = write_pipeline(
        dir.path(),
        host,
        api,
        &format!(
            "sinks:\n  out: {{ type: file, inputs: [devices], path: '{}/out.ndjson' }}\n",
            dir.path().display()
        ),
    );
    let weir = Weir::start(dir.path(), &pipeline, api).await;
    let ca = dir.path().join("ca.pem");
    let answering_key = register(&weir, "pump-m1").await;
    let silent_key = register(&weir, "pump-m2").await;
    register(&weir, "pump-m3").await;

    // Not connected (registered, never came) and unknown: 404, at once.
    let (status, body) = invoke(&weir, "pump-m3", "reboot", json!({ "payload": null })).await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("not connected"),
        "{body}"
    );
    let (status, _) = invoke(&weir, "ghost", "reboot", json!({ "payload": null })).await;
    assert_eq!(status, 404);
    let (status, body) = invoke(
        &weir,
        "pump-m1",
        "reboot",
        json!({ "payload": 1, "response_timeout": 4 }),
    )
    .await;
    assert_eq!(status, 400, "{body}");

    // The device answers with its status and payload; connect_timeout covers its start.
    let conn = connection_string(host, "pump-m1", &answering_key);
    let mut device = SdkDevice::start(dir.path(), "pump-m1", &conn, &ca, &["--methods=207"]).await;
    let (status, body) = invoke(
        &weir,
        "pump-m1",
        "reduce_load",
        json!({ "payload": { "percent": 20, "why": "overheating" }, "connect_timeout": 10 }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], 207);
    assert_eq!(
        body["payload"],
        json!({ "echo": { "percent": 20, "why": "overheating" }, "method": "reduce_load" })
    );
    let seen = device.next_json(MINUTE).await;
    assert_eq!(
        seen,
        json!({ "method": "reduce_load", "payload": { "percent": 20, "why": "overheating" } })
    );

    // A device that never answers: 504 after response_timeout.
    let conn = connection_string(host, "pump-m2", &silent_key);
    let mut silent =
        SdkDevice::start(dir.path(), "pump-m2", &conn, &ca, &["--methods=silent"]).await;
    let started = Instant::now();
    let (status, body) = invoke(
        &weir,
        "pump-m2",
        "reboot",
        json!({ "payload": "now", "response_timeout": 5 }),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(status, 504, "{body}");
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(15),
        "{took:?}"
    );
    assert_eq!(
        silent.next_json(MINUTE).await["method"],
        "reboot",
        "it reached the device"
    );

    // The request went to pump-m2's connection only.
    assert!(device.is_quiet_for(Duration::from_millis(500)).await);

    let metrics = weir.metrics().await;
    assert_eq!(
        metric_in(&metrics, "device_methods_total", &["outcome=\"answered\""]),
        1.0
    );
    assert_eq!(
        metric_in(&metrics, "device_methods_total", &["outcome=\"timeout\""]),
        1.0
    );
    assert_eq!(
        metric_in(
            &metrics,
            "device_methods_total",
            &["outcome=\"not_connected\""]
        ),
        1.0
    );
    assert_eq!(
        metric_in(&metrics, "device_method_latency_seconds_count", &[]),
        1.0
    );

    // Once gone, the device is offline again.
    device.stop().await;
    let (status, body) = invoke(&weir, "pump-m1", "reduce_load", json!({ "payload": {} })).await;
    assert_eq!(status, 404, "{body}");
    silent.stop().await;
    assert!(weir.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_method_action_calls_the_device_that_overheats() {
    let dir = tempfile::tempdir().unwrap();
    let host = gateway_address();
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let d = dir.path().display();
    let rest = format!(
        "transforms:
  hot: {{ type: filter, inputs: [devices], condition: 'temperature > 90' }}
  relay: {{ type: filter, inputs: [devices], condition: 'target is defined' }}
actions:
  cool_down:
    type: direct_method
    inputs: [hot]
    method: reduce_load
    payload: '{{\"from\": {{{{ temperature }}}}}}'
    connect_timeout: 10s
    response_timeout: 20s
  wake:
    type: direct_method
    inputs: [relay]
    device_id: '{{{{ target }}}}'
    method: wake_up
    retry: {{ attempts: 100, initial_backoff: 100ms, max_backoff: 500ms }}
sinks:
  outcomes: {{ type: file, inputs: [cool_down.outcomes, wake.outcomes], path: '{d}/outcomes.ndjson' }}
"
    );
    let pipeline = write_pipeline(dir.path(), host, api, &rest);
    let weir = Weir::start(dir.path(), &pipeline, api).await;
    let key = register(&weir, "oven-a1").await;
    let other_key = register(&weir, "oven-a2").await;
    let conn = connection_string(host, "oven-a1", &key);
    let ca = dir.path().join("ca.pem");
    let mut device = SdkDevice::start(dir.path(), "oven-a1", &conn, &ca, &["--methods=200"]).await;

    device.command(r#"send {"temperature": 70}"#);
    assert_eq!(device.next_json(MINUTE).await, json!({ "sent": true }));
    device.command(r#"send {"temperature": 97.5}"#);
    // The call may reach the device before its PUBACK does.
    let mut said = vec![
        device.next_json(MINUTE).await,
        device.next_json(MINUTE).await,
    ];
    said.sort_by_key(|v| v.to_string());
    assert_eq!(
        said,
        vec![
            json!({ "method": "reduce_load", "payload": { "from": 97.5 } }),
            json!({ "sent": true })
        ]
    );

    let outcomes = dir.path().join("outcomes.ndjson");
    assert!(
        eventually(MINUTE, || !lines(&outcomes).is_empty()).await,
        "an outcome was written"
    );
    let outcome = &lines(&outcomes)[0];
    assert_eq!(outcome["device_id"], "oven-a1", "{outcome}");
    assert_eq!(outcome["method"], "reduce_load");
    assert_eq!(outcome["outcome"], "answered");
    assert_eq!(outcome["status"], 200);
    assert_eq!(
        outcome["payload"],
        json!({ "echo": { "from": 97.5 }, "method": "reduce_load" })
    );
    // Only the hot reading called it.
    assert!(device.is_quiet_for(Duration::from_secs(1)).await);
    assert_eq!(lines(&outcomes).len(), 1);

    // A call to a device that is not connected is retried until it is.
    device.command(r#"send {"temperature": 50, "target": "oven-a2"}"#);
    assert_eq!(device.next_json(MINUTE).await, json!({ "sent": true }));
    let mut retried = false;
    for _ in 0..600 {
        let metrics = weir.metrics().await;
        if metric_in(
            &metrics,
            "device_methods_total",
            &["outcome=\"not_connected\""],
        ) >= 2.0
        {
            retried = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        retried,
        "the call was tried (and retried) while oven-a2 was away"
    );
    assert_eq!(lines(&outcomes).len(), 1, "not given up: no outcome yet");
    let conn = connection_string(host, "oven-a2", &other_key);
    let mut other = SdkDevice::start(dir.path(), "oven-a2", &conn, &ca, &["--methods=202"]).await;
    assert_eq!(
        other.next_json(MINUTE).await,
        json!({ "method": "wake_up", "payload": null })
    );
    assert!(eventually(MINUTE, || lines(&outcomes).len() == 2).await);
    let woken = &lines(&outcomes)[1];
    assert_eq!(woken["device_id"], "oven-a2", "{woken}");
    assert_eq!(woken["outcome"], "answered");
    assert_eq!(woken["status"], 202);
    assert!(
        device.is_quiet_for(Duration::from_millis(200)).await,
        "oven-a1 was not called"
    );
    other.stop().await;
    device.stop().await;
    assert!(weir.terminate().success());
}
