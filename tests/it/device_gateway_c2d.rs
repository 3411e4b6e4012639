//! Cloud-to-device messages through the real `weir` binary: queued with
//! `POST /v1/devices/{id}/messages/devicebound` (while the device is away and while it
//! is connected), received by Microsoft's Python SDK in `on_message_received` with their
//! properties, at most 50 waiting per device, kept across a restart.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::azure_sdk::{self, connection_string, gateway_address};
use crate::support::{Weir, free_port, metric_in};

fn write_pipeline(dir: &Path, host: std::net::Ipv4Addr, api: SocketAddr) -> std::path::PathBuf {
    let text = format!(
        "data_dir: '{d}'
api: {{ listen: '{api}' }}
registry: {{}}
sources:
  devices: {gateway}
sinks:
  out: {{ type: file, inputs: [devices], path: '{d}/out.ndjson' }}
",
        d = dir.display(),
        gateway = azure_sdk::gateway_source(dir, host),
    );
    let pipeline = dir.join("pipeline.yaml");
    std::fs::write(&pipeline, text).unwrap();
    pipeline
}

/// Whether `device_gateway_connected_devices` reaches `n` within 30 s.
async fn connected_devices_become(weir: &Weir, n: u32) -> bool {
    for _ in 0..300 {
        let metrics = weir.metrics().await;
        if metric_in(&metrics, "device_gateway_connected_devices", &[]) == f64::from(n) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

async fn queue(weir: &Weir, device: &str, body: Value) -> (u16, Value) {
    let response = weir
        .request(
            Method::POST,
            &format!("/v1/devices/{device}/messages/devicebound"),
        )
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_messages_reach_the_sdks_on_message_received_with_their_properties() {
    let dir = tempfile::tempdir().unwrap();
    let host = gateway_address();
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let pipeline = write_pipeline(dir.path(), host, api);
    let weir = Weir::start(dir.path(), &pipeline, api).await;
    let mut keys = Vec::new();
    for id in ["lamp-1", "lamp-2"] {
        let made = weir
            .request(Method::POST, "/v1/devices")
            .json(&json!({ "id": id }))
            .send()
            .await
            .unwrap();
        assert_eq!(made.status(), 201);
        let made: Value = made.json().await.unwrap();
        keys.push(made["primary_key"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        queue(&weir, "ghost", json!({ "payload": "x" })).await.0,
        404
    );

    // One message while the device is away, one while it listens.
    let (status, first) = queue(
        &weir,
        "lamp-1",
        json!({ "payload": "switch on", "properties": { "colour": "warm white", "level": "80%" } }),
    )
    .await;
    assert_eq!(status, 202, "{first}");
    let (conn, ca, sdk_dir) = (
        connection_string(host, "lamp-1", &keys[0]),
        dir.path().join("ca.pem"),
        dir.path().to_path_buf(),
    );
    let receiver =
        tokio::task::spawn_blocking(move || azure_sdk::run(&sdk_dir, "receive", &conn, &ca, 2));
    assert!(
        connected_devices_become(&weir, 1).await,
        "the SDK connected"
    );
    let (status, second) = queue(&weir, "lamp-1", json!({ "payload": { "dim": 20 } })).await;
    assert_eq!(status, 202, "{second}");

    let said = receiver.await.unwrap();
    let received: Vec<Value> = said
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(received.len(), 2, "{said}");
    assert_eq!(received[0]["data"], "switch on");
    assert_eq!(received[0]["message_id"], first["message_id"]);
    assert_eq!(received[0]["custom_properties"]["colour"], "warm white");
    assert_eq!(received[0]["custom_properties"]["level"], "80%");
    assert_eq!(received[1]["data"], r#"{"dim":20}"#);
    assert_eq!(received[1]["message_id"], second["message_id"]);

    // At most 50 wait for a device; what waits survives a restart.
    for n in 0..50 {
        let (status, _) = queue(&weir, "lamp-2", json!({ "payload": format!("m{n}") })).await;
        assert_eq!(status, 202, "message {n}");
    }
    let (status, full) = queue(&weir, "lamp-2", json!({ "payload": "m50" })).await;
    assert_eq!(status, 409, "{full}");
    let depth = |metrics: &str| metric_in(metrics, "device_gateway_devicebound_messages", &[]);
    assert_eq!(depth(&weir.metrics().await), 50.0);
    let token = weir.token.clone();
    assert!(weir.terminate().success());
    let mut weir = Weir::start(dir.path(), &pipeline, api).await;
    weir.token = token;
    let (conn, ca, sdk_dir) = (
        connection_string(host, "lamp-2", &keys[1]),
        dir.path().join("ca.pem"),
        dir.path().to_path_buf(),
    );
    let said =
        tokio::task::spawn_blocking(move || azure_sdk::run(&sdk_dir, "receive", &conn, &ca, 50))
            .await
            .unwrap();
    let data: Vec<String> = said
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["data"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(data, (0..50).map(|n| format!("m{n}")).collect::<Vec<_>>());
    // Completed by the device's PUBACKs (read before its DISCONNECT): room again.
    assert!(
        connected_devices_become(&weir, 0).await,
        "the SDK disconnected"
    );
    let (status, again) = queue(&weir, "lamp-2", json!({ "payload": "again" })).await;
    assert_eq!(status, 202, "{again}");
    assert_eq!(again["queued"], 1);
    assert_eq!(depth(&weir.metrics().await), 1.0);
    assert!(weir.terminate().success());
}
