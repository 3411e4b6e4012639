//! The audit log: every kind of change made through the API (and the control socket, and
//! `weir tokens` on a stopped data_dir) is one line in `data_dir/audit/`, with who, role,
//! route, target, outcome, etags and client address, readable at `GET /v1/audit`.

use std::net::SocketAddr;
use std::process::Command;

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{Weir, free_port, lines, metric_in, registry_pipeline};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kind_of_change_is_one_audit_line() {
    let dir = tempfile::tempdir().unwrap();
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let pipeline = registry_pipeline(dir.path(), api, "");
    let weir = Weir::start(dir.path(), &pipeline, api).await;
    let send = |method: Method, path: &str, body: Option<Value>| {
        let mut request = weir.request(method, path);
        if let Some(body) = body {
            request = request.json(&body);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let before_any = jiff::Timestamp::now();
    let (status, device) = send(Method::POST, "/v1/devices", Some(json!({ "id": "pump-1" }))).await;
    assert_eq!(status, 201);
    let first_etag = device["etag"].as_str().unwrap().to_owned();
    let changes: [(Method, &str, Option<Value>); 13] = [
        (
            Method::PATCH,
            "/v1/devices/pump-1",
            Some(json!({ "desired": { "rate": 5 } })),
        ),
        (Method::POST, "/v1/devices/pump-1/disable", None),
        (Method::POST, "/v1/devices/pump-1/enable", None),
        (Method::POST, "/v1/devices/pump-1/rotate-key", None),
        (
            Method::POST,
            "/v1/devices/pump-1/sas-token",
            Some(json!({ "ttl": "1h" })),
        ),
        (
            Method::POST,
            "/v1/devices/import",
            Some(json!([{ "id": "pump-2" }])),
        ),
        (Method::DELETE, "/v1/devices/pump-1", None),
        (
            Method::POST,
            "/v1/enrollment-groups",
            Some(json!({ "id": "plant-3" })),
        ),
        (
            Method::PATCH,
            "/v1/enrollment-groups/plant-3",
            Some(json!({ "tags": { "site": "plant-3" } })),
        ),
        (Method::DELETE, "/v1/enrollment-groups/plant-3", None),
        (Method::POST, "/v1/reload", None),
        (
            Method::POST,
            "/v1/tokens",
            Some(json!({ "name": "viewer", "role": "viewer" })),
        ),
        (Method::DELETE, "/v1/tokens/nobody", None),
    ];
    for (method, path, body) in changes.clone() {
        let (status, answer) = send(method.clone(), path, body).await;
        let expected = if path == "/v1/tokens/nobody" { 404 } else { 0 };
        if expected == 0 {
            assert!(
                (200..300).contains(&status),
                "{method} {path}: {status} {answer}"
            );
        } else {
            assert_eq!(status, expected);
        }
    }
    // A refusal is a line too; a request without a valid token is not.
    let (_, made) = send(Method::GET, "/v1/tokens", None).await;
    assert!(made["tokens"].is_array());
    let viewer = weir.make_token("viewer-2", "viewer").await;
    let refused = reqwest::Client::new()
        .delete(format!("http://{api}/v1/devices/pump-2"))
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let anonymous = reqwest::Client::new()
        .delete(format!("http://{api}/v1/devices/pump-2"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    // `weir reload` on the control socket.
    let output = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["reload", "--wait"])
        .env("WEIR_DATA_DIR", &weir.data_dir)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");

    let (status, audit) = send(Method::GET, "/v1/audit", None).await;
    assert_eq!(status, 200);
    let events = audit["events"].as_array().unwrap().clone();
    let find = |route: &str| -> Value {
        events
            .iter()
            .find(|e| e["route"] == route)
            .unwrap_or_else(|| panic!("no audit line for {route}: {audit}"))
            .clone()
    };
    let created = find("POST /v1/devices");
    assert_eq!(created["who"], "initial-admin");
    assert_eq!(created["role"], "admin");
    assert_eq!(created["target"], "pump-1");
    assert_eq!(created["status"], 201);
    assert_eq!(created["outcome"], "ok");
    assert_eq!(created["client"], "127.0.0.1");
    assert_eq!(created["etag_after"], first_etag.as_str());
    let patched = find("PATCH /v1/devices/{id}");
    assert_eq!(patched["etag_before"], first_etag.as_str());
    assert!(patched["etag_after"].is_string() && patched["etag_after"] != patched["etag_before"]);
    for (method, path, _) in &changes {
        let pattern = path
            .replace("pump-1", "{id}")
            .replace("plant-3", "{id}")
            .replace("nobody", "{name}");
        let event = find(&format!("{method} {pattern}"));
        let time: jiff::Timestamp = event["time"].as_str().unwrap().parse().unwrap();
        assert!(time >= before_any, "{event}");
    }
    assert_eq!(find("POST /v1/enrollment-groups")["target"], "plant-3");
    assert_eq!(find("POST /v1/tokens")["target"], "viewer");
    assert_eq!(find("DELETE /v1/tokens/{name}")["outcome"], "failed");
    let refusal = events
        .iter()
        .find(|e| e["outcome"] == "refused")
        .expect("the refused delete");
    assert_eq!(
        (refusal["who"].as_str(), refusal["target"].as_str()),
        (Some("viewer-2"), Some("pump-2"))
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| e["route"] == "DELETE /v1/devices/{id}")
            .count(),
        2,
        "the anonymous delete is not audited: {audit}"
    );
    let local = events
        .iter()
        .filter(|e| e["route"] == "POST /v1/reload")
        .find(|e| e["who"] == "control-socket");
    assert!(local.is_some(), "{audit}");

    // The file holds the same lines; `since` leaves out what came before it.
    let file = lines(&weir.data_dir.join("audit/audit.jsonl"));
    assert_eq!(file.len(), events.len());
    let since = events[5]["time"].as_str().unwrap();
    let later = weir
        .get_json(&format!("/v1/audit?since={}", since.replace('+', "%2B")))
        .await;
    assert_eq!(later["events"].as_array().unwrap().len(), events.len() - 5);
    let metrics = weir.metrics().await;
    assert_eq!(
        metric_in(
            &metrics,
            "api_audit_events_total",
            &[r#"outcome="refused""#]
        ),
        1.0
    );

    // `weir tokens` on the stopped data_dir writes its line too.
    assert!(weir.terminate().success());
    let output = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["tokens", "revoke", "viewer"])
        .env("WEIR_DATA_DIR", dir.path())
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let file = lines(&dir.path().join("audit/audit.jsonl"));
    let last = file.last().unwrap();
    assert_eq!(last["route"], "weir tokens revoke");
    assert!(
        last["who"].as_str().unwrap().starts_with("local:"),
        "{last}"
    );
}
