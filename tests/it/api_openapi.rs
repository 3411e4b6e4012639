//! The admin API's OpenAPI document: committed fresh, served at `/v1/openapi.json`, and
//! true of a live weir, as schemathesis (from PyPI) finds by calling every operation with
//! data it makes from the document.

use std::net::SocketAddr;
use std::process::Command;

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::azure_sdk::{gateway_address, gateway_source};
use crate::support::{Weir, free_port, tools};

#[test]
fn committed_document_is_current() {
    let committed = std::fs::read_to_string("schemas/admin-api.openapi.json").unwrap_or_default();
    assert!(
        committed == weir::api::openapi::document_json(),
        "schemas/admin-api.openapi.json is stale: run \
         `cargo run -- schema --openapi -o schemas/admin-api.openapi.json`"
    );
}

/// A weir with a registry, an alarm raised for each of its simulated devices (for the
/// alarm routes to find) and a device gateway (for cloud-to-device messages to queue);
/// its limiter lets a fuzzer's failed authentications through.
async fn start(dir: &std::path::Path) -> Weir {
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let gateway = gateway_source(dir, gateway_address());
    let pipeline = dir.join("pipeline.yaml");
    let text = format!(
        "data_dir: '{d}'
api: {{ listen: '{api}', auth: {{ failures_per_minute: 1000000 }} }}
registry: {{ path: registry.redb }}
sources:
  fleet: {{ type: simulator, devices: 3, rate: 5 }}
  devices: {gateway}
transforms:
  hot: {{ type: alarm, inputs: [fleet], raise: 'temperature > -1000', clear: 'temperature < -1000' }}
sinks:
  out: {{ type: blackhole, inputs: [hot, devices] }}
",
        d = dir.display(),
    );
    std::fs::write(&pipeline, text).unwrap();
    Weir::start(dir, &pipeline, api).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_is_served_and_the_cli_writes_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let weir = start(dir.path()).await;
    let served = weir
        .request(Method::GET, "/v1/openapi.json")
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
    assert_eq!(served.headers()["content-type"], "application/json");
    let served: Value = served.json().await.unwrap();
    assert_eq!(served["openapi"], "3.1.0");
    assert!(served["paths"]["/v1/devices/{id}"]["patch"].is_object());
    // A viewer may read it; nobody without a token.
    let viewer = weir.make_token("openapi-viewer", "viewer").await;
    let url = format!("http://{}/v1/openapi.json", weir.api);
    let http = reqwest::Client::new();
    let as_viewer = http.get(&url).bearer_auth(&viewer).send().await.unwrap();
    assert_eq!(as_viewer.status(), 200);
    assert_eq!(http.get(&url).send().await.unwrap().status(), 401);

    let file = dir.path().join("admin-api.openapi.json");
    let written = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["schema", "--openapi", "-o"])
        .arg(&file)
        .status()
        .unwrap();
    assert!(written.success());
    let written: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(written, served);
}

/// axum's own rejections (an unknown path, a wrong method, a query or body it cannot
/// read) are answered as every other error: `{"error": "..."}`, as the document says;
/// and so is a SAS token that would expire after the end of `u64` seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rejection_is_a_json_error() {
    let dir = tempfile::tempdir().unwrap();
    let weir = start(dir.path()).await;
    let too_large = "x".repeat(3 << 20);
    let made = weir.request(Method::POST, "/v1/devices");
    let made = made.json(&json!({ "id": "pump-1" })).send().await.unwrap();
    assert_eq!(made.status(), 201);
    // A SAS token valid for longer than a u64 of seconds reaches: refused, not a panic.
    let forever = r#"{"ttl": "213503982334601d"}"#;
    let cases = [
        (Method::GET, "/v1/nothing-here", None, 404),
        (Method::PUT, "/v1/devices", None, 405),
        (Method::GET, "/v1/alarms?severity=dreadful", None, 400),
        (Method::GET, "/v1/audit?limit=many", None, 400),
        (Method::GET, "/v1/audit?unknown=1", None, 400),
        (Method::POST, "/v1/reload?wait=perhaps", None, 400),
        (Method::POST, "/v1/devices", Some("{not json"), 400),
        (Method::POST, "/v1/devices", Some(too_large.as_str()), 413),
        (
            Method::POST,
            "/v1/devices/pump-1/sas-token",
            Some(forever),
            400,
        ),
    ];
    for (method, path, body, status) in cases {
        let mut request = weir.request(method.clone(), path);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_owned());
        }
        let answer = request.send().await.unwrap();
        assert_eq!(answer.status(), status, "{method} {path}");
        let content_type = answer.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(content_type, "application/json", "{method} {path}");
        let error: Value = answer.json().await.unwrap();
        assert!(
            error["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{method} {path}: {error}"
        );
    }
}

/// schemathesis calls every operation (but those that would end its own run: revoking
/// tokens, which may be its own, and reloading; direct methods, which may wait minutes
/// for a device; and the tap, whose answer never ends) with examples made from the document,
/// valid and not, as the admin; no answer may be a 5xx, or have a status, a content type
/// or a body the document does not give that operation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_undocumented_answer() {
    let dir = tempfile::tempdir().unwrap();
    let weir = start(dir.path()).await;
    // Something to find for the operations on one record.
    for (path, body) in [
        (
            "/v1/devices",
            json!({ "id": "pump-1", "tags": { "site": "plant-3" } }),
        ),
        ("/v1/enrollment-groups", json!({ "id": "plant-3" })),
    ] {
        let made = weir.request(Method::POST, path).json(&body).send().await;
        assert_eq!(made.unwrap().status(), 201, "POST {path}");
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while weir.get_json("/v1/alarms").await["alarms"] == json!([]) {
        assert!(std::time::Instant::now() < deadline, "no alarm was raised");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let bin = tools::schemathesis();
    let location = format!("http://{}/v1/openapi.json", weir.api);
    let output = Command::new(bin)
        .arg("run")
        .arg(&location)
        .args(["--header", &format!("Authorization: Bearer {}", weir.token)])
        .args([
            "--checks",
            "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance",
        ])
        .args(["--exclude-operation-id", "revoke_token"])
        .args(["--exclude-operation-id", "reload"])
        // A direct method waits up to its `connect_timeout` (300 s at most, by design) for a
        // device to connect; `device_gateway_methods` holds its answers to the document.
        .args(["--exclude-operation-id", "invoke_device_method"])
        .args(["--exclude-operation-id", "tap"])
        .args(["--phases", "examples,coverage,fuzzing"])
        // Enough to reach every status an operation has; a run takes about a minute.
        .args(["--max-examples", "25", "--seed", "15", "--workers", "2"])
        .args(["--request-timeout", "20"])
        .current_dir(dir.path())
        .env("NO_COLOR", "1")
        .output()
        .expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let summary = stdout
        .rfind("SUMMARY")
        .map_or(stdout.as_ref(), |at| &stdout[at..]);
    println!("{summary}");
    assert!(
        output.status.success(),
        "schemathesis found failures:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // The run went as planned: both exclusions matched, and it ended as the admin still.
    for warning in ["Unmatched filters", "Authentication failed"] {
        assert!(!stdout.contains(warning), "{warning}:\n{stdout}");
    }
    let tokens = weir
        .request(Method::GET, "/v1/tokens")
        .send()
        .await
        .unwrap();
    assert_eq!(tokens.status(), 200, "the admin token outlived the run");
}
