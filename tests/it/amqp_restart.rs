//! RabbitMQ restarts mid-stream: weir reconnects and nothing is lost. It holds the
//! exclusive lease on RabbitMQ (see `support::services`): it restarts the broker other
//! tests use.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use lapin::options::{BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use weir::telemetry::Telemetry;
use weir::topology::RunningTopology;

use crate::support::services::{Broker, Lease};
use crate::support::{eventually, lines, metric, pipeline, services};

fn rabbitmqctl(args: &[&str]) {
    let status = Command::new("rabbitmqctl")
        .args(args)
        .status()
        .expect("run rabbitmqctl");
    assert!(status.success(), "rabbitmqctl {args:?} failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weir_reconnects_after_a_broker_restart_and_loses_nothing() {
    const MESSAGES: u64 = 3000;
    let _rabbitmq = Lease::exclusive(Broker::RabbitMq).await;
    let queue = format!("weir-restart-{}", std::process::id());
    let connection = Connection::connect(services::rabbitmq(), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    // Persistent messages in a durable queue survive the restart.
    let persistent = BasicProperties::default().with_delivery_mode(2);
    for i in 0..MESSAGES {
        let payload = format!(r#"{{"device_id": "d", "id": {i}}}"#);
        channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                payload.as_bytes(),
                persistent.clone(),
            )
            .await
            .unwrap();
    }
    drop(channel);
    drop(connection);

    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "api: {{ enabled: false }}
sources:
  broker: {{ type: amqp, url: '{}', queue: '{queue}', prefetch: 100, declare: {{ durable: true }} }}
transforms:
  paced: {{ type: filter, inputs: [broker], condition: 'true' }}
sinks:
  out: {{ type: file, inputs: [paced], path: '{d}/out.ndjson' }}
  pace: {{ type: blackhole, inputs: [paced], rate: 1500 }}
",
        services::rabbitmq(),
        d = dir.path().display()
    );
    let telemetry = Telemetry::new();
    let topology = RunningTopology::start(&pipeline(&text), &telemetry).unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    rabbitmqctl(&["stop_app"]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let while_down = metric(
        &telemetry,
        "source_connected",
        &[r#"component_id="broker""#],
    );
    // Start the broker again before any assertion, so that it is up when the lease ends.
    rabbitmqctl(&["start_app"]);
    assert_eq!(while_down, 0.0, "weir noticed the broker left");

    let out = dir.path().join("out.ndjson");
    let deadline = Instant::now() + Duration::from_secs(90);
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
    // Connected now, or soon: a broker that is still starting may close the first
    // connection again, and weir then retries after its backoff.
    let connected = || {
        metric(
            &telemetry,
            "source_connected",
            &[r#"component_id="broker""#],
        )
    };
    assert!(
        eventually(Duration::from_secs(30), || connected() == 1.0).await,
        "weir reconnected; its errors: {}",
        metric(
            &telemetry,
            "component_errors_total",
            &[r#"component_id="broker""#]
        )
    );
    let _ = topology.stop(Duration::from_secs(20)).await;
    assert_eq!(
        ids.len() as u64,
        MESSAGES,
        "every message arrived after the restart"
    );
    let connection = Connection::connect(services::rabbitmq(), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let _ = channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
}
