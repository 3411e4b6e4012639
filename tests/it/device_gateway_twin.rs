//! Device twins through the real `weir` binary, with Microsoft's Python SDK as the
//! device: `get_twin()` returns the registry's desired and reported properties with their
//! `$version`s; `patch_twin_reported_properties` lands in the registry (`null` deletes);
//! a desired patch made with `PATCH /v1/devices/{id}/twin/desired` reaches
//! `on_twin_desired_properties_patch_received` with its `$version`; versions survive a
//! restart.

use std::net::SocketAddr;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::azure_device::SdkDevice;
use crate::support::azure_sdk::{self, connection_string, gateway_address};
use crate::support::{Weir, eventually, free_port, lines, metric_in};

const MINUTE: Duration = Duration::from_secs(60);

async fn twin(weir: &Weir, device: &str) -> Value {
    weir.get_json(&format!("/v1/devices/{device}/twin")).await
}

async fn patch_desired(
    weir: &Weir,
    device: &str,
    patch: Value,
    if_match: Option<&str>,
) -> (u16, Value) {
    let mut request = weir
        .request(Method::PATCH, &format!("/v1/devices/{device}/twin/desired"))
        .json(&patch);
    if let Some(etag) = if_match {
        request = request.header("If-Match", etag);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twins_reach_the_sdk_and_its_reports_land_in_the_registry_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let host = gateway_address();
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let text = format!(
        "data_dir: '{d}'
api: {{ listen: '{api}' }}
registry: {{}}
sources:
  devices: {gateway}
  lifecycle: {{ type: device_registry, events: [updated] }}
sinks:
  out: {{ type: file, inputs: [devices], path: '{d}/out.ndjson' }}
  changes: {{ type: file, inputs: [lifecycle], path: '{d}/changes.ndjson' }}
",
        d = dir.path().display(),
        gateway = azure_sdk::gateway_source(dir.path(), host),
    );
    let pipeline = dir.path().join("pipeline.yaml");
    std::fs::write(&pipeline, text).unwrap();
    let weir = Weir::start(dir.path(), &pipeline, api).await;
    let made = weir
        .request(Method::POST, "/v1/devices")
        .json(&json!({ "id": "thermo-t1", "desired": { "setpoint": 21 } }))
        .send()
        .await
        .unwrap();
    assert_eq!(made.status(), 201);
    let made: Value = made.json().await.unwrap();
    let key = made["primary_key"].as_str().unwrap().to_owned();
    assert_eq!(
        twin(&weir, "thermo-t1").await,
        json!({ "desired": { "setpoint": 21, "$version": 1 }, "reported": { "$version": 1 } })
    );

    let conn = connection_string(host, "thermo-t1", &key);
    let ca = dir.path().join("ca.pem");
    let mut device = SdkDevice::start(dir.path(), "thermo-t1", &conn, &ca, &["--desired"]).await;

    // The device reports; `null` deletes.
    device.command(r#"report {"firmware": "2.1.0", "sensors": {"inner": "ok", "outer": "ok"}}"#);
    assert_eq!(device.next_json(MINUTE).await, json!({ "reported": true }));
    device.command(r#"report {"sensors": {"outer": null}, "battery": 88}"#);
    assert_eq!(device.next_json(MINUTE).await, json!({ "reported": true }));
    assert_eq!(
        twin(&weir, "thermo-t1").await["reported"],
        json!({ "firmware": "2.1.0", "sensors": { "inner": "ok" }, "battery": 88, "$version": 3 })
    );
    let record = weir.get_json("/v1/devices/thermo-t1").await;
    assert_eq!(record["reported"]["battery"], 88, "{record}");
    assert_eq!(record["reported_version"], 3);
    // Each report is the registry's lifecycle event `updated`.
    let changes = dir.path().join("changes.ndjson");
    assert!(eventually(MINUTE, || lines(&changes).len() >= 2).await);
    let last = &lines(&changes)[1];
    assert_eq!(last["event"], "updated", "{last}");
    assert_eq!(last["device"]["reported"]["battery"], 88, "{last}");
    assert_eq!(last["device"]["reported_version"], 3, "{last}");
    device.command(r#"report {"firmware": null}"#);
    assert_eq!(device.next_json(MINUTE).await, json!({ "reported": true }));

    // An operator's desired patch reaches the device with its version; If-Match holds.
    let (status, body) = patch_desired(
        &weir,
        "thermo-t1",
        json!({ "setpoint": 19 }),
        Some("\"stale\""),
    )
    .await;
    assert_eq!(status, 412, "{body}");
    let (status, body) = patch_desired(
        &weir,
        "thermo-t1",
        json!({ "setpoint": 19, "mode": { "eco": true } }),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["desired"]["$version"], 2);
    let pushed = device.next_json(MINUTE).await;
    assert_eq!(
        pushed,
        json!({ "desired_patch": { "setpoint": 19, "mode": { "eco": true }, "$version": 2 } })
    );
    let (status, _) = patch_desired(&weir, "thermo-t1", json!({ "mode": null }), None).await;
    assert_eq!(status, 200);
    assert_eq!(
        device.next_json(MINUTE).await,
        json!({ "desired_patch": { "mode": null, "$version": 3 } })
    );

    // The SDK's own view of the twin.
    device.command("get");
    let seen = device.next_json(MINUTE).await;
    assert_eq!(
        seen["twin"],
        json!({
            "desired": { "setpoint": 19, "$version": 3 },
            "reported": { "sensors": { "inner": "ok" }, "battery": 88, "$version": 4 },
        }),
        "{seen}"
    );
    let metrics = weir.metrics().await;
    assert_eq!(
        metric_in(
            &metrics,
            "device_twin_updates_total",
            &["kind=\"reported\""]
        ),
        3.0
    );
    assert_eq!(
        metric_in(&metrics, "device_twin_updates_total", &["kind=\"desired\""]),
        2.0
    );
    device.stop().await;

    // Versions survive a restart; the device sees the same twin.
    let token = weir.token.clone();
    assert!(weir.terminate().success());
    let mut weir = Weir::start(dir.path(), &pipeline, api).await;
    weir.token = token;
    assert_eq!(
        twin(&weir, "thermo-t1").await,
        json!({
            "desired": { "setpoint": 19, "$version": 3 },
            "reported": { "sensors": { "inner": "ok" }, "battery": 88, "$version": 4 },
        })
    );
    let mut device = SdkDevice::start(dir.path(), "thermo-t1", &conn, &ca, &[]).await;
    device.command("get");
    assert_eq!(
        device.next_json(MINUTE).await["twin"]["reported"]["$version"],
        4
    );
    device.stop().await;
    assert!(weir.terminate().success());
}
