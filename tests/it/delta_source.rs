//! The `delta_lake` source: tables the sink wrote are read back through a pipeline (into a
//! `file` sink here) row for row — at the latest version and at an older one (time
//! travel), and with partition and event-time filters that skip whole files (counted by
//! `source_files_total`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use weir::config::{BatchRange, RunMode};
use weir::telemetry::Telemetry;
use weir::topology::RunningTopology;

use crate::support::{lines, metric, pipeline};

/// Runs `text` (every source bounded) until it has finished; `run` is its mode.
async fn run_to_end(text: &str, run: RunMode) -> Arc<Telemetry> {
    let mut config = pipeline(text);
    config.globals.run = run;
    let telemetry = Telemetry::new();
    let mut topology = RunningTopology::start(&config, &telemetry).expect("the topology starts");
    let finished = tokio::time::timeout(Duration::from_secs(120), topology.wait()).await;
    assert!(finished.is_ok(), "the bounded topology did not finish");
    let failures = topology.stop(Duration::from_secs(10)).await;
    assert!(
        failures.is_empty(),
        "components failed: {:?}",
        failures
            .iter()
            .map(|f| format!("{}: {:?}", f.component, f.result))
            .collect::<Vec<_>>()
    );
    telemetry
}

/// A simulated fleet's run: `limit` readings from `start`, `every` seconds apart.
struct Fleet<'a> {
    seed: u64,
    limit: u64,
    start: &'a str,
    every: f64,
}

/// The readings of `fleet` into the table at `lake` (with the sink options `sink`) and, as
/// they were, into `direct`.
async fn write(dir: &Path, lake: &Path, direct: &Path, fleet: Fleet<'_>, sink: &str) {
    let Fleet {
        seed,
        limit,
        start,
        every,
    } = fleet;
    let text = format!(
        "data_dir: '{d}/state-{seed}'
api: {{ enabled: false }}
sources:
  fleet: {{ type: simulator, devices: 3, seed: {seed}, limit: {limit}, realtime: false, rate: {rate}, start_time: '{start}', batch_size: 25 }}
sinks:
  lake:
    type: delta_lake
    inputs: [fleet]
    uri: '{lake}'
    buffer: {{ type: memory }}
    {sink}
  direct: {{ type: file, inputs: [fleet], path: '{direct}' }}
",
        d = dir.display(),
        rate = 1.0 / every,
        lake = lake.display(),
        direct = direct.display(),
    );
    run_to_end(&text, RunMode::Live).await;
}

/// Reads the table at `lake` with the source options `options` into `out`.
async fn read(dir: &Path, lake: &Path, out: &Path, options: &str, run: RunMode) -> Arc<Telemetry> {
    let text = format!(
        "data_dir: '{d}/state-read'
api: {{ enabled: false }}
sources:
  archive: {{ type: delta_lake, uri: '{lake}'{options} }}
sinks:
  out: {{ type: file, inputs: [archive], path: '{out}' }}
",
        d = dir.display(),
        lake = lake.display(),
        out = out.display(),
    );
    run_to_end(&text, run).await
}

/// A reading as the pipeline sees it: device, event time, and its fields.
fn reading(line: &Value) -> (String, String, String, String) {
    let text = |v: &Value| v.to_string();
    (
        line["device_id"].as_str().unwrap_or_default().to_owned(),
        line["meta"]["event_time"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        text(&line["temperature"]),
        text(&line["vibration"]),
    )
}

fn readings(path: &Path) -> Vec<(String, String, String, String)> {
    let mut all: Vec<_> = lines(path).iter().map(reading).collect();
    all.sort();
    all
}

fn files(telemetry: &Arc<Telemetry>, outcome: &str) -> f64 {
    metric(
        telemetry,
        "source_files_total",
        &[
            "component_id=\"archive\"",
            &format!("outcome=\"{outcome}\""),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_source_reads_back_every_row_and_an_older_version_by_time_travel() {
    let dir = tempfile::tempdir().unwrap();
    let (lake, first, second) = (
        dir.path().join("lake"),
        dir.path().join("first.ndjson"),
        dir.path().join("second.ndjson"),
    );
    write(
        dir.path(),
        &lake,
        &first,
        Fleet {
            seed: 1,
            limit: 300,
            start: "2026-12-01T00:00:00Z",
            every: 1.0,
        },
        "",
    )
    .await;
    let between = jiff::Timestamp::now();
    // The next commit's log entry must be younger than `between` (milliseconds).
    while jiff::Timestamp::now().as_millisecond() <= between.as_millisecond() + 5 {
        tokio::task::yield_now().await;
    }
    // Another writer (its own app id), another day.
    write(
        dir.path(),
        &lake,
        &second,
        Fleet {
            seed: 2,
            limit: 200,
            start: "2026-12-02T00:00:00Z",
            every: 1.0,
        },
        "app_id: second",
    )
    .await;

    let latest = dir.path().join("latest.ndjson");
    read(dir.path(), &lake, &latest, "", RunMode::Live).await;
    let mut both = readings(&first);
    both.extend(readings(&second));
    both.sort();
    assert_eq!(both.len(), 500);
    assert_eq!(
        readings(&latest),
        both,
        "every row comes back as it was written"
    );

    // Version 0 created the table, version 1 holds the first writer's rows.
    let v1 = dir.path().join("v1.ndjson");
    read(dir.path(), &lake, &v1, ", version: 1", RunMode::Live).await;
    assert_eq!(
        readings(&v1),
        readings(&first),
        "version 1 is the first writer's rows only"
    );

    let at = dir.path().join("at.ndjson");
    read(
        dir.path(),
        &lake,
        &at,
        &format!(", timestamp: '{between}'"),
        RunMode::Live,
    )
    .await;
    assert_eq!(
        readings(&at),
        readings(&first),
        "the table as it was between the two writers"
    );

    // A projection: only the columns asked for become fields.
    let projected = dir.path().join("projected.ndjson");
    read(
        dir.path(),
        &lake,
        &projected,
        ", columns: [temperature]",
        RunMode::Live,
    )
    .await;
    let rows = lines(&projected);
    assert_eq!(rows.len(), 500);
    assert!(
        rows.iter()
            .all(|r| r.get("vibration").is_none() && r.get("temperature").is_some())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_and_event_time_filters_skip_files_and_keep_exactly_the_rows_in_range() {
    let dir = tempfile::tempdir().unwrap();
    let (lake, direct) = (dir.path().join("lake"), dir.path().join("direct.ndjson"));
    // 500 readings 500 s apart: about three days, in commits of 50 rows, by date.
    write(
        dir.path(),
        &lake,
        &direct,
        Fleet {
            seed: 3,
            limit: 500,
            start: "2026-12-01T00:00:00Z",
            every: 500.0,
        },
        "partition_by: [date]\n    batch: { max_events: 50 }",
    )
    .await;
    let written = readings(&direct);
    let on = |day: &str| -> Vec<_> {
        written
            .iter()
            .filter(|r| r.1.starts_with(day))
            .cloned()
            .collect()
    };

    // A day by event time, from statistics (and the batch range of a run, here).
    let day = dir.path().join("day.ndjson");
    let range = RunMode::Batch(BatchRange {
        since: Some("2026-12-02T00:00:00Z".parse().unwrap()),
        until: Some("2026-12-03T00:00:00Z".parse().unwrap()),
    });
    let telemetry = read(dir.path(), &lake, &day, "", range).await;
    assert!(!on("2026-12-02").is_empty());
    assert_eq!(
        readings(&day),
        on("2026-12-02"),
        "exactly the rows of the day"
    );
    let (read_files, skipped) = (files(&telemetry, "read"), files(&telemetry, "skipped"));
    assert!(
        skipped >= 2.0,
        "files of the other days are skipped (skipped {skipped}, read {read_files})"
    );
    assert!(read_files >= 1.0);

    // By partition value.
    let first = dir.path().join("first.ndjson");
    let telemetry = read(
        dir.path(),
        &lake,
        &first,
        ", partition_filters: { date: '2026-12-01' }",
        RunMode::Live,
    )
    .await;
    assert_eq!(readings(&first), on("2026-12-01"));
    assert!(files(&telemetry, "skipped") >= 2.0);

    // A partition column that is not one is an error that says so, not an empty read.
    let mut config = pipeline(&format!(
        "data_dir: '{d}/state-bad'
api: {{ enabled: false }}
sources:
  archive: {{ type: delta_lake, uri: '{lake}', partition_filters: {{ site: plant-1 }} }}
sinks:
  out: {{ type: blackhole, inputs: [archive] }}
",
        d = dir.path().display(),
        lake = lake.display()
    ));
    config.globals.run = RunMode::Live;
    let telemetry = Telemetry::new();
    let mut topology = RunningTopology::start(&config, &telemetry).unwrap();
    tokio::time::timeout(Duration::from_secs(60), topology.wait())
        .await
        .unwrap();
    let failures = topology.stop(Duration::from_secs(5)).await;
    let message = format!("{:#}", failures[0].result.as_ref().unwrap_err());
    assert!(
        message.contains("`site`") && message.contains("not a partition column"),
        "{message}"
    );
}
