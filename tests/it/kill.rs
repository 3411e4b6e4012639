//! `kill -9` under load: with `ack: on_commit` and a file sink that fsyncs, every reading
//! that got a 2xx is in the file after three crashes and restarts. Duplicates are allowed
//! (a client may resend what was written but not yet answered) and reported.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

use crate::support::{Weir, free_port, lines};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_reading_survives_three_kill_9s() {
    let dir = tempfile::tempdir().unwrap();
    let (port, api) = (free_port(), free_port());
    let pipeline = dir.path().join("pipeline.yaml");
    std::fs::write(
        &pipeline,
        format!(
            "api: {{ listen: 127.0.0.1:{api} }}
data_dir: state
sources:
  devices: {{ type: http, listen: 127.0.0.1:{port} }}
transforms:
  shaped: {{ type: remap, inputs: [devices], set: {{ temperature_f: 'temperature * 9 / 5 + 32' }} }}
sinks:
  out: {{ type: file, inputs: [shaped], path: out.ndjson, fsync: true }}
"
        ),
    )
    .unwrap();
    let api_addr = format!("127.0.0.1:{api}").parse().unwrap();
    let weir = Weir::start(dir.path(), &pipeline, api_addr).await;

    let acknowledged = Arc::new(Mutex::new(BTreeSet::new()));
    let running = Arc::new(AtomicBool::new(true));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut workers = Vec::new();
    for worker in 0..8u64 {
        let (client, acknowledged, running) =
            (client.clone(), acknowledged.clone(), running.clone());
        workers.push(tokio::spawn(async move {
            let mut request = 0u64;
            while running.load(Ordering::Relaxed) {
                let seqs: Vec<u64> = (0..25)
                    .map(|i| (worker << 40) | (request << 8) | i)
                    .collect();
                let body: Vec<_> = seqs
                    .iter()
                    .map(|s| json!({"seq": s, "temperature": 20}))
                    .collect();
                let sent = client
                    .post(format!(
                        "http://127.0.0.1:{port}/v1/devices/d{worker}/messages"
                    ))
                    .json(&body)
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status().is_success() => {
                        acknowledged.lock().unwrap().extend(seqs);
                        request += 1;
                    }
                    // Refused while weir is down, or not acknowledged: try again (the same readings).
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }));
    }

    let weir = weir
        .crash_and_restart(3, Duration::from_millis(700), dir.path(), &pipeline)
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    running.store(false, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    let status = tokio::task::spawn_blocking(move || weir.terminate())
        .await
        .unwrap();
    assert!(status.success());

    let mut written: BTreeMap<u64, usize> = BTreeMap::new();
    for event in lines(&dir.path().join("out.ndjson")) {
        *written.entry(event["seq"].as_u64().unwrap()).or_default() += 1;
    }
    let acknowledged = acknowledged.lock().unwrap();
    assert!(
        acknowledged.len() > 2000,
        "the load ran ({} readings acknowledged)",
        acknowledged.len()
    );
    let lost = acknowledged
        .iter()
        .filter(|s| !written.contains_key(s))
        .count();
    let duplicates: usize = written.values().map(|n| n - 1).sum();
    println!(
        "kill -9 x3: {} acknowledged, {} written, {duplicates} duplicates, {lost} lost",
        acknowledged.len(),
        written.len()
    );
    assert_eq!(
        lost, 0,
        "{lost} acknowledged readings are missing after kill -9"
    );
}
