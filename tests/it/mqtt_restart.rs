//! Mosquitto restarts while weir holds unacknowledged publishes: weir reconnects, its
//! persistent session brings back what it had not acked, nothing is lost. It holds the
//! exclusive lease on Mosquitto (see `support::services`): it restarts the broker other
//! tests use.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, PublishOptions};
use weir::telemetry::Telemetry;
use weir::topology::RunningTopology;

use crate::support::services::{Broker, Lease};
use crate::support::{self, lines, metric, mqtt, pipeline, services};

const MESSAGES: u64 = 1000;

fn restart_mosquitto() {
    let _ = Command::new("pkill")
        .args(["-TERM", "-x", "mosquitto"])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Command::new("pgrep")
        .args(["-x", "mosquitto"])
        .status()
        .is_ok_and(|s| s.success())
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    // `services::mosquitto` starts it again (it is installed) and waits for the port.
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weir_reconnects_after_a_broker_restart_and_loses_nothing() {
    let _mosquitto = Lease::exclusive(Broker::Mosquitto).await;
    let url = services::mosquitto();
    let prefix = format!("weir-restart-{}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    // A slow sink keeps publishes unacknowledged while the broker goes away.
    let text = format!(
        "api: {{ enabled: false }}
sources:
  plant: {{ type: mqtt, url: '{url}', client_id: '{prefix}-weir', topics: ['{prefix}/+/t'], device_id: '{prefix}/{{device_id}}/t' }}
transforms:
  paced: {{ type: filter, inputs: [plant], condition: 'true' }}
sinks:
  out: {{ type: file, inputs: [paced], path: '{}/out.ndjson' }}
  pace: {{ type: blackhole, inputs: [paced], rate: 400 }}
",
        dir.path().display()
    );
    let telemetry = Telemetry::new();
    let topology = RunningTopology::start(&pipeline(&text), &telemetry).unwrap();
    let connected =
        |t: &std::sync::Arc<Telemetry>| metric(t, "source_connected", &[r#"component_id="plant""#]);
    assert!(support::eventually(Duration::from_secs(10), || connected(&telemetry) == 1.0).await);
    // Connected is not yet subscribed; the probe is undecodable, so not in the file.
    mqtt::await_subscriber(&prefix, &format!("{prefix}/probe/t"), b"subscription probe").await;

    let mut options = MqttOptions::new(format!("{prefix}-publisher"), ("127.0.0.1", 1883));
    options.set_keep_alive(30);
    let (client, mut eventloop) = AsyncClient::builder(options).capacity(2048).build();
    for i in 0..MESSAGES {
        client
            .publish(
                format!("{prefix}/d/t"),
                format!(r#"{{"id": {i}}}"#).into_bytes(),
                PublishOptions::at_least_once(),
            )
            .await
            .unwrap();
    }
    let mut acked = 0;
    while acked < MESSAGES {
        if let Event::Incoming(Incoming::PubAck(_)) = eventloop.poll().await.unwrap() {
            acked += 1;
        }
    }
    drop(client);

    tokio::time::sleep(Duration::from_millis(800)).await;
    tokio::task::spawn_blocking(restart_mosquitto)
        .await
        .unwrap();
    let while_down = connected(&telemetry);
    tokio::task::spawn_blocking(services::restart_mosquitto_if_down)
        .await
        .unwrap();
    assert_eq!(while_down, 0.0, "weir noticed the broker left");

    let out = dir.path().join("out.ndjson");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut ids = BTreeSet::new();
    while Instant::now() < deadline {
        ids = lines(&out)
            .iter()
            .map(|e| e["id"].as_u64().unwrap())
            .collect();
        if ids.len() as u64 == MESSAGES {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        support::eventually(Duration::from_secs(15), || connected(&telemetry) == 1.0).await,
        "weir reconnected"
    );
    let _ = topology.stop(Duration::from_secs(20)).await;
    assert_eq!(
        ids.len() as u64,
        MESSAGES,
        "every publish arrived after the restart"
    );
}
