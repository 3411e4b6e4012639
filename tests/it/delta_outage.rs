//! The cold path under faults: `http → delta_lake` with a disk buffer, while the Delta
//! target is unreachable (a local table made read-only, an Azurite object store stopped)
//! and while the buffer's own disk is full; and the buffer's metrics in Vector's
//! vocabulary.
//!
//! What every fault test asserts: devices keep being answered (2xx while the buffer takes
//! the readings; 503, never a loss or a crash, once the buffer's disk is full), and once
//! the fault is gone every acknowledged reading is in the table exactly once, read back
//! with the `deltalake` crate. The two outages last two minutes each, as the issue asks;
//! they wait on the clock, the rest waits for what it checks.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support::azurite::Azurite;
use crate::support::load::{self, Answer, Load, Shape};
use crate::support::mounts::{ReadOnly, Tmpfs};
use crate::support::{Weir, delta, free_port, metric_in};

/// How long the target stays unreachable.
const OUTAGE: Duration = Duration::from_secs(120);

/// Steady load for the outages: 200 readings/s from two clients.
const STEADY: Shape = Shape {
    clients: 2,
    readings: 10,
    every: Duration::from_millis(100),
    padding: 0,
};

/// The series of the sink's disk buffer.
const DISK: [&str; 2] = ["component_id=\"lake\"", "buffer_type=\"disk\""];

/// `http → delta_lake` with a disk buffer; `source` and `sink` add options to each.
fn write_pipeline(dir: &Path, port: u16, api: u16, source: &str, sink: &str) -> PathBuf {
    let pipeline = dir.join("pipeline.yaml");
    std::fs::write(
        &pipeline,
        format!(
            "api: {{ listen: 127.0.0.1:{api} }}
data_dir: state
sources:
  devices: {{ type: http, listen: 127.0.0.1:{port}, ack: on_commit{source} }}
sinks:
  lake:
    type: delta_lake
    inputs: [devices]
    batch: {{ timeout: 1s }}
    retry: {{ max_backoff: 5s }}
{sink}"
        ),
    )
    .expect("write the pipeline");
    pipeline
}

async fn start(dir: &Path, pipeline: &Path, api: u16) -> Weir {
    Weir::start(
        dir,
        pipeline,
        format!("127.0.0.1:{api}").parse().expect("an address"),
    )
    .await
}

/// Posts readings `ids` as device `device`; the status (0: no answer).
async fn post(port: u16, device: &str, ids: std::ops::Range<u64>) -> u16 {
    reqwest::Client::new()
        .post(format!(
            "http://127.0.0.1:{port}/v1/devices/{device}/messages"
        ))
        .json(&load::readings(ids, 0))
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

/// A directory with a pipeline into the local table `lake`, not started yet.
struct Local {
    dir: tempfile::TempDir,
    lake: PathBuf,
    port: u16,
    api: u16,
    pipeline: PathBuf,
}

impl Local {
    /// `source`: more options of the http source; `buffer`: the sink's buffer options.
    fn new(source: &str, buffer: &str) -> Local {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (port, api) = (free_port(), free_port());
        let pipeline = write_pipeline(
            dir.path(),
            port,
            api,
            source,
            &format!("    uri: lake\n    buffer: {{ {buffer} }}\n"),
        );
        Local {
            lake: dir.path().join("lake"),
            dir,
            port,
            api,
            pipeline,
        }
    }

    fn table(&self) -> Table {
        Table::local(&self.lake)
    }

    async fn start(&self) -> Weir {
        start(self.dir.path(), &self.pipeline, self.api).await
    }
}

/// A table and how to reach it.
struct Table {
    url: url::Url,
    options: HashMap<String, String>,
}

impl Table {
    fn local(root: &Path) -> Table {
        Table {
            url: url::Url::from_directory_path(root).expect("an absolute path"),
            options: HashMap::new(),
        }
    }

    async fn ids(&self) -> BTreeMap<u64, usize> {
        delta::ids(&self.url, &self.options).await
    }

    /// Polls until the table holds every id of `expected` (or `timeout` passed).
    async fn wait_for(&self, expected: &BTreeSet<u64>, timeout: Duration) -> BTreeMap<u64, usize> {
        let deadline = Instant::now() + timeout;
        loop {
            let ids = self.ids().await;
            if expected.iter().all(|id| ids.contains_key(id)) || Instant::now() >= deadline {
                return ids;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Polls until the first rows are committed.
    async fn wait_for_first_rows(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.ids().await.is_empty() {
            assert!(
                Instant::now() < deadline,
                "no rows reached {} within 60 s",
                self.url
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Every acknowledged reading is in the table once; nothing else is there twice.
fn assert_exactly_once(table: &BTreeMap<u64, usize>, acknowledged: &BTreeSet<u64>) {
    let missing: Vec<u64> = acknowledged
        .iter()
        .filter(|id| !table.contains_key(id))
        .copied()
        .collect();
    let twice: Vec<(u64, usize)> = table
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, n)| (*id, *n))
        .collect();
    assert!(
        missing.is_empty() && twice.is_empty(),
        "of {} acknowledged readings, {} are missing (first: {:?}); {} rows are duplicated (first: {:?})",
        acknowledged.len(),
        missing.len(),
        missing.iter().take(5).collect::<Vec<_>>(),
        twice.len(),
        twice.iter().take(5).collect::<Vec<_>>()
    );
}

fn assert_all_2xx(answers: &[Answer], when: &str) {
    let statuses = load::statuses(answers);
    assert!(
        !answers.is_empty() && answers.iter().all(Answer::acknowledged),
        "{when}: every request should be answered 2xx; answers by status: {statuses:?}"
    );
}

/// Keeps the load running through `OUTAGE`, checking on the way that nothing but 2xx came.
async fn ride_out(load: &Load, what: &str) {
    let until = Instant::now() + OUTAGE;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_secs(10).min(until - Instant::now())).await;
        assert_all_2xx(&load.answers(), what);
    }
}

/// The end of an outage: a little more load once the target is back, every request
/// answered 2xx, every reading in the table once (within `timeout`), a clean stop.
async fn after_the_outage(load: Load, table: &Table, weir: Weir, timeout: Duration) {
    tokio::time::sleep(Duration::from_secs(2)).await;
    let answers = load.stop().await;
    assert_all_2xx(&answers, "after the outage");
    let acknowledged = load::acknowledged(&answers);
    let ids = table.wait_for(&acknowledged, timeout).await;
    assert_exactly_once(&ids, &acknowledged);
    assert_eq!(
        ids.len(),
        acknowledged.len(),
        "nothing in the table that was not sent"
    );
    stop(weir).await;
}

async fn stop(weir: Weir) {
    let status = tokio::task::spawn_blocking(move || weir.terminate())
        .await
        .expect("join");
    assert!(status.success(), "weir exits cleanly: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_read_only_local_table_for_two_minutes_http_keeps_answering_and_every_reading_lands_once()
 {
    let local = Local::new("", "type: disk");
    let table = local.table();
    let weir = local.start().await;
    let load = Load::start(local.port, "outage-local", STEADY);
    table.wait_for_first_rows().await;

    let read_only = ReadOnly::mount(&local.lake);
    let before = weir.metrics().await;
    ride_out(&load, "while the table is read-only").await;
    let during = weir.metrics().await;
    let retried = |m: &str| metric_in(m, "sink_retries_total", &["component_id=\"lake\""]);
    assert!(
        retried(&during) > retried(&before),
        "the sink retries while the table is read-only"
    );
    assert!(
        metric_in(&during, "buffer_events", &DISK) > 0.0,
        "the buffer holds what the table could not take"
    );
    read_only.release();
    after_the_outage(load, &table, weir, Duration::from_secs(120)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_azurite_stopped_for_two_minutes_http_keeps_answering_and_every_reading_lands_once()
{
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut azurite = {
        let location = dir.path().join("azurite");
        tokio::task::spawn_blocking(move || Azurite::start(&location))
            .await
            .expect("join")
    };
    azurite.create_container("outage").await;
    let table = Table {
        url: url::Url::parse("az://outage/telemetry").expect("a URL"),
        options: azurite.storage_options(),
    };
    let options: String = Azurite::emulator_options()
        .iter()
        .map(|(key, value)| format!("      {key}: \"{value}\"\n"))
        .collect();
    let (port, api) = (free_port(), free_port());
    let pipeline = write_pipeline(
        dir.path(),
        port,
        api,
        "",
        &format!(
            "    uri: {}\n    buffer: {{ type: disk }}\n    storage_options:\n{options}",
            table.url
        ),
    );
    let (variable, azurite_url) = azurite.url_variable();
    let weir = Weir::start_with_env(
        dir.path(),
        &pipeline,
        format!("127.0.0.1:{api}").parse().expect("an address"),
        &[(variable, &azurite_url)],
    )
    .await;
    let load = Load::start(port, "outage-azure", STEADY);
    table.wait_for_first_rows().await;

    let mut azurite = tokio::task::spawn_blocking(move || {
        azurite.stop();
        azurite
    })
    .await
    .expect("join");
    ride_out(&load, "while Azurite is stopped").await;
    assert!(
        metric_in(&weir.metrics().await, "buffer_events", &DISK) > 0.0,
        "the buffer holds what the store could not take"
    );
    let _azurite = tokio::task::spawn_blocking(move || {
        azurite.restart();
        azurite
    })
    .await
    .expect("join");
    after_the_outage(load, &table, weir, Duration::from_secs(180)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_full_buffer_disk_answers_503_loses_nothing_and_recovers() {
    let local = Local::new(
        ", queue_timeout: 2s, ack_timeout: 5s",
        "type: disk, max_size: 64MiB",
    );
    // `data_dir` on 2 MiB, far below the buffer's `max_size`: the disk fills first.
    let _state = Tmpfs::mount(&local.dir.path().join("state"), 2 << 20);
    let table = local.table();
    let port = local.port;
    let mut weir = local.start().await;
    // A first reading creates the table (ids apart from the load's).
    let first = 1_000_000..1_000_010;
    assert_eq!(post(port, "outage-disk", first.clone()).await, 200);
    table.wait_for_first_rows().await;

    // The target is unreachable: everything stays in the buffer, until its disk is full.
    // The padding fills it faster, and is a column the table does not have yet: the sink
    // has to add it while the table is read-only, and again once it is back.
    let read_only = ReadOnly::mount(&local.lake);
    let fill = Shape {
        clients: 2,
        readings: 50,
        every: Duration::from_millis(50),
        padding: 200,
    };
    let load = Load::start(port, "outage-disk", fill);
    let refused = |answers: &[Answer]| answers.iter().filter(|a| a.status == 503).count();
    let deadline = Instant::now() + Duration::from_secs(90);
    while refused(&load.answers()) < 10 {
        assert!(
            Instant::now() < deadline,
            "no 503 within 90 s of filling a 2 MiB disk; answers by status: {:?}",
            load::statuses(&load.answers())
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let full = weir.metrics().await;
    assert!(
        weir.child.try_wait().expect("wait").is_none(),
        "weir is still running with its disk full"
    );
    let io_errors = metric_in(
        &full,
        "component_errors_total",
        &[
            "component_id=\"lake\"",
            "error_type=\"io_failed\"",
            "stage=\"receiving\"",
        ],
    );
    assert!(io_errors > 0.0, "the failed appends are counted");
    assert!(
        metric_in(
            &full,
            "http_server_requests_total",
            &["component_id=\"devices\"", "status=\"503\""]
        ) > 0.0,
        "the 503 answers are counted"
    );
    assert!(
        metric_in(&full, "buffer_byte_size", &DISK) > f64::from(1u32 << 20),
        "the buffer holds most of the disk: {}",
        metric_in(&full, "buffer_byte_size", &DISK)
    );
    let statuses = load::statuses(&load.answers());
    assert!(
        statuses.keys().all(|s| matches!(s, 200 | 503)),
        "a full disk is 200 or 503, never a loss (500) or a dropped connection: {statuses:?}"
    );

    // The target comes back: the sink commits, the buffer trims, appends succeed again.
    read_only.release();
    let resumed_after = load.answers().len();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let recent = &load.answers()[resumed_after..];
        if recent.iter().filter(|a| a.acknowledged()).count() >= 20 {
            break;
        }
        if Instant::now() >= deadline {
            let metrics = weir.metrics().await;
            panic!(
                "HTTP answers 2xx again within 120 s of the target's return; since then: {:?}\nthe sink's series:\n{}\nin data_dir:\n{}",
                load::statuses(recent),
                series_of(&metrics, "component_id=\"lake\""),
                files(&local.dir.path().join("state"))
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut acknowledged = load::acknowledged(&load.stop().await);
    acknowledged.extend(first);
    let ids = table
        .wait_for(&acknowledged, Duration::from_secs(120))
        .await;
    assert_exactly_once(&ids, &acknowledged);
    stop(weir).await;
}

/// The lines of the exposition that carry `label`.
fn series_of(metrics: &str, label: &str) -> String {
    metrics
        .lines()
        .filter(|line| line.contains(label))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every file below `dir` with its size, one a line.
fn files(dir: &Path) -> String {
    let mut out = String::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        match path.is_dir() {
            true => out.push_str(&files(&path)),
            false => {
                let size = entry.metadata().map_or(0, |m| m.len());
                out.push_str(&format!("{} {size}\n", path.display()));
            }
        }
    }
    out
}

/// The five series Vector's operators know, for a disk buffer, and the unit each counts.
const VOCABULARY: [(&str, &str, &str); 5] = [
    ("buffer_byte_size", "gauge", "Bytes"),
    ("buffer_events", "gauge", "Events (not batches)"),
    (
        "buffer_received_events_total",
        "counter",
        "Events (not batches)",
    ),
    (
        "buffer_sent_events_total",
        "counter",
        "Events (not batches)",
    ),
    (
        "buffer_discarded_events_total",
        "counter",
        "Events (not batches)",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_disk_buffer_metrics_speak_vectors_vocabulary_in_events() {
    let local = Local::new("", "type: disk");
    let (port, weir) = (local.port, local.start().await);
    // 12 requests of 25 readings: counted in events, a batch count would be 12.
    for request in 0..12u64 {
        let status = post(port, "outage-metrics", request * 25..request * 25 + 25).await;
        assert_eq!(status, 200, "request {request}");
    }
    let sent: BTreeSet<u64> = (0..300).collect();
    let ids = local.table().wait_for(&sent, Duration::from_secs(60)).await;
    assert_exactly_once(&ids, &sent);
    // The gauge follows the acknowledgement of the committed records.
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let metrics = weir.metrics().await;
        if metric_in(&metrics, "buffer_events", &DISK) == 0.0 || Instant::now() > deadline {
            break metrics;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    for (name, kind, unit) in VOCABULARY {
        let family = name.strip_suffix("_total").unwrap_or(name);
        let help = metrics
            .lines()
            .find_map(|line| line.strip_prefix(&format!("# HELP {family} ")))
            .unwrap_or_else(|| panic!("no HELP for {family}"));
        assert!(
            help.starts_with(unit),
            "{family} states its unit `{unit}`: {help}"
        );
        assert!(
            metrics.contains(&format!("# TYPE {family} {kind}")),
            "{family} is a {kind}"
        );
        let exported = metrics.lines().any(|line| {
            line.starts_with(&format!("{name}{{")) && DISK.iter().all(|l| line.contains(l))
        });
        assert!(exported, "{name} is exported for the disk buffer");
    }
    assert_eq!(
        metric_in(&metrics, "buffer_received_events_total", &DISK),
        300.0
    );
    assert_eq!(
        metric_in(&metrics, "buffer_sent_events_total", &DISK),
        300.0
    );
    assert_eq!(
        metric_in(&metrics, "buffer_discarded_events_total", &DISK),
        0.0
    );
    assert_eq!(metric_in(&metrics, "buffer_events", &DISK), 0.0);
    assert!(metric_in(&metrics, "buffer_byte_size", &DISK) > 0.0);
    assert_eq!(
        metric_in(&metrics, "buffer_max_byte_size", &DISK),
        f64::from(1u32 << 30),
        "the capacity, in bytes: the default `max_size`"
    );
    // No buffer series named in events may count anything else.
    for line in metrics.lines().filter(|l| l.starts_with("# HELP buffer_")) {
        let (name, help) = line["# HELP ".len()..].split_once(' ').unwrap_or_default();
        assert!(
            !(name.contains("events") && help.contains("batches") && !help.contains("not batches")),
            "{name} is named in events but counts batches: {help}"
        );
    }
    stop(weir).await;
}
