//! Secrets never leave: settings that hold passwords, tokens, keys and header values print
//! without them, and a webhook that fails shows neither its URL's token nor its
//! `Authorization` header in its log lines or its dead letters, even when the server's
//! answer echoes the request back.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::receivers::wait_for;
use crate::support::{free_port, lines};

/// Every secret below, each unique, so a leak names the setting it came from.
const SECRETS: &[&str] = &[
    "smtp-s3cret-1",
    "hdr-s3cret-2",
    "url-s3cret-3",
    "aws-s3cret-4",
    "amqp-s3cret-5",
    "redis-s3cret-6",
    "pub-s3cret-7",
    "jwks-s3cret-8",
    "env-s3cret-9",
];

#[test]
fn debug_output_of_settings_holds_no_secret() {
    let text = "
data_dir: /tmp/weir-secrets-debug
api:
  auth:
    jwt:
      issuer: https://idp.example
      audience: api://weir
      jwks_uri: https://idp.example/keys?key=jwks-s3cret-8
sources:
  queue: { type: amqp, url: 'amqp://weir:amqp-s3cret-5@broker:5672/%2f', queue: q }
sinks:
  lake:
    type: delta_lake
    inputs: [queue]
    uri: s3://bucket/telemetry
    storage_options: { AWS_ACCESS_KEY_ID: AKIA0000, AWS_SECRET_ACCESS_KEY: aws-s3cret-4 }
  state:
    type: redis
    inputs: [queue]
    url: 'redis://:redis-s3cret-6@cache:6379/0'
    key: 'device:{{ device_id }}'
actions:
  page:
    type: webhook
    inputs: [queue]
    url: 'https://hooks.example/iot?site=plant-3&token=url-s3cret-3'
    headers: { Authorization: 'Bearer hdr-s3cret-2', X-Api-Key: '${HOOK_KEY}' }
  mail:
    type: email
    inputs: [queue]
    host: smtp.example
    username: weir
    password: smtp-s3cret-1
    from: weir <weir@example.com>
    to: [ops@example.com]
    subject: alarm
    body: alarm
  forward:
    type: amqp_publish
    inputs: [queue]
    url: 'amqps://weir:pub-s3cret-7@broker:5671/%2f'
    routing_key: alarms
";
    let env = |name: &str| (name == "HOOK_KEY").then(|| "env-s3cret-9".to_owned());
    let (config, _) = weir::config::load_str(&weir::CATALOGUE, "secrets.yaml", text, &env)
        .unwrap_or_else(|e| panic!("invalid pipeline:\n{e}"));
    let shown = format!("{config:?} {config:#?}");
    for secret in SECRETS {
        assert!(!shown.contains(secret), "`{secret}` is shown:\n{shown}");
    }
    // What the settings are is still visible.
    assert!(shown.contains("hooks.example"), "{shown}");
    assert!(shown.contains("AWS_SECRET_ACCESS_KEY"), "{shown}");
    assert!(shown.contains("***"), "{shown}");
}

/// A server answering 500 with the request it got: its URL and `Authorization` header.
async fn echoing_server() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", free_port()))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let echo = |uri: axum::http::Uri, headers: axum::http::HeaderMap| async move {
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("auth={auth} uri={uri}"),
        )
    };
    let app = axum::Router::new().fallback(echo);
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_webhook_logs_and_dead_letters_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let hook = echoing_server().await;
    let port = free_port();
    let dead = dir.path().join("dead.ndjson");
    let log = dir.path().join("weir.log");
    let pipeline = dir.path().join("pipeline.yaml");
    let text = format!(
        "data_dir: '{d}'
api: {{ enabled: false }}
sources:
  devices: {{ type: http, listen: '127.0.0.1:{port}' }}
actions:
  page:
    type: webhook
    inputs: [devices]
    url: 'http://{hook}/hook?site=plant-3&access_token=url-s3cret-3'
    headers: {{ Authorization: 'Bearer ${{HOOK_TOKEN}}' }}
    buffer: {{ type: memory }}
    retry: {{ attempts: 2, initial_backoff: 20ms }}
sinks:
  dead_letters: {{ type: file, inputs: [page.errors], path: '{dead}' }}
",
        d = dir.path().display(),
        dead = dead.display(),
    );
    std::fs::write(&pipeline, text).unwrap();
    let mut weir = Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("run")
        .arg(&pipeline)
        .current_dir(dir.path())
        .env("RUST_LOG", "debug")
        .env("HOOK_TOKEN", "hdr-s3cret-2")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start weir");

    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/v1/devices/engine-1/messages");
    let mut status = 0;
    for _ in 0..200 {
        if let Ok(answer) = client
            .post(&url)
            .json(&serde_json::json!({ "temperature": 105 }))
            .send()
            .await
        {
            status = answer.status().as_u16();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200, "the reading was not taken");
    let letters = wait_for(Duration::from_secs(20), || {
        let letters = lines(&dead);
        (!letters.is_empty()).then_some(letters)
    })
    .await
    .expect("a dead letter");
    // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
    unsafe { libc::kill(weir.id() as i32, libc::SIGTERM) };
    let _ = weir.wait();

    let error = letters[0]["meta"]["error"]["message"].as_str().unwrap();
    assert!(error.contains("500"), "{error}");
    assert!(error.contains("access_token=***"), "{error}");
    assert!(
        error.contains("auth=***"),
        "the echo is in, masked: {error}"
    );
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("retrying"),
        "the retry is logged:\n{logged}"
    );
    let written = std::fs::read_to_string(&dead).unwrap();
    for secret in ["url-s3cret-3", "hdr-s3cret-2"] {
        assert!(
            !written.contains(secret),
            "dead letter shows `{secret}`:\n{written}"
        );
        assert!(!logged.contains(secret), "log shows `{secret}`:\n{logged}");
    }
}

#[test]
fn the_http_source_refuses_to_copy_credentials_into_events() {
    let text = "
sources:
  devices: { type: http, listen: '127.0.0.1:9', headers: [x-request-id, Authorization] }
sinks:
  out: { type: blackhole, inputs: [devices] }
";
    let refused =
        weir::config::load_str(&weir::CATALOGUE, "h.yaml", text, &|_| None).expect_err("refused");
    assert!(
        refused.to_string().contains("holds a credential"),
        "{refused}"
    );
}
