//! The admin API refuses what a web page could send on an operator's behalf: a form or
//! `text/plain` POST, a request from another page's `Origin`, and a request naming
//! another host (DNS rebinding) — through the real `weir` binary, with a device key at
//! stake.

use std::net::SocketAddr;

use serde_json::{Value, json};

use crate::support::{Weir, free_port, registry_pipeline};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_rebound_requests_are_refused_and_ordinary_ones_served() {
    let dir = tempfile::tempdir().unwrap();
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let pipeline = registry_pipeline(dir.path(), api, "allowed_hosts: [weir.test]");
    let weir = Weir::start(dir.path(), &pipeline, api).await;
    // Every request carries the admin token: what is refused here is refused whoever asks.
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {}", weir.token).parse().unwrap(),
    );
    let http = reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap();
    let devices = format!("http://{api}/v1/devices");
    let body = json!({ "id": "pump-1" }).to_string();

    // A form a page submits: text/plain (or a form encoding), no preflight.
    for content_type in ["text/plain", "application/x-www-form-urlencoded"] {
        let forged = http
            .post(&devices)
            .header("content-type", content_type)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(forged.status(), 415, "{content_type}");
    }
    // A script on another page, even with the right content type.
    let cross = http
        .post(&devices)
        .header("origin", "https://evil.example")
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status(), 403);
    // A page whose own name was made to resolve to this API reads nothing.
    let rebound = http
        .get(&devices)
        .header("host", format!("evil.example:{}", api.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(rebound.status(), 403);
    let answer: Value = rebound.json().await.unwrap();
    assert!(answer["error"].as_str().unwrap().contains("allowed_hosts"));
    assert!(
        http.get(&devices)
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()["devices"]
            .as_array()
            .unwrap()
            .is_empty(),
        "none of the refused requests created the device"
    );

    // What the CLI, curl and the API's own pages send is served.
    let created = http
        .post(&devices)
        .header("origin", format!("http://{api}"))
        .json(&json!({ "id": "pump-1" }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let named = http
        .get(format!("{devices}/pump-1"))
        .header("host", "weir.test")
        .send()
        .await
        .unwrap();
    assert_eq!(named.status(), 200, "a configured name is allowed");
    let reload = http
        .post(format!("http://{api}/v1/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(reload.status(), 200, "an empty POST needs no content type");
}
