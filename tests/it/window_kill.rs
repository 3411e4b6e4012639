//! `kill -9` with open windows: a reading acknowledged to its HTTP client (`ack:
//! on_commit`) has been checkpointed in its window (`ack: on_checkpoint`, the default), so
//! after two crashes every device's window counts at least every acknowledged reading.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

use crate::support::{Weir, eventually, free_port, lines};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_readings_survive_in_their_windows() {
    let dir = tempfile::tempdir().unwrap();
    let (port, api) = (free_port(), free_port());
    let pipeline = dir.path().join("pipeline.yaml");
    std::fs::write(
        &pipeline,
        format!(
            "api: {{ listen: 127.0.0.1:{api} }}
data_dir: state
sources:
  devices: {{ type: http, listen: 127.0.0.1:{port}, event_time: ts }}
aggregators:
  hourly:
    type: tumbling
    inputs: [devices]
    size: 1h
    idle_timeout: 1h
    max_future: 1000d
    checkpoint_interval: 200ms
    aggregates: {{ n: count() }}
sinks:
  windows: {{ type: file, inputs: [hourly], path: windows.ndjson }}
"
        ),
    )
    .unwrap();
    let api_addr = format!("127.0.0.1:{api}").parse().unwrap();
    let weir = Weir::start(dir.path(), &pipeline, api_addr).await;

    let hour = 1_800_000_000_000i64 / 3_600_000 * 3_600_000;
    let acknowledged: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
    let running = Arc::new(AtomicBool::new(true));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut workers = Vec::new();
    for worker in 0..4 {
        let (client, acknowledged, running) =
            (client.clone(), acknowledged.clone(), running.clone());
        workers.push(tokio::spawn(async move {
            let device = format!("d{worker}");
            let body: Vec<_> = (0..10).map(|_| json!({"ts": hour + 1000})).collect();
            while running.load(Ordering::Relaxed) {
                let sent = client
                    .post(format!(
                        "http://127.0.0.1:{port}/v1/devices/{device}/messages"
                    ))
                    .json(&body)
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status().is_success() => {
                        *acknowledged
                            .lock()
                            .unwrap()
                            .entry(device.clone())
                            .or_default() += 10
                    }
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }));
    }
    let weir = weir
        .crash_and_restart(2, Duration::from_millis(1500), dir.path(), &pipeline)
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    running.store(false, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }

    // Close every window with a reading an hour later.
    for worker in 0..4 {
        let closer = json!({"ts": hour + 3_600_000 + 1000});
        let response = client
            .post(format!(
                "http://127.0.0.1:{port}/v1/devices/d{worker}/messages"
            ))
            .json(&closer)
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
    let status = tokio::task::spawn_blocking(move || weir.terminate())
        .await
        .unwrap();
    assert!(status.success());

    let acknowledged = acknowledged.lock().unwrap();
    assert!(
        acknowledged.values().sum::<usize>() > 200,
        "the load ran: {acknowledged:?}"
    );
    for window in lines(&windows_path) {
        let device = window["device_id"].as_str().unwrap().to_owned();
        let counted = window["n"].as_u64().unwrap() as usize;
        let acked = acknowledged.get(&device).copied().unwrap_or(0);
        println!("{device}: {acked} acknowledged, {counted} counted in its window");
        assert!(
            counted >= acked,
            "{device}: the window counts {counted} of {acked} acknowledged readings"
        );
    }
}
