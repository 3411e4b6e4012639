//! The cold path on object storage for real: a table written by the `delta_lake` sink to
//! Azurite over `az://` and to moto's S3 server over `s3://` (each started by its test),
//! read back by the `delta_lake` source and by Python's `deltalake` with the same rows as
//! the ones written. On S3, commits rely on conditional writes (`If-None-Match: *`),
//! deltalake's default: the server is checked to refuse overwriting a log entry.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use object_store::ObjectStore as _;
use serde_json::Value;

use crate::support::azurite::Azurite;
use crate::support::moto::Moto;
use crate::support::{lines, pydelta};

/// One reading: device, event time (epoch µs), temperature and vibration as text.
type Reading = (String, i64, String, String);

fn micros(text: &str) -> i64 {
    text.parse::<jiff::Timestamp>()
        .expect("an RFC 3339 time")
        .as_microsecond()
}

/// The readings of a `file` sink's output.
fn from_file(path: &Path) -> Vec<Reading> {
    let mut all: Vec<Reading> = lines(path)
        .iter()
        .map(|l| {
            (
                l["device_id"].as_str().unwrap().to_owned(),
                micros(l["meta"]["event_time"].as_str().unwrap()),
                l["temperature"].to_string(),
                l["vibration"].to_string(),
            )
        })
        .collect();
    all.sort();
    all
}

/// The readings Python's deltalake sees.
fn from_python(rows: &[Value]) -> Vec<Reading> {
    let mut all: Vec<Reading> = rows
        .iter()
        .map(|r| {
            (
                r["device_id"].as_str().unwrap().to_owned(),
                r["time"].as_i64().unwrap(),
                r["temperature"].to_string(),
                r["vibration"].to_string(),
            )
        })
        .collect();
    all.sort();
    all
}

/// `storage_options:` lines for a pipeline.
fn options_yaml(options: &HashMap<String, String>) -> String {
    options
        .iter()
        .map(|(k, v)| format!("      {k}: \"{v}\"\n"))
        .collect()
}

/// `weir run --batch` of `text` in `dir`, with `env`; panics with its log unless it succeeds.
fn batch(dir: &Path, name: &str, text: &str, env: &[(&str, &str)]) {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["run", "--batch"])
        .arg(&path)
        .current_dir(dir)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Writes simulated readings to `uri` (and, as they were, to `written.ndjson`), reads the
/// table back with the source into `read.ndjson`, and compares both with what Python sees.
fn round_trip(
    dir: &Path,
    uri: &str,
    weir_options: &HashMap<String, String>,
    env: &[(&str, &str)],
    python_options: &HashMap<String, String>,
) {
    let options = options_yaml(weir_options);
    batch(
        dir,
        "write.yaml",
        &format!(
            "data_dir: state-write
sources:
  fleet: {{ type: simulator, devices: 5, limit: 600, realtime: false, rate: 10, start_time: '2026-12-01T00:00:00Z' }}
sinks:
  lake:
    type: delta_lake
    inputs: [fleet]
    uri: {uri}
    partition_by: [date]
    batch: {{ max_events: 200 }}
    storage_options:
{options}  written: {{ type: file, inputs: [fleet], path: written.ndjson }}
"
        ),
        env,
    );
    batch(
        dir,
        "read.yaml",
        &format!(
            "data_dir: state-read
sources:
  archive:
    type: delta_lake
    uri: {uri}
    storage_options:
{options}sinks:
  read: {{ type: file, inputs: [archive], path: read.ndjson }}
"
        ),
        env,
    );
    let written = from_file(&dir.join("written.ndjson"));
    assert_eq!(written.len(), 600);
    assert_eq!(
        from_file(&dir.join("read.ndjson")),
        written,
        "the source reads back every row"
    );
    let python = from_python(&pydelta::rows(uri, python_options, env));
    assert_eq!(python, written, "Python's deltalake reads the same rows");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_on_azurite_reads_back_the_same_through_the_source_and_python() {
    let dir = tempfile::tempdir().unwrap();
    let azurite = {
        let location = dir.path().join("azurite");
        tokio::task::spawn_blocking(move || Azurite::start(&location))
            .await
            .unwrap()
    };
    azurite.create_container("cold").await;
    let (variable, url) = azurite.url_variable();
    let path = dir.path().to_path_buf();
    tokio::task::spawn_blocking(move || {
        round_trip(
            &path,
            "az://cold/telemetry",
            &Azurite::emulator_options(),
            &[(variable, &url)],
            &Azurite::emulator_options(),
        )
    })
    .await
    .unwrap();
    drop(azurite);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_on_s3_reads_back_the_same_through_the_source_and_python_and_commits_are_conditional()
 {
    let dir = tempfile::tempdir().unwrap();
    let moto = tokio::task::spawn_blocking(Moto::start).await.unwrap();
    moto.create_bucket("cold").await;
    let options = moto.storage_options();
    let path = dir.path().to_path_buf();
    let python = options.clone();
    tokio::task::spawn_blocking(move || {
        round_trip(&path, "s3://cold/telemetry", &options, &[], &python)
    })
    .await
    .unwrap();
    // What keeps two writers from both committing one version: the store refuses to
    // create an object that exists.
    let store = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(moto.endpoint())
        .with_bucket_name("cold")
        .with_region("us-east-1")
        .with_access_key_id("weir-test")
        .with_secret_access_key("weir-test-secret")
        .with_allow_http(true)
        .build()
        .unwrap();
    let entry = object_store::path::Path::from("telemetry/_delta_log/00000000000000000000.json");
    let create = object_store::PutOptions {
        mode: object_store::PutMode::Create,
        ..Default::default()
    };
    let overwrite = store.put_opts(&entry, "{}".into(), create).await;
    assert!(
        matches!(overwrite, Err(object_store::Error::AlreadyExists { .. })),
        "the S3 server refuses to create a log entry that exists: {overwrite:?}"
    );
}
