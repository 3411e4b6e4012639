//! The `delta_lake` sink with a memory buffer, end to end: readings posted over HTTP are
//! acknowledged only once committed, and the table weir wrote is read back with the
//! `deltalake` crate (its log) and the `parquet` crate (its files). The default disk
//! buffer and its exactly-once delivery are tested in `delta_once`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use deltalake::arrow::array::{Array, AsArray};
use deltalake::arrow::datatypes::Float64Type;
use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::{Value, json};

use crate::support::{self, Weir, free_port, lines};

/// What a table holds, read back independently of weir.
pub(crate) struct TableContents {
    /// Column name to Delta type name, in table order.
    pub(crate) columns: Vec<(String, String)>,
    partition_columns: Vec<String>,
    /// Data files in the log, relative to the table root.
    files: Vec<PathBuf>,
    /// Rows per file, from the Parquet footers.
    pub(crate) rows: usize,
    /// Every `id` value and how often it occurs.
    pub(crate) ids: BTreeMap<u64, usize>,
    /// Rows where `column` is null, for each nullable field column asked about.
    nulls: BTreeMap<String, usize>,
    /// The `txn` version the log holds for `app_id`.
    pub(crate) txn_version: Option<i64>,
}

pub(crate) async fn read_table(root: &Path, app_id: &str, null_columns: &[&str]) -> TableContents {
    let url = url::Url::from_directory_path(root).unwrap();
    let table = deltalake::open_table(url).await.expect("open the table");
    let snapshot = table.snapshot().unwrap();
    let columns = snapshot
        .schema()
        .fields()
        .map(|f| (f.name().clone(), f.data_type().to_string()))
        .collect();
    let partition_columns = snapshot.metadata().partition_columns().to_vec();
    let txn_version = snapshot
        .transaction_version(table.log_store().as_ref(), app_id)
        .await
        .unwrap();
    let mut contents = TableContents {
        columns,
        partition_columns,
        files: Vec::new(),
        rows: 0,
        ids: BTreeMap::new(),
        nulls: BTreeMap::new(),
        txn_version,
    };
    for uri in table.get_file_uris().unwrap() {
        let path = local_path(&uri);
        contents
            .files
            .push(path.strip_prefix(root).unwrap().to_path_buf());
        let file = std::fs::File::open(&path).unwrap();
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
        contents.rows += builder.metadata().file_metadata().num_rows() as usize;
        for batch in builder.build().unwrap() {
            let batch = batch.unwrap();
            let ids = batch
                .column_by_name("id")
                .expect("an id column")
                .as_primitive::<Float64Type>();
            for id in ids.iter().flatten() {
                *contents.ids.entry(id as u64).or_default() += 1;
            }
            for column in null_columns {
                let nulls = batch
                    .column_by_name(column)
                    .map_or(batch.num_rows(), |c| c.null_count());
                *contents.nulls.entry((*column).to_owned()).or_default() += nulls;
            }
        }
    }
    contents
}

/// The app id of the sink `lake`'s transactions with a memory buffer, `weir-lake@<instance>`
/// (the instance id weir made in `data_dir`).
fn app_id(dir: &Path) -> String {
    let instance = std::fs::read_to_string(dir.join("state/instance_id")).expect("an instance id");
    format!("weir-lake@{}", instance.trim())
}

/// Starts weir in `dir` on a fresh `pipeline.yaml`: `data_dir: state`, an http source
/// `devices` (with `source_options` appended to its flow mapping) and `sinks` (the lines
/// under `sinks:`). Returns it with its HTTP port, the pipeline and the API address.
pub(crate) async fn start_with_sinks(
    dir: &Path,
    source_options: &str,
    sinks: &str,
    env: &[(&str, &str)],
) -> (Weir, u16, PathBuf, std::net::SocketAddr) {
    let (port, api) = (free_port(), free_port());
    let pipeline = dir.join("pipeline.yaml");
    std::fs::write(
        &pipeline,
        format!(
            "api: {{ listen: 127.0.0.1:{api} }}
data_dir: state
sources:
  devices: {{ type: http, listen: 127.0.0.1:{port}{source_options} }}
sinks:
{sinks}"
        ),
    )
    .unwrap();
    let api = format!("127.0.0.1:{api}").parse().unwrap();
    let weir = Weir::start_with_env(dir, &pipeline, api, env).await;
    (weir, port, pipeline, api)
}

/// Starts weir on a fresh pipeline with `sink_options`; returns it with its HTTP port.
async fn start(
    dir: &Path,
    sink_options: &str,
    env: &[(&str, &str)],
) -> (Weir, u16, PathBuf, std::net::SocketAddr) {
    let sinks = format!(
        "  lake:
    type: delta_lake
    inputs: [devices]
    uri: lake
    buffer: {{ type: memory }}
    {sink_options}
  rejected: {{ type: file, inputs: [lake.errors], path: rejected.ndjson }}
"
    );
    start_with_sinks(dir, ", event_time: ts", &sinks, env).await
}

/// Posts `readings` for `device`; true when weir answered 2xx (it committed them).
async fn post(client: &reqwest::Client, port: u16, device: &str, readings: &[Value]) -> bool {
    client
        .post(format!(
            "http://127.0.0.1:{port}/v1/devices/{device}/messages"
        ))
        .json(readings)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// Readings `ids` of one device, alternating between two days of event time.
fn readings(ids: std::ops::Range<u64>) -> Vec<Value> {
    ids.map(|id| {
        let day = if id % 2 == 0 { "25" } else { "26" };
        json!({"id": id, "temperature": 20.0 + (id % 7) as f64, "ts": format!("2026-11-{day}T10:00:00Z")})
    })
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_readings_are_rows_of_a_partitioned_table() {
    let dir = tempfile::tempdir().unwrap();
    let (weir, port, _, _) = start(
        dir.path(),
        "partition_by: [date]\n    batch: { timeout: 300ms }",
        &[],
    )
    .await;
    let client = client();
    let mut posts = Vec::new();
    for device in 0..5u64 {
        let client = client.clone();
        posts.push(tokio::spawn(async move {
            let ids = device * 1000..device * 1000 + 400;
            for chunk in readings(ids).chunks(100) {
                assert!(post(&client, port, &format!("d{device}"), chunk).await);
            }
        }));
    }
    for posting in posts {
        posting.await.unwrap();
    }
    let metrics = weir.metrics().await;
    assert!(
        support::metric_in(
            &metrics,
            "sink_batch_events_count",
            &["component_id=\"lake\""]
        ) >= 1.0,
        "commits are measured"
    );
    assert!(
        tokio::task::spawn_blocking(move || weir.terminate())
            .await
            .unwrap()
            .success()
    );

    let table = read_table(&dir.path().join("lake"), &app_id(dir.path()), &[]).await;
    assert_eq!(table.rows, 2000, "one row per acknowledged reading");
    assert_eq!(table.ids.len(), 2000);
    assert!(table.ids.values().all(|n| *n == 1), "no duplicates");
    assert_eq!(table.partition_columns, ["date"]);
    let names: Vec<&str> = table.columns.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "device_id",
            "time",
            "received_at",
            "date",
            "id",
            "temperature",
            "ts"
        ]
    );
    let types: BTreeMap<&str, &str> = table
        .columns
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    assert_eq!(types["time"], "timestamp");
    assert_eq!(types["temperature"], "double");
    assert_eq!(types["ts"], "string");
    let partitions: BTreeSet<String> = table
        .files
        .iter()
        .map(|f| {
            f.components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(
        partitions,
        BTreeSet::from(["date=2026-11-25".to_owned(), "date=2026-11-26".to_owned()])
    );
    assert!(
        table.txn_version.is_some(),
        "commits carry this sink's transaction id"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_fields_add_columns_and_type_conflicts_are_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let (weir, port, _, _) = start(
        dir.path(),
        "partition_by: [date]\n    batch: { timeout: 200ms }",
        &[],
    )
    .await;
    let client = client();
    assert!(post(&client, port, "d1", &readings(0..50)).await);
    let with_humidity: Vec<Value> = (50..80)
        .map(|id| json!({"id": id, "temperature": 21.0, "humidity": 40.5, "ts": "2026-11-26T11:00:00Z"}))
        .collect();
    assert!(post(&client, port, "d1", &with_humidity).await);
    let conflicting = [
        json!({"id": 80, "temperature": "hot", "ts": "2026-11-26T12:00:00Z"}),
        json!({"id": 81, "temperature": 22.0, "ts": "2026-11-26T12:00:00Z"}),
    ];
    assert!(post(&client, port, "d1", &conflicting).await);
    assert!(
        tokio::task::spawn_blocking(move || weir.terminate())
            .await
            .unwrap()
            .success()
    );

    let table = read_table(&dir.path().join("lake"), &app_id(dir.path()), &["humidity"]).await;
    assert_eq!(table.rows, 81, "every reading but the conflicting one");
    assert!(!table.ids.contains_key(&80));
    let types: BTreeMap<&str, &str> = table
        .columns
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    assert_eq!(
        types.get("humidity"),
        Some(&"double"),
        "a new nullable column"
    );
    assert_eq!(
        table.nulls["humidity"], 51,
        "older and later rows have no humidity"
    );

    let rejected = lines(&dir.path().join("rejected.ndjson"));
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0]["id"], 80);
    let reason = rejected[0]["meta"]["error"]["message"].as_str().unwrap();
    assert!(reason.contains("temperature"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_write_and_commit_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // First run: weir writes the rows' files, then dies where the commit would be.
    let (weir, port, pipeline, api_addr) = start(
        dir.path(),
        "batch: { timeout: 300ms }",
        &[("WEIR_CRASH_AT", "delta_lake.before_commit")],
    )
    .await;
    let client = client();
    let batches: Vec<Vec<Value>> = (0..6u64)
        .map(|i| readings(i * 100..i * 100 + 100))
        .collect();
    let mut first = Vec::new();
    for batch in batches.clone() {
        let client = client.clone();
        first.push(tokio::spawn(async move {
            post(&client, port, "d1", &batch).await
        }));
    }
    let mut acknowledged = 0;
    for posting in first {
        acknowledged += usize::from(posting.await.unwrap());
    }
    weir.wait_for_crash().await;
    assert_eq!(
        acknowledged, 0,
        "nothing was acknowledged before the commit"
    );
    let lake = dir.path().join("lake");
    let orphans: BTreeSet<PathBuf> = walk(&lake)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .map(|p| p.strip_prefix(&lake).unwrap().to_path_buf())
        .collect();
    assert!(
        !orphans.is_empty(),
        "the crash came after the files were written"
    );

    // Second run: the clients send again what was not acknowledged; a vacuum clears the
    // crashed window's files.
    let text = std::fs::read_to_string(&pipeline).unwrap();
    std::fs::write(
        &pipeline,
        text.replace(
            "batch: { timeout: 300ms }",
            "batch: { timeout: 300ms }\n    vacuum: { interval: 1s, retention: 0s }",
        ),
    )
    .unwrap();
    let weir = Weir::start(dir.path(), &pipeline, api_addr).await;
    for batch in &batches {
        assert!(post(&client, port, "d1", batch).await);
    }
    let vacuumed = support::eventually(Duration::from_secs(10), || {
        walk(&lake)
            .iter()
            .all(|p| !orphans.contains(p.strip_prefix(&lake).unwrap()))
    })
    .await;
    assert!(vacuumed, "the vacuum deleted the crashed window's files");
    assert!(
        tokio::task::spawn_blocking(move || weir.terminate())
            .await
            .unwrap()
            .success()
    );

    let table = read_table(&dir.path().join("lake"), &app_id(dir.path()), &[]).await;
    assert_eq!(table.rows, 600);
    assert_eq!(table.ids.len(), 600, "nothing lost");
    assert!(table.ids.values().all(|n| *n == 1), "nothing duplicated");
    assert!(
        table.files.iter().all(|f| !orphans.contains(f)),
        "files of the crashed window stay out of the log"
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(walk(&path));
        } else {
            found.push(path);
        }
    }
    found
}

/// A data file's path: deltalake lists local files as plain paths or as `file://` URLs.
fn local_path(uri: &str) -> PathBuf {
    url::Url::parse(uri)
        .ok()
        .and_then(|url| url.to_file_path().ok())
        .unwrap_or_else(|| PathBuf::from(uri))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_rewrites_small_files_without_changing_rows() {
    let dir = tempfile::tempdir().unwrap();
    let (weir, port, _, _) = start(
        dir.path(),
        "partition_by: [date]\n    batch: { timeout: 50ms }\n    optimize: { interval: 3s }",
        &[],
    )
    .await;
    let client = client();
    // One commit per request: many small files in two partitions.
    for i in 0..8u64 {
        assert!(post(&client, port, "d1", &readings(i * 10..i * 10 + 10)).await);
    }
    let lake = dir.path().join("lake");
    let small = read_table(&lake, &app_id(dir.path()), &[]).await;
    assert!(small.files.len() >= 8, "{} files before", small.files.len());

    let mut compacted = None;
    for _ in 0..100 {
        let table = read_table(&lake, &app_id(dir.path()), &[]).await;
        if table.files.len() == 2 {
            compacted = Some(table);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let compacted = compacted.expect("compaction leaves one file per partition");
    assert_eq!(compacted.rows, 80);
    assert_eq!(compacted.ids, small.ids, "the same rows, regrouped");
    assert!(
        tokio::task::spawn_blocking(move || weir.terminate())
            .await
            .unwrap()
            .success()
    );
}
