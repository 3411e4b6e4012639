//! Bulk import through the real API and CLI: per-row errors do not stop it, and `kill -9`
//! of weir in the middle leaves a consistent registry that a re-run completes.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{self, Weir, free_port};

const DEVICES: usize = 100_000;
const CHUNK: usize = 1000;

fn pipeline(dir: &Path, api: SocketAddr) -> std::path::PathBuf {
    let text = format!(
        "data_dir: '{d}'
api: {{ listen: '{api}' }}
registry: {{ path: registry.redb }}
sources:
  lifecycle: {{ type: device_registry, events: [deleted] }}
sinks:
  none: {{ type: blackhole, inputs: [lifecycle] }}
",
        d = dir.display()
    );
    let path = dir.join("pipeline.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

fn import(weir: &Weir, file: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_weir"));
    command
        .args([
            "devices",
            "--api",
            &format!("http://{}", weir.api),
            "import",
        ])
        .env("WEIR_TOKEN", &weir.token)
        .arg(file)
        .args(["--chunk", &CHUNK.to_string()]);
    command
}

/// Every device, page by page.
async fn all_devices(weir: &Weir) -> Vec<Value> {
    let mut devices = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut url = "/v1/devices?limit=1000".to_owned();
        if let Some(after) = &after {
            url.push_str(&format!("&after={after}"));
        }
        let page = weir.get_json(&url).await;
        devices.extend(page["devices"].as_array().unwrap().iter().cloned());
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => return devices,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_during_import_leaves_a_consistent_registry_and_a_rerun_completes_it() {
    let dir = tempfile::tempdir().unwrap();
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let file = dir.path().join("fleet.csv");
    let mut csv = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
    writeln!(csv, "id,status,tag.site,tag.max_temp").unwrap();
    for n in 0..DEVICES {
        writeln!(csv, "dev-{n:06},enabled,plant-{},{}", n % 7, 80 + n % 20).unwrap();
    }
    drop(csv);
    let pipeline = pipeline(dir.path(), api);
    let weir = Weir::start(dir.path(), &pipeline, api).await;

    let first = import(&weir, &file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Kill weir once a good part of the fleet is in.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let metrics = weir.metrics().await;
        let devices = support::metric_in(&metrics, "registry_devices", &[]);
        if devices >= (DEVICES / 5) as f64 {
            break;
        }
        assert!(Instant::now() < deadline, "the import does not progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    weir.signal(libc::SIGKILL);
    drop(weir);
    let output = first.wait_with_output().unwrap();
    assert!(!output.status.success(), "the CLI notices the interruption");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("run it again"), "{stderr}");

    // Restarted: whole chunks only, every record complete.
    let weir = Weir::start(dir.path(), &pipeline, api).await;
    let devices = all_devices(&weir).await;
    assert!(
        !devices.is_empty() && devices.len() < DEVICES,
        "{}",
        devices.len()
    );
    assert_eq!(devices.len() % CHUNK, 0, "a chunk was half-written");
    for (n, device) in devices.iter().enumerate() {
        assert_eq!(device["id"], format!("dev-{n:06}"));
        assert_eq!(device["tags"]["site"], format!("plant-{}", n % 7));
    }
    let sample = weir.get_json("/v1/devices/dev-000000").await;
    assert_eq!(
        weir::registry::keys::decode(sample["primary_key"].as_str().unwrap())
            .unwrap()
            .len(),
        32
    );

    // The re-run adds the rest and skips what is there.
    let output = import(&weir, &file).output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["existed"], devices.len());
    assert_eq!(summary["created"], DEVICES - devices.len());
    assert_eq!(summary["failed"], 0);
    assert_eq!(all_devices(&weir).await.len(), DEVICES);
    drop(weir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rows_are_reported_and_the_rest_is_imported() {
    let dir = tempfile::tempdir().unwrap();
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let file = dir.path().join("fleet.ndjson");
    std::fs::write(
        &file,
        r#"{"id": "a", "tags": {"site": "x"}}
not json
{"id": "b/c"}
{"id": "d", "colour": "red"}
{"id": "e", "primary_key": "c2hvcnQ="}
{"id": "f"}
{"id": "a"}
"#,
    )
    .unwrap();
    let pipeline = pipeline(dir.path(), api);
    let weir = Weir::start(dir.path(), &pipeline, api).await;
    let output = import(&weir, &file).output().unwrap();
    assert_eq!(output.status.code(), Some(2), "some rows failed");
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["created"], 2);
    assert_eq!(summary["failed"], 5);
    let stderr = String::from_utf8_lossy(&output.stderr);
    for line in [
        ":2: not JSON",
        ":3: id `b/c`",
        ":4: unknown field `colour`",
        ":5: `primary_key`",
        ":7: id `a` appears twice",
    ] {
        assert!(stderr.contains(line), "{line} in {stderr}");
    }
    let devices = all_devices(&weir).await;
    let ids: Vec<&str> = devices.iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["a", "f"]);
}

/// One request may carry as many rows as the API takes (50 000), keys and tags included:
/// 25 000 such rows are ~5 MB, which axum's default body limit (2 MiB) refused with 413.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_of_many_rows_with_keys_is_taken_whole() {
    let dir = tempfile::tempdir().unwrap();
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let pipeline = pipeline(dir.path(), api);
    let weir = Weir::start(dir.path(), &pipeline, api).await;
    let key = |c: char| format!("{}=", c.to_string().repeat(43));
    let rows: Vec<Value> = (0..25_000)
        .map(|i| {
            serde_json::json!({
                "id": format!("bulk-{i:05}"),
                "primary_key": key('A'),
                "secondary_key": key('E'),
                "tags": { "site": "plant-3", "line": "L1" },
            })
        })
        .collect();
    let body = serde_json::to_vec(&rows).unwrap();
    assert!(body.len() > 4 << 20, "{} bytes", body.len());
    let answer = weir
        .request(reqwest::Method::POST, "/v1/devices/import")
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let answer: Value = answer.json().await.unwrap();
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results.len(), 25_000);
    let failed = results.iter().find(|r| r["outcome"] != "created");
    assert!(failed.is_none(), "{failed:?}");
}
