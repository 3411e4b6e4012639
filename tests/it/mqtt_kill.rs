//! `kill -9` while consuming MQTT QoS 1 with a persistent session, over MQTT 5 and 3.1.1:
//! every message id is in the file sink at least once; duplicates are counted and reported.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, PublishOptions};

use crate::support::services::{Broker, Lease};
use crate::support::{self, Weir, free_port, mqtt, services};

const MESSAGES: u64 = 10_000;

/// Most messages published and not yet in the file (checked every 100): with weir's
/// in-flight window on top, well under Mosquitto's `max_queued_messages` (1000), past
/// which it drops what it holds for a session.
const MAX_AHEAD: u64 = 400;

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
    // What is published before weir's first SUBSCRIBE reaches nobody; from then on the
    // broker keeps it for weir's session. The probe is undecodable: it goes to
    // `plant.errors`, not to the file.
    mqtt::await_subscriber(
        &prefix,
        &format!("{prefix}/probe/telemetry"),
        b"subscription probe",
    )
    .await;

    // A steady publisher that stays at most `MAX_AHEAD` messages ahead of the file, so
    // what the broker holds for weir while it is down stays under Mosquitto's per-client
    // queue limit however long a restart takes.
    let out = dir.path().join("out.ndjson");
    let publisher = tokio::spawn({
        let prefix = prefix.clone();
        let out = out.clone();
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
                while i % 100 == 0 && i >= MAX_AHEAD + written(&out) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            driver.await.unwrap();
        }
    });

    let weir = weir
        .crash_and_restart(2, Duration::from_millis(1500), dir.path(), &pipeline)
        .await;
    publisher.await.unwrap();

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

/// Complete lines in the sink's file (duplicates included: an upper bound on the distinct
/// ids in it).
fn written(path: &std::path::Path) -> u64 {
    let text = std::fs::read(path).unwrap_or_default();
    text.iter().filter(|&&byte| byte == b'\n').count() as u64
}
