//! `weir tap` and `GET /v1/tap` against a running weir: sampled events appear, secrets
//! and device keys are masked, `--limit` holds, `.errors` outputs can be tapped, a scoped
//! operator sees only its devices, and nothing is copied while no tap is attached.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{Weir, eventually, free_port, metric_in};

fn write_pipeline(dir: &Path, api: u16, http: u16) -> std::path::PathBuf {
    let pipeline = dir.join("pipeline.yaml");
    let text = format!(
        "data_dir: '{d}'
api: {{ listen: '127.0.0.1:{api}' }}
registry: {{ path: registry.redb }}
sources:
  plant:
    type: http
    listen: 127.0.0.1:{http}
    redact: [password]
sinks:
  out: {{ type: blackhole, inputs: [plant] }}
  archive: {{ type: file, inputs: [plant], path: '{d}/archive.ndjson', redact: [config.api_token] }}
  bad: {{ type: blackhole, inputs: [plant.errors] }}
",
        d = dir.display()
    );
    std::fs::write(&pipeline, text).unwrap();
    pipeline
}

async fn post(http: u16, device: &str, body: &str) {
    let answer = reqwest::Client::new()
        .post(format!(
            "http://127.0.0.1:{http}/v1/devices/{device}/messages"
        ))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("POST a reading");
    assert!(answer.status().as_u16() < 500, "{}", answer.status());
}

/// A running `weir tap` with its stdout read line by line, and its stderr collected.
struct TapProcess {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl TapProcess {
    fn start(weir: &Weir, token: &str, args: &[&str]) -> TapProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
            .arg("tap")
            .args(["--api", &format!("http://{}", weir.api), "--token", token])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start weir tap");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let collected = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = std::sync::Arc::clone(&collected);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut all = sink.lock().unwrap();
                all.push_str(&line);
                all.push('\n');
            }
        });
        TapProcess {
            child,
            lines,
            stderr: collected,
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The next line of stdout within `timeout`.
    fn line(&self, timeout: Duration) -> Option<String> {
        self.lines.recv_timeout(timeout).ok()
    }

    /// Waits for the process to end by itself.
    fn wait(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for TapProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An open `GET /v1/tap` read line by line.
struct Stream {
    response: reqwest::Response,
    pending: Vec<u8>,
}

impl Stream {
    async fn open(weir: &Weir, token: &str, query: &str) -> Stream {
        let response = reqwest::Client::new()
            .get(format!("http://{}/v1/tap?{query}", weir.api))
            .bearer_auth(token)
            .send()
            .await
            .expect("GET /v1/tap");
        assert_eq!(response.status(), 200, "GET /v1/tap?{query}");
        Stream {
            response,
            pending: Vec::new(),
        }
    }

    /// The next JSON line, within `timeout`.
    async fn next(&mut self, timeout: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                // Empty lines keep a quiet tap's connection checked.
                if line.trim_ascii().is_empty() {
                    continue;
                }
                return Some(serde_json::from_slice(&line).expect("a JSON line"));
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .ok()?
                .expect("the tap stream")?;
            self.pending.extend_from_slice(&chunk);
        }
    }
}

fn copied(metrics: &str) -> f64 {
    metric_in(metrics, "tap_copied_events_total", &[])
}

fn sent_by_plant(metrics: &str) -> f64 {
    metric_in(
        metrics,
        "component_sent_events_total",
        &[r#"component_id="plant""#, r#"output="default""#],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tap_shows_live_events_masks_secrets_and_copies_nothing_when_detached() {
    let dir = tempfile::tempdir().unwrap();
    let (api, http) = (free_port(), free_port());
    let pipeline = write_pipeline(dir.path(), api, http);
    let weir = Weir::start(dir.path(), &pipeline, ([127, 0, 0, 1], api).into()).await;
    let operator = weir.make_token("tap-operator", "operator").await;

    // No tap attached: readings flow, nothing is copied.
    for n in 0..5 {
        post(http, "tap-pump-1", &format!(r#"{{"n": {n}}}"#)).await;
    }
    let metrics = weir.metrics().await;
    assert_eq!(sent_by_plant(&metrics), 5.0);
    assert_eq!(
        copied(&metrics),
        0.0,
        "nothing copied while no tap is attached"
    );

    // `weir tap`: three events, secrets masked, then it stops (`--count`).
    let mut tap = TapProcess::start(
        &weir,
        &operator,
        &["--outputs-of", "plant", "--count", "3", "--meta"],
    );
    let attached = eventually(Duration::from_secs(20), || {
        tap.stderr().contains("[tap] watching plant:default")
    })
    .await;
    assert!(attached, "the tap did not attach: {}", tap.stderr());
    let secret = json!({
        "temperature": 21.5,
        "password": "hunter2",
        "primary_key": "c2VjcmV0LWtleQ==",
        "config": { "api_token": "tok-123", "site": "plant-3" },
        "conn": "HostName=h;DeviceId=tap-pump-1;SharedAccessKey=c2VjcmV0LWtleQ==",
    });
    for _ in 0..3 {
        post(http, "tap-pump-1", &secret.to_string()).await;
    }
    let mut shown = Vec::new();
    for _ in 0..3 {
        let line = tap
            .line(Duration::from_secs(20))
            .unwrap_or_else(|| panic!("no tapped event; stderr: {}", tap.stderr()));
        shown.push(serde_json::from_str::<Value>(&line).expect("a JSON line"));
    }
    let status = tap
        .wait(Duration::from_secs(20))
        .expect("--count ends the tap");
    assert!(status.success(), "{status}: {}", tap.stderr());
    for record in &shown {
        assert_eq!(record["component_id"], "plant");
        assert_eq!(record["output"], "default");
        let event = &record["event"];
        assert_eq!(event["device_id"], "tap-pump-1");
        assert_eq!(event["temperature"], 21.5, "{record}");
        assert_eq!(event["password"], "***", "the source's redact list");
        assert_eq!(event["primary_key"], "***", "a device key");
        assert_eq!(
            event["conn"], "***",
            "a connection string with a device key"
        );
        assert_eq!(
            event["config"]["api_token"], "***",
            "the sink's redact list"
        );
        assert_eq!(event["config"]["site"], "plant-3");
        assert_eq!(event["meta"]["source"], "plant");
        let text = record.to_string();
        for secret in ["hunter2", "c2VjcmV0LWtleQ==", "tok-123"] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
    }

    // Detached again: the copies stop with it.
    let detached = async {
        let deadline = Instant::now() + Duration::from_secs(20);
        while metric_in(&weir.metrics().await, "tap_sessions", &[]) != 0.0 {
            assert!(Instant::now() < deadline, "the tap stayed attached");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    detached.await;
    let before = weir.metrics().await;
    assert!(copied(&before) >= 3.0, "the tap's copies are counted");
    for n in 0..10 {
        post(http, "tap-pump-1", &format!(r#"{{"n": {n}}}"#)).await;
    }
    let after = weir.metrics().await;
    assert_eq!(sent_by_plant(&after), sent_by_plant(&before) + 10.0);
    assert_eq!(copied(&after), copied(&before), "detached: nothing copied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tap_route_keeps_its_limit_taps_errors_and_scopes_devices() {
    let dir = tempfile::tempdir().unwrap();
    let (api, http) = (free_port(), free_port());
    let pipeline = write_pipeline(dir.path(), api, http);
    let weir = Weir::start(dir.path(), &pipeline, ([127, 0, 0, 1], api).into()).await;

    // `limit`: of 5 events in one interval, 2 are sent and 3 skipped (and said so).
    let mut stream = Stream::open(
        &weir,
        &weir.token,
        "outputs_of=plant&limit=2&interval_ms=1500",
    )
    .await;
    let first = stream
        .next(Duration::from_secs(10))
        .await
        .expect("the first line");
    assert_eq!(first["notice"], "attached");
    assert_eq!(first["matched"], json!(["plant:default"]));
    post(
        http,
        "tap-limit-1",
        r#"[{"n":1},{"n":2},{"n":3},{"n":4},{"n":5}]"#,
    )
    .await;
    let mut events = Vec::new();
    let notice = loop {
        let line = stream
            .next(Duration::from_secs(10))
            .await
            .expect("the limit notice");
        match line.get("notice") {
            Some(_) => break line,
            None => events.push(line),
        }
    };
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(notice, json!({ "notice": "limited", "skipped": 3 }));
    drop(stream);

    // `.errors`: a body that is not JSON reaches the errors output, and the tap.
    let mut errors = Stream::open(&weir, &weir.token, "outputs_of=plant.errors").await;
    let first = errors.next(Duration::from_secs(10)).await.unwrap();
    assert_eq!(first["matched"], json!(["plant:errors"]));
    post(http, "tap-errors-1", "{not json").await;
    let dead = errors
        .next(Duration::from_secs(10))
        .await
        .expect("the dead letter");
    assert_eq!(dead["output"], "errors");
    assert_eq!(dead["event"]["meta"]["source"], "plant");
    drop(errors);

    // `inputs_of`, for a caller scoped to one site: only its device's events.
    for (id, site) in [("tap-scoped-1", "tap-north"), ("tap-scoped-2", "tap-south")] {
        let made = weir
            .request(reqwest::Method::POST, "/v1/devices")
            .json(&json!({ "id": id, "tags": { "site": site } }))
            .send()
            .await
            .unwrap();
        assert_eq!(made.status(), 201);
    }
    let made = weir
        .request(reqwest::Method::POST, "/v1/tokens")
        .json(&json!({ "name": "tap-north-op", "role": "operator", "scope": { "site": "tap-north" } }))
        .send()
        .await
        .unwrap();
    assert_eq!(made.status(), 201);
    let scoped: Value = made.json().await.unwrap();
    let scoped = scoped["token"].as_str().unwrap().to_owned();
    let mut stream = Stream::open(&weir, &scoped, "inputs_of=out").await;
    assert_eq!(
        stream.next(Duration::from_secs(10)).await.unwrap()["matched"],
        json!(["out:input"])
    );
    post(http, "tap-scoped-2", r#"{"hidden": true}"#).await;
    post(http, "tap-scoped-1", r#"{"shown": true}"#).await;
    let seen = stream
        .next(Duration::from_secs(10))
        .await
        .expect("an event");
    assert_eq!(seen["input"], true);
    assert_eq!(seen["event"]["device_id"], "tap-scoped-1", "{seen}");
    // A viewer may not tap.
    let viewer = weir.make_token("tap-viewer", "viewer").await;
    let refused = reqwest::Client::new()
        .get(format!("http://{}/v1/tap", weir.api))
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
}
