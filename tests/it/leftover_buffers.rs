//! A disk buffer that still holds events is never dropped without being told: a reload or
//! a start whose pipeline no longer has its component is refused, naming the buffer and
//! its count, until `--discard-buffer ID` says to lose them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::disk_buffer::{post_all, table_ids};
use crate::support::{Weir, free_port};
use serde_json::Value;

/// `devices → lake` (disk-buffered, committing only after an hour, so what was posted
/// stays in the buffer) and `devices → other`; without `lake` when `with_lake` is false.
fn write_pipeline(dir: &Path, port: u16, api: u16, with_lake: bool) -> PathBuf {
    let lake = match with_lake {
        true => {
            "  lake:
    type: delta_lake
    inputs: [devices]
    uri: lake
    batch: { timeout: 1h }
    buffer: { type: disk }
"
        }
        false => "",
    };
    let pipeline = dir.join("pipeline.yaml");
    std::fs::write(
        &pipeline,
        format!(
            "api: {{ listen: 127.0.0.1:{api} }}
data_dir: state
sources:
  devices: {{ type: http, listen: 127.0.0.1:{port}, ack: on_commit }}
sinks:
{lake}  other: {{ type: blackhole, inputs: [devices] }}
"
        ),
    )
    .unwrap();
    pipeline
}

async fn reload(weir: &Weir, query: &str) -> (u16, Value) {
    let response = weir
        .request(reqwest::Method::POST, &format!("/v1/reload{query}"))
        .send()
        .await
        .expect("POST /v1/reload");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn errors(body: &Value) -> String {
    body["errors"].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_drops_a_full_buffer_is_refused_until_told_to_discard() {
    let dir = tempfile::tempdir().unwrap();
    let (port, api) = (free_port(), free_port());
    let pipeline = write_pipeline(dir.path(), port, api, true);
    let weir = Weir::start(
        dir.path(),
        &pipeline,
        format!("127.0.0.1:{api}").parse().unwrap(),
    )
    .await;
    let client = reqwest::Client::new();
    post_all(&client, port, 0..4).await;

    write_pipeline(dir.path(), port, api, false);
    let (status, body) = reload(&weir, "").await;
    assert_eq!(status, 409, "refused: {body}");
    assert_eq!(body["reason"], "buffers_not_empty");
    let message = errors(&body);
    assert!(message.contains("holds 200 events"), "{message}");
    assert!(message.contains("--discard-buffer lake"), "{message}");
    let buffer = dir.path().join("state/buffers/lake");
    assert!(buffer.is_dir(), "the buffer is untouched");

    // The running topology goes on: the sink still takes readings.
    post_all(&client, port, 4..5).await;

    // Naming a buffer the reload does not drop is refused too.
    let (status, body) = reload(&weir, "?discard_buffers=other").await;
    assert_eq!(status, 409, "{body}");

    let (status, body) = reload(&weir, "?discard_buffers=lake").await;
    assert_eq!(status, 200, "{body}");
    assert!(!buffer.exists(), "the discarded buffer is deleted");
    assert!(
        table_ids(&dir.path().join("lake")).await.is_empty(),
        "a discarded buffer is not delivered on its way out"
    );
    post_all(&client, port, 5..6).await;
    assert!(
        tokio::task::spawn_blocking(move || weir.terminate())
            .await
            .unwrap()
            .success()
    );
}

/// Runs `weir run pipeline args...` expecting it to exit on its own; returns its status
/// and what it logged.
fn run_to_exit(dir: &Path, pipeline: &Path, args: &[&str]) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("run")
        .arg(pipeline)
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start weir");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "weir did not refuse to start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_without_the_component_of_a_full_buffer_is_refused_until_told_to_discard() {
    let dir = tempfile::tempdir().unwrap();
    let (port, api) = (free_port(), free_port());
    let address = format!("127.0.0.1:{api}").parse().unwrap();
    let pipeline = write_pipeline(dir.path(), port, api, true);
    let mut weir = Weir::start(dir.path(), &pipeline, address).await;
    post_all(&reqwest::Client::new(), port, 0..2).await;
    // A crash: the buffer keeps the 100 readings its sink had not committed.
    weir.signal(libc::SIGKILL);
    let _ = weir.child.wait();
    drop(weir);

    let without = write_pipeline(dir.path(), port, api, false);
    let (status, log) = {
        let (dir, without) = (dir.path().to_owned(), without.clone());
        tokio::task::spawn_blocking(move || run_to_exit(&dir, &without, &[]))
            .await
            .unwrap()
    };
    assert!(!status.success(), "refused: {log}");
    assert!(log.contains("holds 100 events"), "{log}");
    assert!(log.contains("--discard-buffer lake"), "{log}");
    let buffer = dir.path().join("state/buffers/lake");
    assert!(buffer.is_dir(), "the buffer is untouched");

    let weir = Weir::start_with(
        dir.path(),
        &without,
        address,
        &["--discard-buffer", "lake"],
        &[],
    )
    .await;
    assert!(!buffer.exists(), "the discarded buffer is deleted");
    assert!(
        tokio::task::spawn_blocking(move || weir.terminate())
            .await
            .unwrap()
            .success()
    );
}
