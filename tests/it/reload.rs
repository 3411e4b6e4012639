//! Hot reload: under load nothing is lost or doubled, windows keep their state, invalid
//! files and failing builds change nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Weir, eventually, free_port, lines, metric_in};

struct Ports {
    api: u16,
    devices: u16,
    more: u16,
}

/// The variants the reload test cycles through; each is a whole pipeline file.
fn variant(n: usize, dir: &Path, ports: &Ports) -> String {
    let d = dir.display();
    let head = format!(
        "api: {{ listen: 127.0.0.1:{api} }}\ndata_dir: {d}/state\nsources:\n  devices: {{ type: http, listen: 127.0.0.1:{devices}, event_time: ts }}\n",
        api = ports.api,
        devices = ports.devices
    );
    let window = |inputs: &str| {
        format!(
            "aggregators:\n  per_device:\n    type: tumbling\n    inputs: [{inputs}]\n    size: 1h\n    idle_timeout: 1h\n    max_future: 1000d\n    checkpoint_interval: 100ms\n    aggregates: {{ n: count() }}\n"
        )
    };
    let sinks = |extra: bool| {
        // `out` itself changes (fsync) whenever the extra sink comes or goes: a rebuilt sink
        // must neither lose nor double what its old instance held.
        let mut s = format!(
            "sinks:\n  out: {{ type: file, inputs: [valid], path: '{d}/out.ndjson', fsync: {extra} }}\n  windows: {{ type: file, inputs: [per_device], path: '{d}/windows.ndjson' }}\n"
        );
        if extra {
            s.push_str(&format!(
                "  extra: {{ type: file, inputs: [valid], path: '{d}/extra.ndjson' }}\n"
            ));
        }
        s
    };
    let more = format!(
        "  more: {{ type: http, listen: 127.0.0.1:{}, event_time: ts }}\n",
        ports.more
    );
    match n % 6 {
        // The base.
        0 => format!(
            "{head}transforms:\n  shaped: {{ type: remap, inputs: [devices], set: {{ stage: \"'a'\" }} }}\n  valid: {{ type: filter, inputs: [shaped], condition: 'seq >= 0' }}\n{}{}",
            window("valid"),
            sinks(false)
        ),
        // Add a sink.
        1 => format!(
            "{head}transforms:\n  shaped: {{ type: remap, inputs: [devices], set: {{ stage: \"'a'\" }} }}\n  valid: {{ type: filter, inputs: [shaped], condition: 'seq >= 0' }}\n{}{}",
            window("valid"),
            sinks(true)
        ),
        // Change the filter.
        2 => format!(
            "{head}transforms:\n  shaped: {{ type: remap, inputs: [devices], set: {{ stage: \"'a'\" }} }}\n  valid: {{ type: filter, inputs: [shaped], condition: 'seq >= 0 and seq < 1000000000000000' }}\n{}{}",
            window("valid"),
            sinks(true)
        ),
        // Rename a transform.
        3 => format!(
            "{head}transforms:\n  reshaped: {{ type: remap, inputs: [devices], set: {{ stage: \"'b'\" }} }}\n  valid: {{ type: filter, inputs: [reshaped], condition: 'seq >= 0' }}\n{}{}",
            window("valid"),
            sinks(false)
        ),
        // Change the window's inputs (a second source joins).
        4 => format!(
            "{head}{more}transforms:\n  reshaped: {{ type: remap, inputs: [devices], set: {{ stage: \"'b'\" }} }}\n  valid: {{ type: filter, inputs: [reshaped], condition: 'seq >= 0' }}\n{}{}",
            window("valid, more"),
            sinks(false)
        ),
        // Break the file.
        _ => format!(
            "{head}transforms:\n  valid: {{ type: filter, inputs: [reshapd], condition: 'seq >= 0' }}\n{}{}",
            window("valid"),
            sinks(false)
        ),
    }
}

async fn reload(weir: &Weir) -> (u16, Value) {
    let response = weir
        .request(reqwest::Method::POST, "/v1/reload")
        .send()
        .await
        .unwrap();
    (
        response.status().as_u16(),
        response.json().await.unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_under_load_lose_and_double_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ports = Ports {
        api: free_port(),
        devices: free_port(),
        more: free_port(),
    };
    let pipeline = dir.path().join("pipeline.yaml");
    std::fs::write(&pipeline, variant(0, dir.path(), &ports)).unwrap();
    let api: SocketAddr = format!("127.0.0.1:{}", ports.api).parse().unwrap();
    let weir = Weir::start(dir.path(), &pipeline, api).await;

    // A steady stream: four devices, batches of 20 readings with unique sequence numbers,
    // all in one event-time hour so each device has one window for the whole test.
    let hour = 1_800_000_000_000i64 / 3_600_000 * 3_600_000;
    let accepted: Arc<Mutex<BTreeMap<String, BTreeSet<u64>>>> = Arc::default();
    let running = Arc::new(AtomicBool::new(true));
    let client = reqwest::Client::new();
    let mut senders = Vec::new();
    for worker in 0..4u64 {
        let (client, accepted, running, port) = (
            client.clone(),
            accepted.clone(),
            running.clone(),
            ports.devices,
        );
        senders.push(tokio::spawn(async move {
            let device = format!("d{worker}");
            let mut request = 0u64;
            while running.load(Ordering::Relaxed) {
                let seqs: Vec<u64> = (0..20)
                    .map(|i| (worker << 40) | (request << 8) | i)
                    .collect();
                let body: Vec<Value> = seqs
                    .iter()
                    .map(|s| json!({"seq": s, "ts": hour + 1000}))
                    .collect();
                let sent = client
                    .post(format!(
                        "http://127.0.0.1:{port}/v1/devices/{device}/messages"
                    ))
                    .json(&body)
                    .send()
                    .await;
                if let Ok(response) = sent
                    && response.status().is_success()
                {
                    accepted
                        .lock()
                        .unwrap()
                        .entry(device.clone())
                        .or_default()
                        .extend(seqs);
                }
                request += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }

    let accepted_so_far =
        || -> usize { accepted.lock().unwrap().values().map(BTreeSet::len).sum() };
    let mut applied = 0;
    let mut broken_error = String::new();
    for n in 1..=20 {
        // Every reload comes after fresh readings were accepted: it happens under load
        // however busy the machine is (another test shares it), and the load passes the
        // `total` check below however slowly it runs.
        let before = accepted_so_far();
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(
            eventually(Duration::from_secs(10), || accepted_so_far() >= before + 60).await,
            "readings are accepted before reload {n}"
        );
        std::fs::write(&pipeline, variant(n, dir.path(), &ports)).unwrap();
        let (status, answer) = reload(&weir).await;
        if n % 6 == 5 {
            assert_eq!(status, 422, "the broken file is refused: {answer}");
            broken_error = answer["errors"][0].as_str().unwrap_or_default().to_owned();
        } else {
            assert_eq!(status, 200, "reload {n} applies: {answer}");
            assert_eq!(answer["status"], "applied", "{answer}");
            applied += 1;
        }
    }
    assert!(
        broken_error
            .contains("pipeline.yaml:6:35: component `valid`: input `reshapd` names no component"),
        "{broken_error}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    running.store(false, Ordering::Relaxed);
    for sender in senders {
        sender.await.unwrap();
    }

    // Close every device's window with a reading an hour later, then stop.
    for worker in 0..4 {
        let body = json!({"seq": 999_999_999u64 + worker, "ts": hour + 3_600_000 + 1000});
        let response = client
            .post(format!(
                "http://127.0.0.1:{}/v1/devices/d{worker}/messages",
                ports.devices
            ))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success());
    }
    let windows_path = dir.path().join("windows.ndjson");
    assert!(
        eventually(Duration::from_secs(10), || lines(&windows_path).len() >= 4).await,
        "the windows closed"
    );
    let metrics = weir.metrics().await;
    assert_eq!(
        metric_in(&metrics, "config_reloads_total", &[]),
        applied as f64
    );
    assert_eq!(
        metric_in(
            &metrics,
            "config_reload_failures_total",
            &[r#"reason="invalid""#]
        ),
        3.0
    );
    assert_eq!(
        metric_in(&metrics, "config_generation", &[]),
        applied as f64 + 1.0
    );
    let status = tokio::task::spawn_blocking(move || weir.terminate())
        .await
        .unwrap();
    assert!(status.success());

    let accepted = accepted.lock().unwrap();
    let total: usize = accepted.values().map(BTreeSet::len).sum();
    assert!(total > 1000, "the load ran ({total} readings accepted)");
    let mut written: BTreeMap<u64, usize> = BTreeMap::new();
    for event in lines(&dir.path().join("out.ndjson")) {
        *written.entry(event["seq"].as_u64().unwrap()).or_default() += 1;
    }
    let doubled = written.values().filter(|n| **n > 1).count();
    assert_eq!(doubled, 0, "{doubled} readings were written twice");
    for (device, seqs) in accepted.iter() {
        let missing = seqs.iter().filter(|s| !written.contains_key(s)).count();
        assert_eq!(
            missing, 0,
            "{missing} accepted readings of {device} are missing"
        );
    }
    // Every device's window saw every accepted reading: no reload reset it.
    for window in lines(&windows_path) {
        let device = window["device_id"].as_str().unwrap();
        let expected = accepted.get(device).map_or(0, BTreeSet::len);
        if window["window_start"]
            .as_str()
            .unwrap()
            .parse::<jiff::Timestamp>()
            .unwrap()
            .as_millisecond()
            == hour
        {
            assert_eq!(
                window["n"].as_u64().unwrap() as usize,
                expected,
                "window of {device}"
            );
        }
    }
}

fn simple(dir: &Path, api: u16, sources: &[(&str, u16)]) -> String {
    let mut text = format!(
        "api: {{ listen: 127.0.0.1:{api} }}\ndata_dir: {}/state\nsources:\n",
        dir.display()
    );
    for (id, port) in sources {
        text.push_str(&format!(
            "  {id}: {{ type: http, listen: 127.0.0.1:{port} }}\n"
        ));
    }
    let ids: Vec<&str> = sources.iter().map(|(id, _)| *id).collect();
    text.push_str(&format!(
        "sinks:\n  out: {{ type: file, inputs: [{}], path: '{}/out.ndjson' }}\n",
        ids.join(", "),
        dir.display()
    ));
    text
}

async fn post(port: u16) -> u16 {
    reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/v1/devices/d/messages"))
        .body(r#"{"t": 1}"#)
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_rolls_the_reload_back() {
    let dir = tempfile::tempdir().unwrap();
    let (api, a, taken) = (free_port(), free_port(), free_port());
    let pipeline = dir.path().join("pipeline.yaml");
    std::fs::write(&pipeline, simple(dir.path(), api, &[("a", a)])).unwrap();
    let weir = Weir::start(
        dir.path(),
        &pipeline,
        format!("127.0.0.1:{api}").parse().unwrap(),
    )
    .await;
    let _squatter = std::net::TcpListener::bind(("127.0.0.1", taken)).unwrap();

    std::fs::write(
        &pipeline,
        simple(dir.path(), api, &[("a", a), ("b", taken)]),
    )
    .unwrap();
    let (status, answer) = reload(&weir).await;
    assert_eq!(status, 500, "{answer}");
    assert_eq!(answer["reason"], "build_failed");
    assert!(
        answer["errors"][0]
            .as_str()
            .unwrap()
            .contains("cannot listen on"),
        "{answer}"
    );
    assert_eq!(post(a).await, 200, "the old topology still runs");
    let metrics = weir.metrics().await;
    assert_eq!(
        metric_in(
            &metrics,
            "config_reload_failures_total",
            &[r#"reason="build_failed""#]
        ),
        1.0
    );
    assert_eq!(metric_in(&metrics, "config_generation", &[]), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_moves_between_sources_in_one_reload() {
    let dir = tempfile::tempdir().unwrap();
    let (api, p1, p2) = (free_port(), free_port(), free_port());
    let pipeline = dir.path().join("pipeline.yaml");
    std::fs::write(&pipeline, simple(dir.path(), api, &[("a", p1)])).unwrap();
    let weir = Weir::start(
        dir.path(),
        &pipeline,
        format!("127.0.0.1:{api}").parse().unwrap(),
    )
    .await;
    std::fs::write(&pipeline, simple(dir.path(), api, &[("a", p2), ("b", p1)])).unwrap();
    let (status, answer) = reload(&weir).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["diff"]["changed"], json!(["a"]));
    assert_eq!(answer["diff"]["added"], json!(["b"]));
    assert_eq!((post(p1).await, post(p2).await), (200, 200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn globals_that_cannot_change_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let (api, a) = (free_port(), free_port());
    let pipeline = dir.path().join("pipeline.yaml");
    std::fs::write(&pipeline, simple(dir.path(), api, &[("a", a)])).unwrap();
    let weir = Weir::start(
        dir.path(),
        &pipeline,
        format!("127.0.0.1:{api}").parse().unwrap(),
    )
    .await;
    let original = simple(dir.path(), api, &[("a", a)]);
    for (key, changed) in [
        ("data_dir", original.replace("/state", "/elsewhere")),
        // Running channels keep their size.
        (
            "channel_max_events",
            format!("channel_max_events: 100\n{original}"),
        ),
    ] {
        std::fs::write(&pipeline, changed).unwrap();
        let (status, answer) = reload(&weir).await;
        assert_eq!(status, 409, "{answer}");
        assert!(
            answer["errors"][0]
                .as_str()
                .unwrap()
                .contains(&format!("`{key}` cannot change while weir runs")),
            "{answer}"
        );
    }
}

/// Whether process `pid` has an inotify watch on `dir`. weir answers `/ready` a moment
/// before it sets up `watch: true` (src/daemon.rs), so a change made as soon as it is
/// ready could go unnoticed; on a busy machine (tests share it) that moment can be long.
fn watches(pid: u32, dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let inode = format!("ino:{:x}", std::fs::metadata(dir).unwrap().ino());
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return false;
    };
    fds.flatten()
        .filter_map(|fd| std::fs::read_to_string(fd.path()).ok())
        .any(|info| {
            info.lines().any(|line| {
                line.starts_with("inotify wd:") && line.split_whitespace().any(|f| f == inode)
            })
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_and_file_changes_reload() {
    let dir = tempfile::tempdir().unwrap();
    let (api, a, b) = (free_port(), free_port(), free_port());
    let pipeline = dir.path().join("pipeline.yaml");
    std::fs::write(
        &pipeline,
        format!("watch: true\n{}", simple(dir.path(), api, &[("a", a)])),
    )
    .unwrap();
    let weir = Weir::start(
        dir.path(),
        &pipeline,
        format!("127.0.0.1:{api}").parse().unwrap(),
    )
    .await;
    let generation = |metrics: String| metric_in(&metrics, "config_generation", &[]);
    assert!(
        eventually(Duration::from_secs(10), || watches(
            weir.child.id(),
            dir.path()
        ))
        .await,
        "weir watches the pipeline's directory"
    );

    // A file change (watch: true) applies by itself.
    std::fs::write(
        &pipeline,
        format!(
            "watch: true\n{}",
            simple(dir.path(), api, &[("a", a), ("b", b)])
        ),
    )
    .unwrap();
    let mut applied = false;
    for _ in 0..100 {
        if generation(weir.metrics().await) == 2.0 {
            applied = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(applied, "the file change was applied");
    assert_eq!(post(b).await, 200);

    // SIGHUP reloads too (the file is unchanged apart from a new source).
    let c = free_port();
    std::fs::write(
        &pipeline,
        format!(
            "watch: true\n{}",
            simple(dir.path(), api, &[("a", a), ("b", b), ("c", c)])
        ),
    )
    .unwrap();
    weir.signal(libc::SIGHUP);
    let mut reloaded = false;
    for _ in 0..100 {
        if post(c).await == 200 {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reloaded, "the new source listens after SIGHUP");
}
