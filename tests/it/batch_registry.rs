//! A batch run's device registry: the live fleet exported through the API of a running
//! weir (`weir devices export`), loaded by `weir run --batch` as `registry: { snapshot }`
//! and joined by `enrich` (the shipped site-hourly pipeline, and a plain enriched replay),
//! while the live weir keeps its store locked; the export imports into another weir; a
//! batch run pointed at the locked store fails saying which file and what to do instead;
//! a live weir refuses a snapshot.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::delta::rows;
use crate::support::{Weir, eventually, free_port, registry_pipeline};

fn shipped(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("pipelines/batch")
        .join(name)
}

fn weir(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "info")
        .output()
        .expect("run weir")
}

/// `weir devices --api … ARGS` as the admin of `live`.
fn devices(dir: &Path, live: &Weir, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["devices", "--api", &format!("http://{}", live.api)])
        .args(args)
        .current_dir(dir)
        .env("WEIR_TOKEN", &live.token)
        .output()
        .expect("run weir devices")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn api(port: u16) -> SocketAddr {
    format!("127.0.0.1:{port}").parse().unwrap()
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

const READINGS: usize = 400;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_run_enriches_the_archive_from_an_export_of_the_running_registry() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // Live: simulated readings into the cold table, the registry, and a lifecycle source
    // that keeps weir running once the simulator is done.
    let live = dir.path().join("live.yaml");
    std::fs::write(
        &live,
        format!(
            "data_dir: .weir/live
api: {{ listen: 127.0.0.1:{port} }}
registry: {{ path: registry.redb }}
sources:
  fleet: {{ type: simulator, devices: 4, device_prefix: 'snap-', seed: 19, limit: {READINGS}, realtime: false, rate: 1, start_time: '2026-12-01T10:00:00Z', fields: {{ temperature: {{ base: 20.0, spread: 3.0, noise: 1.0 }} }} }}
  lifecycle: {{ type: device_registry }}
sinks:
  raw: {{ type: delta_lake, inputs: [fleet], uri: .weir/lake/telemetry, partition_by: [date], batch: {{ timeout: 300ms }} }}
  changes: {{ type: blackhole, inputs: [lifecycle] }}
"
        ),
    )
    .unwrap();
    let weir_live = Weir::start(dir.path(), &live, api(port)).await;
    let table = url::Url::from_directory_path(dir.path().join(".weir/lake/telemetry")).unwrap();
    // `rows` panics on a local table directory that does not exist yet.
    let log = dir.path().join(".weir/lake/telemetry/_delta_log");
    assert!(
        eventually(Duration::from_secs(30), || log.exists()).await,
        "the archive's first commit"
    );
    let mut raw = Vec::new();
    for _ in 0..300 {
        raw = rows(&table, &Default::default()).await;
        if raw.len() == READINGS {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(raw.len(), READINGS, "the archive");
    let ids: std::collections::BTreeSet<String> = raw
        .iter()
        .map(|r| r["device_id"].as_str().unwrap().to_owned())
        .collect();
    let ids: Vec<String> = ids.into_iter().collect();
    assert_eq!(ids.len(), 4);

    // The fleet: three of the four devices registered (the fourth stays unknown), one
    // disabled, one with a desired property set after it was made.
    let registered = [
        json!({ "id": ids[0], "tags": { "site": "north", "max_temp": 80 } }),
        json!({ "id": ids[1], "tags": { "site": "north", "max_temp": 85 }, "status": "disabled" }),
        json!({ "id": ids[2], "tags": { "site": "south", "max_temp": 90 } }),
    ];
    for device in &registered {
        let made = weir_live
            .request(reqwest::Method::POST, "/v1/devices")
            .json(device)
            .send()
            .await
            .unwrap();
        assert_eq!(made.status(), 201);
    }
    let patched = weir_live
        .request(
            reqwest::Method::PATCH,
            &format!("/v1/devices/{}/twin/desired", ids[2]),
        )
        .json(&json!({ "fan": "high" }))
        .send()
        .await
        .unwrap();
    assert!(patched.status().is_success(), "{}", patched.status());

    // The export, while the live weir runs: the three devices, their tags, status and
    // twin, no keys, in one page after another (`--page 2`).
    let site_state = dir.path().join(".weir/batch/site-hourly");
    std::fs::create_dir_all(&site_state).unwrap();
    let snapshot = site_state.join("fleet.ndjson");
    let exported = devices(
        dir.path(),
        &weir_live,
        &[
            "export",
            "--page",
            "2",
            "--output",
            snapshot.to_str().unwrap(),
        ],
    );
    assert!(exported.status.success(), "{}", stderr(&exported));
    let summary: Value = serde_json::from_slice(&exported.stdout).unwrap();
    assert_eq!(summary["devices"], 3);
    let lines_written = lines(&snapshot);
    assert_eq!(lines_written.len(), 3);
    for (line, device) in lines_written.iter().zip(&registered) {
        assert_eq!(line["id"], device["id"]);
        assert_eq!(line["tags"], device["tags"]);
        assert!(
            line.get("primary_key").is_none(),
            "no keys unless asked: {line}"
        );
        assert!(
            line.get("etag").is_none(),
            "only what an import reads: {line}"
        );
    }
    assert_eq!(lines_written[1]["status"], "disabled");
    assert_eq!(lines_written[2]["desired"], json!({ "fan": "high" }));
    let leftovers: Vec<_> = std::fs::read_dir(&site_state)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, ["fleet.ndjson"], "no partial file left");

    // With keys, as CSV: imported into another weir, the same devices with the same keys.
    let with_keys = dir.path().join("fleet-keys.csv");
    let exported = devices(
        dir.path(),
        &weir_live,
        &[
            "export",
            "--with-keys",
            "--output",
            with_keys.to_str().unwrap(),
        ],
    );
    assert!(exported.status.success(), "{}", stderr(&exported));
    let other_dir = tempfile::tempdir().unwrap();
    let other_port = free_port();
    let other = Weir::start(
        other_dir.path(),
        &registry_pipeline(other_dir.path(), api(other_port), ""),
        api(other_port),
    )
    .await;
    let imported = devices(dir.path(), &other, &["import", with_keys.to_str().unwrap()]);
    assert!(imported.status.success(), "{}", stderr(&imported));
    for id in &ids[..3] {
        let there = weir_live.get_json(&format!("/v1/devices/{id}")).await;
        let here = other.get_json(&format!("/v1/devices/{id}")).await;
        for field in ["status", "tags", "desired", "primary_key", "secondary_key"] {
            assert_eq!(there[field], here[field], "{id}: {field}");
        }
    }
    assert_eq!(
        other.get_json(&format!("/v1/devices/{}", ids[3])).await["error"]
            .as_str()
            .map(|e| e.contains("not found")),
        Some(true)
    );
    tokio::task::spawn_blocking(move || other.terminate())
        .await
        .unwrap();

    // The shipped site-hourly pipeline, from the snapshot, while the live store is locked.
    let site_run = weir(
        dir.path(),
        &[
            "run",
            "--batch",
            "--since",
            "2026-12-01",
            "--until",
            "2026-12-02",
            shipped("site-hourly-from-snapshot.yaml").to_str().unwrap(),
        ],
    );
    assert!(site_run.status.success(), "{}", stderr(&site_run));
    assert!(
        stderr(&site_run).contains("loaded from a snapshot"),
        "{}",
        stderr(&site_run)
    );
    let site_of = |device: &str| -> Option<&str> {
        registered
            .iter()
            .find(|d| d["id"] == device)
            .map(|d| d["tags"]["site"].as_str().unwrap())
    };
    let mut expected: BTreeMap<(String, String), u64> = BTreeMap::new();
    for row in &raw {
        if let Some(site) = site_of(row["device_id"].as_str().unwrap()) {
            let micros = row["time"].as_i64().unwrap();
            let hour = jiff::Timestamp::from_microsecond(micros - micros.rem_euclid(3_600_000_000))
                .unwrap()
                .to_string();
            *expected.entry((site.to_owned(), hour)).or_default() += 1;
        }
    }
    let site_table =
        url::Url::from_directory_path(dir.path().join(".weir/lake/site-hourly")).unwrap();
    let mut got: BTreeMap<(String, String), u64> = BTreeMap::new();
    for row in rows(&site_table, &Default::default()).await {
        let start = row["window_start"].as_str().unwrap();
        let start = start.parse::<jiff::Timestamp>().unwrap().to_string();
        got.insert(
            (row["site"].as_str().unwrap().to_owned(), start),
            row["readings"].as_f64().unwrap() as u64,
        );
    }
    let sites: std::collections::BTreeSet<&str> =
        expected.keys().map(|(s, _)| s.as_str()).collect();
    assert_eq!(sites, ["north", "south"].into(), "both sites have readings");
    assert_eq!(
        got, expected,
        "readings per site and hour, sites from the snapshot"
    );
    let unknown = lines(&site_state.join("unknown-devices.ndjson"));
    let unknown_expected = raw
        .iter()
        .filter(|r| r["device_id"] == ids[3].as_str())
        .count();
    assert_eq!(
        unknown.len(),
        unknown_expected,
        "the unregistered device's readings"
    );

    // A plain replay through `enrich`: every reading carries its device's record.
    let replay = dir.path().join("replay.yaml");
    std::fs::write(
        &replay,
        format!(
            "data_dir: .weir/batch/replay
registry: {{ snapshot: '{}' }}
sources:
  archive: {{ type: delta_lake, uri: .weir/lake/telemetry }}
transforms:
  enriched: {{ type: enrich, inputs: [archive], on_unknown_device: keep }}
sinks:
  out: {{ type: file, inputs: [enriched], path: .weir/replay.ndjson }}
",
            snapshot.display()
        ),
    )
    .unwrap();
    let replayed = weir(dir.path(), &["run", "--batch", replay.to_str().unwrap()]);
    assert!(replayed.status.success(), "{}", stderr(&replayed));
    let out = lines(&dir.path().join(".weir/replay.ndjson"));
    assert_eq!(out.len(), READINGS);
    for event in &out {
        let id = event["device_id"].as_str().unwrap();
        match registered.iter().find(|d| d["id"] == id) {
            Some(device) => {
                assert_eq!(event["device"]["site"], device["tags"]["site"], "{event}");
                assert_eq!(event["device"]["max_temp"], device["tags"]["max_temp"]);
                let status = device.get("status").cloned().unwrap_or(json!("enabled"));
                assert_eq!(event["device"]["status"], status, "{event}");
            }
            None => assert!(event.get("device").is_none(), "{event}"),
        }
    }
    assert!(
        out.iter()
            .any(|e| e["device"]["desired"] == json!({ "fan": "high" })),
        "the twin's desired properties"
    );

    // The live weir kept running and its registry is untouched.
    let page = weir_live.get_json("/v1/devices").await;
    assert_eq!(page["devices"].as_array().unwrap().len(), 3);
    assert!(
        tokio::task::spawn_blocking(move || weir_live.terminate())
            .await
            .unwrap()
            .success()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_run_pointed_at_the_live_store_says_it_is_locked_and_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let live_dir = dir.path().join("live");
    std::fs::create_dir_all(&live_dir).unwrap();
    let weir_live = Weir::start(
        &live_dir,
        &registry_pipeline(&live_dir, api(port), ""),
        api(port),
    )
    .await;
    let made = weir_live
        .request(reqwest::Method::POST, "/v1/devices")
        .json(&json!({ "id": "sim-0001", "tags": { "site": "east" } }))
        .send()
        .await
        .unwrap();
    assert_eq!(made.status(), 201);
    let store = live_dir.join("registry.redb");
    let batch = dir.path().join("batch.yaml");
    std::fs::write(
        &batch,
        format!(
            "data_dir: batch-state
registry: {{ path: '{}' }}
sources:
  fleet: {{ type: simulator, devices: 1, limit: 20, realtime: false, rate: 1, start_time: '2026-12-01T10:00:00Z' }}
transforms:
  enriched: {{ type: enrich, inputs: [fleet] }}
sinks:
  out: {{ type: file, inputs: [enriched], path: enriched.ndjson }}
",
            store.display()
        ),
    )
    .unwrap();
    let refused = weir(dir.path(), &["run", "--batch", batch.to_str().unwrap()]);
    assert!(!refused.status.success());
    let said = stderr(&refused);
    for expected in [
        format!(
            "the registry store {} is locked by a running weir",
            store.display()
        ),
        "weir devices export --output FILE".to_owned(),
        "registry: { snapshot: FILE }".to_owned(),
    ] {
        assert!(said.contains(&expected), "{expected:?} in {said}");
    }

    // A live weir refuses a snapshot: it would serve an API that could change nothing.
    let snapshot = dir.path().join("fleet.ndjson");
    std::fs::write(&snapshot, "{\"id\":\"sim-0001\"}\n").unwrap();
    let live_snapshot = dir.path().join("live-snapshot.yaml");
    std::fs::write(
        &live_snapshot,
        format!(
            "data_dir: live-snapshot-state
api: {{ enabled: false }}
registry: {{ snapshot: '{}' }}
sources:
  fleet: {{ type: simulator, devices: 1, rate: 1 }}
sinks:
  out: {{ type: blackhole, inputs: [fleet] }}
",
            snapshot.display()
        ),
    )
    .unwrap();
    let refused = weir(dir.path(), &["run", live_snapshot.to_str().unwrap()]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("serves `weir run --batch` only"),
        "{}",
        stderr(&refused)
    );

    // Once the live weir has stopped, the batch run reads its store, and leaves it as it
    // was for the next start.
    assert!(
        tokio::task::spawn_blocking(move || weir_live.terminate())
            .await
            .unwrap()
            .success()
    );
    let before = std::fs::read(&store).unwrap();
    let ran = weir(dir.path(), &["run", "--batch", batch.to_str().unwrap()]);
    assert!(ran.status.success(), "{}", stderr(&ran));
    let out = dir.path().join("enriched.ndjson");
    assert!(
        eventually(Duration::from_secs(5), || out.exists()).await,
        "the output"
    );
    let out = lines(&out);
    assert_eq!(out.len(), 20);
    assert!(out.iter().all(|e| e["device"]["site"] == "east"), "{out:?}");
    assert_eq!(
        std::fs::read(&store).unwrap(),
        before,
        "the store is not written"
    );
}
