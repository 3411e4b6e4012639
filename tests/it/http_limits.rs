//! The `http` source's bounds (`limits:`), each pinned by a client that oversteps it:
//! connections over `connections` are closed, headers slower than `header_timeout` close
//! the connection, a body slower than `body_timeout` gets 408, and requests beyond
//! `requests_in_flight` or `pending_bytes` get 503 with `Retry-After`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{Weir, free_port, metric_in};

/// `devices → lake`: a Delta sink that commits only after an hour, so a request with
/// `ack: on_commit` stays in flight (until `ack_timeout`) while the test looks at it.
fn write_pipeline(dir: &Path, port: u16, api: u16, limits: &str, extra: &str) -> PathBuf {
    let pipeline = dir.join("pipeline.yaml");
    std::fs::write(
        &pipeline,
        format!(
            "api: {{ listen: 127.0.0.1:{api} }}
data_dir: state
sources:
  devices:
    type: http
    listen: 127.0.0.1:{port}
    ack_timeout: 60s
    limits: {limits}
{extra}sinks:
  lake: {{ type: delta_lake, inputs: [devices], uri: lake, batch: {{ timeout: 1h }}, buffer: {{ type: memory }} }}
"
        ),
    )
    .unwrap();
    pipeline
}

async fn start(limits: &str, extra: &str) -> (tempfile::TempDir, Weir, u16) {
    let dir = tempfile::tempdir().unwrap();
    let (port, api) = (free_port(), free_port());
    let pipeline = write_pipeline(dir.path(), port, api, limits, extra);
    let weir = Weir::start(
        dir.path(),
        &pipeline,
        format!("127.0.0.1:{api}").parse().unwrap(),
    )
    .await;
    (dir, weir, port)
}

/// Reads until the server closes the connection or `within` passes; true if it closed.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// What the server answers a raw request: its status line and the rest.
async fn answer(stream: &mut TcpStream) -> String {
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    while !response.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => response.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&response).into_owned()
}

fn request_head(len: usize) -> String {
    format!(
        "POST /v1/devices/d1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_closed_at_once() {
    let (_dir, weir, port) = start("{ connections: 2 }", "").await;
    // Two connections, each answered once (a wrong path: 404 at once), so both hold their
    // place before the third arrives.
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        stream
            .write_all(b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let response = answer(&mut stream).await;
        assert!(response.starts_with("HTTP/1.1 404"), "{response}");
        open.push(stream);
    }
    let mut third = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    assert!(
        closed_within(&mut third, Duration::from_secs(5)).await,
        "the third connection is closed"
    );
    let metrics = weir.metrics().await;
    assert!(
        metrics.contains(r#"error_type="over_limit""#),
        "the refused connection is counted"
    );
    // Once one closes, a new connection is served again.
    drop(open);
    let mut again = None;
    for _ in 0..50 {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        if !closed_within(&mut stream, Duration::from_millis(200)).await {
            again = Some(stream);
            break;
        }
    }
    assert!(again.is_some(), "a place came free when connections closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_slower_than_header_timeout_close_the_connection() {
    let (_dir, _weir, port) = start("{ header_timeout: 1s }", "").await;
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream
        .write_all(b"POST /v1/devices/d1/messages HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    assert!(
        closed_within(&mut stream, Duration::from_secs(10)).await,
        "a client that never finishes its headers is cut off"
    );
    assert!(started.elapsed() >= Duration::from_millis(900));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_slower_than_body_timeout_gets_408() {
    let (_dir, _weir, port) = start("{ body_timeout: 1s }", "").await;
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream
        .write_all(format!("{}{{\"v\":", request_head(100)).as_bytes())
        .await
        .unwrap();
    let response = answer(&mut stream).await;
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
}

/// Sends one reading of about `size` bytes and returns the status and how long it took.
async fn post(client: &reqwest::Client, port: u16, size: usize) -> (u16, Duration, String) {
    let started = Instant::now();
    let body = format!(r#"{{"v": 1, "pad": "{}"}}"#, "x".repeat(size));
    let response = client
        .post(format!("http://127.0.0.1:{port}/v1/devices/d1/messages"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let retry = response.headers().contains_key("retry-after");
    let text = response.text().await.unwrap_or_default();
    (
        status,
        started.elapsed(),
        format!("retry-after={retry} {text}"),
    )
}

/// Starts `n` requests that stay in flight (the sink holds them for an hour), and waits
/// until the source counts all of them as waiting for their commit.
async fn hold(weir: &Weir, client: &reqwest::Client, port: u16, n: usize, size: usize) {
    for _ in 0..n {
        let client = client.clone();
        tokio::spawn(async move { post(&client, port, size).await });
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric_in(&weir.metrics().await, "source_pending_deliveries", &[]) < n as f64 {
        assert!(
            Instant::now() < deadline,
            "the held requests did not arrive"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_requests_in_flight_get_503_at_once() {
    let (_dir, weir, port) = start("{ requests_in_flight: 2 }", "").await;
    let client = reqwest::Client::new();
    hold(&weir, &client, port, 2, 10).await;
    let (status, took, text) = post(&client, port, 10).await;
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("retry-after=true"), "{text}");
    assert!(text.contains("requests_in_flight"), "{text}");
    assert!(
        took < Duration::from_secs(5),
        "refused without waiting: {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_pending_bytes_get_503() {
    let (_dir, weir, port) = start(
        "{ pending_bytes: 64KiB }",
        "    max_body: 32KiB\n    queue_timeout: 1s\n",
    )
    .await;
    let client = reqwest::Client::new();
    hold(&weir, &client, port, 2, 30_000).await;
    let (status, _, text) = post(&client, port, 30_000).await;
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("retry-after=true"), "{text}");
    assert!(text.contains("pending_bytes"), "{text}");
}
