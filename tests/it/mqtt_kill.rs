//! `kill -9` while consuming MQTT QoS 1 with a persistent session, over MQTT 5 and 3.1.1:
//! every message id is in the file sink at least once; duplicates are counted and reported.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, PublishOptions};

use crate::support::services::{Broker, Lease};
use crate::support::{self, Weir, free_port, services};

const MESSAGES: u64 = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mqtt5_publish_survives_two_kill_9s() {
    survives_two_kill_9s("5").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mqtt311_publish_survives_two_kill_9s() {
    survives_two_kill_9s("3.1.1").await;
}

async fn survives_two_kill_9s(protocol: &str) {
    let _mosquitto = Lease::shared(&[Broker::Mosquitto]).await;
    let url = services::mosquitto();
    let prefix = format!(
        "weir-kill-{}-{}",
        std::process::id(),
        protocol.replace('.', "")
    );
    let dir = tempfile::tempdir().unwrap();
    let api = free_port();
    let pipeline = dir.path().join("pipeline.yaml");
    std::fs::write(
        &pipeline,
        format!(
            "api: {{ listen: 127.0.0.1:{api} }}\ndata_dir: state\nsources:\n  plant: {{ type: mqtt, url: '{url}', topics: ['{prefix}/+/telemetry'], device_id: '{prefix}/{{device_id}}/telemetry', client_id: '{prefix}-weir', protocol: '{protocol}' }}\nsinks:\n  out: {{ type: file, inputs: [plant], path: out.ndjson, fsync: true }}\n"
        ),
    )
    .unwrap();
    let api_addr = format!("127.0.0.1:{api}").parse().unwrap();
    let weir = Weir::start(dir.path(), &pipeline, api_addr).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A steady publisher, paced below Mosquitto's per-client queue limit for the moments
    // weir is down.
    let publisher = tokio::spawn({
        let prefix = prefix.clone();
        async move {
            let mut options = MqttOptions::new(format!("{prefix}-publisher"), ("127.0.0.1", 1883));
            options.set_keep_alive(30);
            let (client, mut eventloop) = AsyncClient::builder(options).capacity(4096).build();
            let driver = tokio::spawn(async move {
                let mut acked = 0;
                while acked < MESSAGES {
                    if let Ok(Event::Incoming(Incoming::PubAck(_))) = eventloop.poll().await {
                        acked += 1;
                    }
                }
            });
            for i in 0..MESSAGES {
                let payload = format!(r#"{{"id": {i}, "temperature": 20}}"#);
                client
                    .publish(
                        format!("{prefix}/d{}/telemetry", i % 10),
                        payload.into_bytes(),
                        PublishOptions::at_least_once(),
                    )
                    .await
                    .unwrap();
                if i % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            driver.await.unwrap();
        }
    });

    let weir = weir
        .crash_and_restart(2, Duration::from_millis(1500), dir.path(), &pipeline)
        .await;
    publisher.await.unwrap();

    let out = dir.path().join("out.ndjson");
    let seen = support::occurrences(&out, "id", MESSAGES as usize, Duration::from_secs(60)).await;
    let status = tokio::task::spawn_blocking(move || weir.terminate())
        .await
        .unwrap();
    assert!(status.success());
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    println!(
        "kill -9 x2 on MQTT {protocol} QoS 1: {} of {MESSAGES} ids written, {duplicates} duplicates",
        seen.len()
    );
    assert_eq!(seen.len() as u64, MESSAGES, "every publish is in the sink");
}
