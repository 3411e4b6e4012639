//! The registry end to end, through the real `weir` binary: its admin API, the
//! `weir devices` CLI, SAS authentication at the `http` source, group-derived
//! registration, `enrich` and the `device_registry` source.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{Weir, eventually, free_port, lines, metric_in};

struct Fleet {
    weir: Weir,
    dir: tempfile::TempDir,
    ingest: String,
    http: reqwest::Client,
}

impl Fleet {
    async fn start() -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let port = free_port();
        let text = format!(
            "data_dir: '{d}'
api: {{ listen: '{api}' }}
registry: {{ path: registry.redb }}
sources:
  devices: {{ type: http, listen: '127.0.0.1:{port}', auth: sas }}
  lifecycle: {{ type: device_registry }}
transforms:
  enriched: {{ type: enrich, inputs: [devices], on_unknown_device: route }}
  hot: {{ type: filter, inputs: [enriched], condition: 'temperature > device.max_temp' }}
sinks:
  out: {{ type: file, inputs: [enriched], path: '{d}/out.ndjson' }}
  hot_out: {{ type: file, inputs: [hot], path: '{d}/hot.ndjson' }}
  life: {{ type: file, inputs: [lifecycle], path: '{d}/life.ndjson' }}
  unknown: {{ type: file, inputs: [enriched.unknown], path: '{d}/unknown.ndjson' }}
",
            d = dir.path().display()
        );
        let pipeline = dir.path().join("pipeline.yaml");
        std::fs::write(&pipeline, text).unwrap();
        let weir = Weir::start(dir.path(), &pipeline, api).await;
        Fleet {
            weir,
            ingest: format!("http://127.0.0.1:{port}/v1/devices"),
            dir,
            http: reqwest::Client::new(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs `weir devices ARGS` against this weir; stdout on success.
    fn cli(&self, args: &[&str]) -> Result<String, String> {
        cli(&self.weir, args)
    }

    /// POSTs one reading of `device` with `authorization`; the status.
    async fn send(&self, device: &str, authorization: Option<&str>, body: Value) -> u16 {
        let mut request = self
            .http
            .post(format!("{}/{device}/messages", self.ingest))
            .json(&body);
        if let Some(token) = authorization {
            request = request.header("Authorization", token);
        }
        request.send().await.unwrap().status().as_u16()
    }

    async fn api(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.weir.request(method, path)
    }
}

fn cli(weir: &Weir, args: &[&str]) -> Result<String, String> {
    let output = Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("devices")
        .arg("--api")
        .arg(format!("http://{}", weir.api))
        .env("WEIR_TOKEN", &weir.token)
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    match output.status.success() {
        true => Ok(stdout),
        false => Err(format!(
            "{stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        )),
    }
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sas_tokens_gate_the_http_source() {
    let fleet = Fleet::start().await;
    let device = json(
        &fleet
            .cli(&[
                "add",
                "dev-1",
                "--tag",
                "max_temp=95",
                "--tag",
                "site=plant-3",
            ])
            .unwrap(),
    );
    assert_eq!(device["tags"]["max_temp"], 95);
    let primary = fleet.cli(&["token", "dev-1", "--ttl", "1h"]).unwrap();
    let secondary = fleet
        .cli(&["token", "dev-1", "--key", "secondary"])
        .unwrap();
    let primary = primary.trim();
    let reading = json!({"temperature": 80});

    assert_eq!(
        fleet.send("dev-1", Some(primary), reading.clone()).await,
        200
    );
    assert_eq!(
        fleet
            .send("dev-1", Some(secondary.trim()), reading.clone())
            .await,
        200
    );
    // Missing, for another device, tampered, malformed, expired.
    assert_eq!(fleet.send("dev-1", None, reading.clone()).await, 401);
    assert_eq!(
        fleet.send("dev-2", Some(primary), reading.clone()).await,
        401
    );
    let tampered = primary.replace("devices%2Fdev-1", "devices%2Fdev-2");
    assert_eq!(
        fleet.send("dev-2", Some(&tampered), reading.clone()).await,
        401
    );
    assert_eq!(
        fleet
            .send("dev-1", Some("SharedAccessSignature sr=x"), reading.clone())
            .await,
        401
    );
    let key = device["primary_key"].as_str().unwrap();
    let expired = weir::registry::sas::sign(
        "devices/dev-1",
        &weir::registry::keys::decode(key).unwrap(),
        1_000_000,
    );
    assert_eq!(
        fleet.send("dev-1", Some(&expired), reading.clone()).await,
        401
    );

    // Disabled: refused with 403 even with a good token; enabled again: accepted.
    fleet.cli(&["disable", "dev-1"]).unwrap();
    assert_eq!(
        fleet.send("dev-1", Some(primary), reading.clone()).await,
        403
    );
    fleet.cli(&["enable", "dev-1"]).unwrap();
    assert_eq!(
        fleet.send("dev-1", Some(primary), reading.clone()).await,
        200
    );

    // Rotation: the old primary stops working, the old secondary is the new primary.
    fleet.cli(&["rotate-key", "dev-1"]).unwrap();
    assert_eq!(
        fleet.send("dev-1", Some(primary), reading.clone()).await,
        401
    );
    assert_eq!(
        fleet
            .send("dev-1", Some(secondary.trim()), reading.clone())
            .await,
        200
    );

    // An unknown device and a known one with a bad token get the same answer.
    let answer = |device: &str, token: &str| {
        let request = fleet
            .http
            .post(format!("{}/{device}/messages", fleet.ingest))
            .header("authorization", token.to_owned())
            .json(&reading);
        async move {
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    let unknown = answer("ghost", &tampered.replace("dev-2", "ghost")).await;
    let known = answer("dev-2", &tampered).await;
    assert_eq!(unknown.0, 401);
    assert_eq!(unknown, known, "nothing tells whether a device exists");
    assert!(
        !known.1.contains("dev-2") && !known.1.contains("signature"),
        "{}",
        known.1
    );

    let metrics = fleet.weir.metrics().await;
    let failures = |reason: &str| {
        metric_in(
            &metrics,
            "registry_auth_failures_total",
            &[&format!(r#"reason="{reason}""#)],
        )
    };
    assert_eq!(failures("missing_token"), 1.0);
    assert_eq!(failures("disabled"), 1.0);
    assert_eq!(failures("malformed_token"), 1.0);
    assert_eq!(failures("expired"), 1.0);
    assert!(failures("bad_signature") >= 1.0);
    assert_eq!(
        metric_in(&metrics, "http_server_requests_total", &[r#"status="401""#]),
        8.0
    );
    assert_eq!(
        metric_in(&metrics, "http_server_requests_total", &[r#"status="403""#]),
        1.0
    );
    // Everything accepted went through enrich and carries the record.
    let out = fleet.path("out.ndjson");
    assert!(eventually(Duration::from_secs(5), || lines(&out).len() == 4).await);
    assert!(lines(&out).iter().all(|e| e["device"]["site"] == "plant-3"));
    // Lifecycle: created, disabled, enabled, key_rotated.
    let life = fleet.path("life.ndjson");
    assert!(eventually(Duration::from_secs(5), || lines(&life).len() == 4).await);
    let kinds: Vec<Value> = lines(&life).iter().map(|e| e["event"].clone()).collect();
    assert_eq!(kinds, ["created", "disabled", "enabled", "key_rotated"]);
    assert!(lines(&life)[0]["device"].get("primary_key").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrichment_sees_an_update_within_one_second_and_etags_guard_updates() {
    let fleet = Fleet::start().await;
    fleet
        .cli(&["add", "engine-7", "--tag", "max_temp=95"])
        .unwrap();
    let token = fleet.cli(&["token", "engine-7"]).unwrap();
    let token = token.trim();
    assert_eq!(
        fleet
            .send(
                "engine-7",
                Some(token),
                json!({"temperature": 100, "seq": 1})
            )
            .await,
        200
    );
    let hot = fleet.path("hot.ndjson");
    assert!(eventually(Duration::from_secs(5), || lines(&hot).len() == 1).await);

    let current = fleet
        .api(reqwest::Method::GET, "/v1/devices/engine-7")
        .await
        .send()
        .await
        .unwrap();
    let etag = current.headers()["etag"].to_str().unwrap().to_owned();
    let patch = json!({"tags": {"max_temp": 120}});
    let changed = Instant::now();
    let response = fleet
        .api(reqwest::Method::PATCH, "/v1/devices/engine-7")
        .await
        .header("If-Match", &etag)
        .json(&patch)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // The very next reading sees the new record (`ack: on_commit`: the 200 comes after the
    // file sink wrote it).
    assert_eq!(
        fleet
            .send(
                "engine-7",
                Some(token),
                json!({"temperature": 100, "seq": 2})
            )
            .await,
        200
    );
    let out = lines(&fleet.path("out.ndjson"));
    let second = out.iter().find(|e| e["seq"] == 2).expect("second reading");
    assert_eq!(second["device"]["max_temp"], 120);
    assert!(
        changed.elapsed() < Duration::from_secs(1),
        "{:?}",
        changed.elapsed()
    );
    assert_eq!(lines(&hot).len(), 1, "100 is not above 120");

    // The etag used is stale now: 412, and nothing changes.
    let stale = fleet
        .api(reqwest::Method::PATCH, "/v1/devices/engine-7")
        .await
        .header("If-Match", &etag)
        .json(&json!({"tags": {"max_temp": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 412);
    let record = json(&fleet.cli(&["get", "engine-7"]).unwrap());
    assert_eq!(record["tags"]["max_temp"], 120);
    assert!(
        fleet
            .cli(&["rm", "engine-7", "--if-match", &etag])
            .unwrap_err()
            .contains("412")
    );
    fleet.cli(&["rm", "engine-7"]).unwrap();
    assert!(fleet.cli(&["get", "engine-7"]).unwrap_err().contains("404"));
    // A deleted device is unknown: its token no longer opens the source.
    assert_eq!(
        fleet
            .send("engine-7", Some(token), json!({"temperature": 1}))
            .await,
        401
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_with_a_group_derived_key_registers_itself() {
    let fleet = Fleet::start().await;
    let group = fleet
        .api(reqwest::Method::POST, "/v1/enrollment-groups")
        .await
        .json(&json!({"id": "plant-3", "tags": {"site": "plant-3", "max_temp": 90}}))
        .send()
        .await
        .unwrap();
    assert_eq!(group.status(), 201);
    let group: Value = group.json().await.unwrap();
    let group_key = weir::registry::keys::decode(group["key"].as_str().unwrap()).unwrap();
    // What a factory does: derive the device's key from the group key, flash it.
    let derived = weir::registry::keys::derive(&group_key, "sensor-42");
    let token = fleet
        .cli(&["token", "sensor-42", "--with-key", &derived])
        .unwrap();
    assert!(
        fleet.cli(&["get", "sensor-42"]).is_err(),
        "not registered yet"
    );

    assert_eq!(
        fleet
            .send("sensor-42", Some(token.trim()), json!({"temperature": 95}))
            .await,
        200
    );
    let device = json(&fleet.cli(&["get", "sensor-42"]).unwrap());
    assert_eq!(device["enrollment_group"], "plant-3");
    assert_eq!(device["tags"]["max_temp"], 90);
    assert_eq!(device["primary_key"], derived.as_str());
    // It was enriched with the inherited tags, and announced.
    let hot = fleet.path("hot.ndjson");
    assert!(eventually(Duration::from_secs(5), || lines(&hot).len() == 1).await);
    let life = fleet.path("life.ndjson");
    assert!(eventually(Duration::from_secs(5), || !lines(&life).is_empty()).await);
    assert_eq!(lines(&life)[0]["event"], "created");
    // The key of another device does not register it.
    let other = fleet
        .cli(&["token", "sensor-43", "--with-key", &derived])
        .unwrap();
    assert_eq!(
        fleet
            .send("sensor-43", Some(other.trim()), json!({"temperature": 1}))
            .await,
        401
    );
    assert!(fleet.cli(&["get", "sensor-43"]).is_err());
}
