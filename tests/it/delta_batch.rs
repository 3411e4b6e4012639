//! The cold path end to end: readings posted live (`http → delta_lake`, with the shipped
//! 1-minute aggregator writing a second table), then recomputed from the raw table by
//! `weir run --batch` with the shipped recompute pipeline and the same aggregator file:
//! the same rows. A rerun of the same range writes nothing; the other shipped batch
//! pipelines (a Redis backfill with `only_newer`, a replay through a corrected filter) do
//! what they say; `--batch` refuses what it cannot run; the timer's units verify clean.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::delta::rows;
use crate::support::services::{self, Broker, Lease};
use crate::support::{Weir, free_port};

/// A shipped pipeline file.
fn shipped(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("pipelines/batch")
        .join(name)
}

/// `weir run --batch ARGS` in `dir` (relative table paths resolve there).
fn batch(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["run", "--batch"])
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "info")
        .output()
        .expect("run weir run --batch")
}

fn table(dir: &Path, name: &str) -> url::Url {
    url::Url::from_directory_path(dir.join(".weir/lake").join(name)).unwrap()
}

/// The rows of a table without `received_at` (when weir wrote them), sorted.
async fn contents(url: &url::Url) -> Vec<BTreeMap<String, Value>> {
    let mut all: Vec<_> = rows(url, &Default::default())
        .await
        .into_iter()
        .map(|mut row| {
            row.remove("received_at");
            row
        })
        .collect();
    all.sort_by_key(|row| serde_json::to_string(row).unwrap());
    all
}

/// Equal keys and counts, floats within 1e-9 relative (summation order may differ).
fn same_rows(live: &[BTreeMap<String, Value>], batch: &[BTreeMap<String, Value>]) {
    assert_eq!(live.len(), batch.len(), "as many rows");
    for (a, b) in live.iter().zip(batch) {
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        for (key, x) in a {
            let y = &b[key];
            match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) if !x.is_nan() => {
                    let scale = x.abs().max(y.abs()).max(f64::MIN_POSITIVE);
                    assert!(
                        (x - y).abs() / scale <= 1e-9,
                        "{key}: {x} vs {y} in {a:?} / {b:?}"
                    );
                }
                _ => assert_eq!(x, y, "{key} in {a:?} / {b:?}"),
            }
        }
    }
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

const DEVICES: usize = 3;
const PER_DEVICE: usize = 120;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_recompute_of_live_aggregates_gives_the_same_rows_and_a_rerun_adds_none() {
    let dir = tempfile::tempdir().unwrap();
    let (port, api) = (free_port(), free_port());
    // The live pipeline, with the shipped aggregator file as it is appended.
    let live = dir.path().join("live.yaml");
    let aggregator = std::fs::read_to_string(shipped("minute-aggregates.yaml")).unwrap();
    std::fs::write(
        &live,
        format!(
            "data_dir: .weir/live
api: {{ listen: 127.0.0.1:{api} }}
sources:
  readings: {{ type: http, listen: 127.0.0.1:{port}, event_time: ts }}
sinks:
  raw:
    type: delta_lake
    inputs: [readings]
    uri: .weir/lake/telemetry
    partition_by: [date]
    batch: {{ timeout: 300ms }}
  minute_live:
    type: delta_lake
    inputs: [minute]
    uri: .weir/lake/minute-live
    partition_by: [date]
    batch: {{ timeout: 300ms }}
{aggregator}"
        ),
    )
    .unwrap();
    let weir = Weir::start(
        dir.path(),
        &live,
        format!("127.0.0.1:{api}").parse().unwrap(),
    )
    .await;
    // Each device in event-time order (no late events): every 5 s from 10:00 for ten
    // minutes, then one reading at 11:00 that closes its windows of the range.
    let client = reqwest::Client::new();
    let mut posts = Vec::new();
    for device in 0..DEVICES {
        let client = client.clone();
        posts.push(tokio::spawn(async move {
            let mut readings: Vec<Value> = (0..PER_DEVICE)
                .map(|n| {
                    let seconds = n * 5;
                    let temperature = 15.0 + ((n * 7919 + device * 104_729) % 1000) as f64 / 37.0;
                    json!({"ts": format!("2026-12-01T10:{:02}:{:02}Z", seconds / 60, seconds % 60), "temperature": temperature})
                })
                .collect();
            readings.push(json!({"ts": "2026-12-01T11:00:00Z", "temperature": 0.5}));
            for chunk in readings.chunks(20) {
                let answer = client
                    .post(format!("http://127.0.0.1:{port}/v1/devices/cold-{device}/messages"))
                    .json(chunk)
                    .send()
                    .await
                    .unwrap();
                assert!(answer.status().is_success(), "{}", answer.status());
            }
        }));
    }
    for post in posts {
        post.await.unwrap();
    }
    let in_range = |rows: &[BTreeMap<String, Value>]| -> Vec<BTreeMap<String, Value>> {
        rows.iter()
            .filter(|r| {
                r["window_start"]
                    .as_str()
                    .is_some_and(|s| s < "2026-12-01T10:10")
            })
            .cloned()
            .collect()
    };
    let (raw, live_table) = (
        table(dir.path(), "telemetry"),
        table(dir.path(), "minute-live"),
    );
    let mut live_rows = Vec::new();
    for _ in 0..600 {
        live_rows = in_range(&contents(&live_table).await);
        if live_rows.len() == DEVICES * 10
            && rows(&raw, &Default::default()).await.len() == DEVICES * (PER_DEVICE + 1)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(live_rows.len(), DEVICES * 10, "ten windows a device, live");
    assert!(
        tokio::task::spawn_blocking(move || weir.terminate())
            .await
            .unwrap()
            .success()
    );

    let range = [
        "--since",
        "2026-12-01T10:00:00Z",
        "--until",
        "2026-12-01T10:10:00Z",
    ];
    let recompute = [
        shipped("recompute-minute-aggregates.yaml"),
        shipped("minute-aggregates.yaml"),
    ];
    let files: Vec<&str> = recompute.iter().map(|p| p.to_str().unwrap()).collect();
    let args: Vec<&str> = range.iter().copied().chain(files.iter().copied()).collect();
    let first = batch(dir.path(), &args);
    assert!(
        first.status.success(),
        "the batch run failed: {}",
        stderr(&first)
    );
    let recomputed = table(dir.path(), "minute-aggregates-recomputed");
    let batch_rows = contents(&recomputed).await;
    assert!(
        batch_rows.iter().all(|r| r.get("partial").is_none()),
        "complete windows"
    );
    same_rows(&live_rows, &batch_rows);
    assert!(
        live_rows
            .iter()
            .all(|r| r["readings"].as_f64() == Some(12.0))
    );

    // The timer fires twice: the range is in the table once.
    let again = batch(dir.path(), &args);
    assert!(
        again.status.success(),
        "the rerun failed: {}",
        stderr(&again)
    );
    assert!(
        stderr(&again).contains("committed this range"),
        "{}",
        stderr(&again)
    );
    same_rows(&batch_rows, &contents(&recomputed).await);

    // Another range is another commit.
    let later = [
        "--since",
        "2026-12-01T10:00:00Z",
        "--until",
        "2026-12-01T12:00:00Z",
    ];
    let args: Vec<&str> = later.iter().copied().chain(files.iter().copied()).collect();
    assert!(batch(dir.path(), &args).status.success());
    let widened = contents(&recomputed).await;
    assert!(
        widened.len() > batch_rows.len(),
        "the tail windows of the wider range"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_refuses_an_unbounded_source_and_fails_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let http = dir.path().join("http.yaml");
    std::fs::write(
        &http,
        format!(
            "data_dir: state\nsources:\n  devices: {{ type: http, listen: 127.0.0.1:{} }}\nsinks:\n  out: {{ type: blackhole, inputs: [devices] }}\n",
            free_port()
        ),
    )
    .unwrap();
    let refused = batch(dir.path(), &[http.to_str().unwrap()]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("runs until stopped"),
        "{}",
        stderr(&refused)
    );

    let missing = dir.path().join("missing.yaml");
    std::fs::write(
        &missing,
        "data_dir: state\nsources:\n  archive: { type: delta_lake, uri: no-such-table }\nsinks:\n  out: { type: blackhole, inputs: [archive] }\n",
    )
    .unwrap();
    let failed = batch(dir.path(), &[missing.to_str().unwrap()]);
    assert!(
        !failed.status.success(),
        "a batch run that cannot read exits non-zero"
    );
    assert!(
        stderr(&failed).contains("cannot plan the read"),
        "{}",
        stderr(&failed)
    );
}

/// Simulated readings into `dir/.weir/lake/telemetry`, as the live pipeline writes them.
async fn archive(dir: &Path, prefix: &str, seed: u64, fields: &str) {
    let text = format!(
        "data_dir: '{d}/.weir/writer'
api: {{ enabled: false }}
sources:
  fleet: {{ type: simulator, devices: 4, device_prefix: '{prefix}', seed: {seed}, limit: 400, realtime: false, rate: 1, start_time: '2026-12-01T10:00:00Z'{fields} }}
sinks:
  raw: {{ type: delta_lake, inputs: [fleet], uri: '{d}/.weir/lake/telemetry', partition_by: [date], buffer: {{ type: memory }} }}
",
        d = dir.display()
    );
    let config = crate::support::pipeline(&text);
    let telemetry = weir::telemetry::Telemetry::new();
    let mut topology = weir::topology::RunningTopology::start(&config, &telemetry).unwrap();
    tokio::time::timeout(Duration::from_secs(60), topology.wait())
        .await
        .unwrap();
    assert!(topology.stop(Duration::from_secs(10)).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_fills_redis_with_each_devices_latest_reading_and_keeps_fresher_state() {
    let _redis = Lease::shared(&[Broker::Redis]).await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("backfill-{}-", std::process::id());
    archive(dir.path(), &prefix, 11, "").await;
    let raw = rows(&table(dir.path(), "telemetry"), &Default::default()).await;
    assert_eq!(raw.len(), 400);
    let mut redis = redis::Client::open(format!("{}/0", services::redis()))
        .unwrap()
        .get_connection()
        .unwrap();
    let devices: std::collections::BTreeSet<String> = raw
        .iter()
        .map(|r| r["device_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(devices.len(), 4);
    let keys: Vec<String> = devices.iter().map(|d| format!("device:{d}")).collect();
    let _: () = redis::cmd("DEL").arg(&keys).query(&mut redis).unwrap();
    // The live pipeline wrote a newer reading for one device after the outage.
    let fresher = &keys[0];
    let _: () = redis::cmd("HSET")
        .arg(fresher)
        .arg("temperature")
        .arg("-1")
        .arg("event_time_ms")
        .arg("1893456000000")
        .query(&mut redis)
        .unwrap();

    let output = batch(
        dir.path(),
        &[shipped("backfill-redis-warm-state.yaml").to_str().unwrap()],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    for (device, key) in devices.iter().zip(&keys) {
        let latest = raw
            .iter()
            .filter(|r| r["device_id"] == device.as_str())
            .max_by_key(|r| r["time"].as_i64())
            .unwrap();
        let stored: BTreeMap<String, String> =
            redis::cmd("HGETALL").arg(key).query(&mut redis).unwrap();
        if key == fresher {
            assert_eq!(stored["temperature"], "-1", "the fresher live state stays");
        } else {
            assert_eq!(
                stored["event_time_ms"].parse::<i64>().unwrap(),
                latest["time"].as_i64().unwrap() / 1000,
                "{device}: its latest reading"
            );
            assert_eq!(
                stored["temperature"].parse::<f64>().unwrap(),
                latest["temperature"].as_f64().unwrap()
            );
        }
    }
    let _: () = redis::cmd("DEL").arg(&keys).query(&mut redis).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_through_the_corrected_filter_keeps_exactly_the_plausible_readings() {
    let dir = tempfile::tempdir().unwrap();
    // Around 0 °C, with spikes far above 150: some readings on each side of each bound.
    archive(
        dir.path(),
        "replay-",
        12,
        ", fields: { temperature: { base: 2.0, spread: 3.0, noise: 4.0, spike_probability: 0.05, spike: 400.0 } }",
    )
    .await;
    let raw = rows(&table(dir.path(), "telemetry"), &Default::default()).await;
    let plausible = |r: &BTreeMap<String, Value>| {
        r["temperature"]
            .as_f64()
            .is_some_and(|t| (-40.0..=150.0).contains(&t))
    };
    let expected: Vec<_> = raw.iter().filter(|r| plausible(r)).collect();
    assert!(
        raw.iter().any(|r| r["temperature"].as_f64().unwrap() < 0.0),
        "readings below 0"
    );
    assert!(expected.len() < raw.len(), "readings the filter drops");

    let output = batch(
        dir.path(),
        &[
            "--since",
            "2026-12-01",
            "--until",
            "2026-12-02",
            shipped("replay-corrected-filter.yaml").to_str().unwrap(),
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let key = |r: &BTreeMap<String, Value>| {
        (
            r["device_id"].to_string(),
            r["time"].as_i64(),
            r["temperature"].to_string(),
        )
    };
    let mut want: Vec<_> = expected.iter().map(|r| key(r)).collect();
    let mut got: Vec<_> = rows(
        &table(dir.path(), "telemetry-corrected"),
        &Default::default(),
    )
    .await
    .iter()
    .map(key)
    .collect();
    want.sort();
    got.sort();
    assert_eq!(
        got, want,
        "the replayed table: the plausible readings, event times kept"
    );
}

#[test]
fn the_batch_units_verify_clean() {
    let root = tempfile::tempdir().unwrap();
    let units = root.path().join("usr/lib/systemd/system");
    std::fs::create_dir_all(&units).unwrap();
    let copied = Command::new("cp")
        .arg("-a")
        .arg("/usr/lib/systemd/system/.")
        .arg(&units)
        .status()
        .expect("cp");
    assert!(copied.success());
    for unit in ["weir-batch@.service", "weir-batch@.timer"] {
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("packaging/systemd")
                .join(unit),
            units.join(unit),
        )
        .unwrap();
    }
    let bin = root.path().join("usr/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_weir"), bin.join("weir")).unwrap();
    let verify = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(format!("--root={}", root.path().display()))
        .args([
            "/usr/lib/systemd/system/weir-batch@nightly.service",
            "/usr/lib/systemd/system/weir-batch@nightly.timer",
        ])
        .output()
        .expect("systemd-analyze (the systemd package) is needed");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        stderr(&verify)
    );
    assert!(
        verify.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );
}

#[test]
fn the_shipped_batch_pipelines_validate() {
    for files in [
        vec!["recompute-minute-aggregates.yaml", "minute-aggregates.yaml"],
        vec!["backfill-redis-warm-state.yaml"],
        vec!["replay-corrected-filter.yaml"],
        vec!["site-hourly-from-snapshot.yaml"],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_weir"))
            .arg("validate")
            .args(files.iter().map(|f| shipped(f)))
            .output()
            .unwrap();
        assert!(output.status.success(), "{files:?}: {}", stderr(&output));
    }
}
