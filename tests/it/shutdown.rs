//! SIGTERM drains: every reading that got a 2xx is in the file sink when weir exits.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::{Weir, free_port, lines};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_no_accepted_reading() {
    let dir = tempfile::tempdir().unwrap();
    let (port, api) = (free_port(), free_port());
    let pipeline = dir.path().join("pipeline.yaml");
    std::fs::write(
        &pipeline,
        format!(
            "data_dir: '{d}'
api: {{ listen: 127.0.0.1:{api} }}
sources:
  devices: {{ type: http, listen: 127.0.0.1:{port} }}
transforms:
  shaped: {{ type: remap, inputs: [devices], set: {{ temperature_f: 'temperature * 9 / 5 + 32' }} }}
sinks:
  out: {{ type: file, inputs: [shaped], path: out.ndjson }}
",
            d = dir.path().display()
        ),
    )
    .unwrap();
    let weir = Weir::start(
        dir.path(),
        &pipeline,
        format!("127.0.0.1:{api}").parse().unwrap(),
    )
    .await;

    let accepted = Arc::new(Mutex::new(BTreeSet::new()));
    let client = reqwest::Client::new();
    let mut senders = Vec::new();
    for worker in 0..8u64 {
        let (client, accepted) = (client.clone(), accepted.clone());
        senders.push(tokio::spawn(async move {
            for request in 0u64.. {
                let seqs: Vec<u64> = (0..50)
                    .map(|i| (worker << 40) | (request << 8) | i)
                    .collect();
                let body: Vec<_> = seqs
                    .iter()
                    .map(|s| serde_json::json!({"seq": s, "temperature": 20}))
                    .collect();
                let sent = client
                    .post(format!(
                        "http://127.0.0.1:{port}/v1/devices/d{worker}/messages"
                    ))
                    .json(&body)
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status().is_success() => accepted.lock().unwrap().extend(seqs),
                    Ok(_) => {}
                    Err(_) => return, // the server has stopped listening
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let status = tokio::task::spawn_blocking(move || weir.terminate())
        .await
        .unwrap();
    assert!(status.success(), "weir exited with {status}");
    for sender in senders {
        sender.await.unwrap();
    }

    let written: BTreeSet<u64> = lines(&dir.path().join("out.ndjson"))
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    let accepted = accepted.lock().unwrap();
    assert!(
        accepted.len() > 1000,
        "the load ran ({} readings accepted)",
        accepted.len()
    );
    let lost = accepted.difference(&written).count();
    assert_eq!(
        lost,
        0,
        "{lost} of {} accepted readings are missing from the sink",
        accepted.len()
    );
}
