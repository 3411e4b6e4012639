//! The `amqp` source against the real RabbitMQ: acknowledged after commit, undecodable
//! messages dead-lettered, nothing left in the queue.

use std::time::Duration;

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use weir::telemetry::Telemetry;
use weir::topology::RunningTopology;

use crate::support::services::{Broker, Lease};
use crate::support::{self, eventually, lines, metric, pipeline, services};

async fn publish(queue: &str, payloads: impl IntoIterator<Item = Vec<u8>>) -> lapin::Channel {
    let connection = Connection::connect(services::rabbitmq(), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    // Publisher confirms: when `publish` returns, the broker holds every message.
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    for payload in payloads {
        channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                &payload,
                BasicProperties::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    channel
}

async fn waiting(channel: &lapin::Channel, queue: &str) -> u32 {
    let options = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    channel
        .queue_declare(queue.into(), options, FieldTable::default())
        .await
        .unwrap()
        .message_count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_acked_after_the_sink_commits_them() {
    let _rabbitmq = Lease::shared(&[Broker::RabbitMq]).await;
    let queue = format!("weir-test-{}", std::process::id());
    let mut payloads: Vec<Vec<u8>> = (0..2000)
        .map(|i| format!(r#"{{"device_id": "d{}", "seq": {i}}}"#, i % 7).into_bytes())
        .collect();
    payloads.insert(1000, b"this is not json".to_vec());
    let channel = publish(&queue, payloads).await;
    assert_eq!(waiting(&channel, &queue).await, 2001);

    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "api: {{ enabled: false }}
sources:
  broker: {{ type: amqp, url: '{}', queue: '{queue}', prefetch: 100, declare: {{ durable: true }} }}
sinks:
  out: {{ type: file, inputs: [broker], path: '{d}/out.ndjson', fsync: true }}
  dead: {{ type: file, inputs: [broker.errors], path: '{d}/dead.ndjson' }}
",
        services::rabbitmq(),
        d = dir.path().display()
    );
    let telemetry = Telemetry::new();
    let topology = RunningTopology::start(&pipeline(&text), &telemetry).unwrap();
    let out = dir.path().join("out.ndjson");
    assert!(
        eventually(Duration::from_secs(30), || lines(&out).len() >= 2000).await,
        "every message arrives"
    );
    // Acks follow the commits; the queue empties.
    let mut drained = false;
    for _ in 0..100 {
        if waiting(&channel, &queue).await == 0 {
            drained = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(drained, "every message was acknowledged");
    assert_eq!(
        metric(
            &telemetry,
            "source_pending_deliveries",
            &[r#"component_id="broker""#]
        ),
        0.0
    );
    assert_eq!(
        metric(
            &telemetry,
            "source_connected",
            &[r#"component_id="broker""#]
        ),
        1.0
    );
    let _ = topology.stop(Duration::from_secs(10)).await;

    let seqs: std::collections::BTreeSet<u64> = lines(&out)
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs.len(), 2000);
    let dead = lines(&dir.path().join("dead.ndjson"));
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["body"], "this is not json");
    assert_eq!(dead[0]["meta"]["routing_key"], queue.as_str());
    assert_eq!(
        metric(
            &telemetry,
            "component_errors_total",
            &[r#"component_id="broker""#, r#"error_type="decode_failed""#]
        ),
        1.0
    );
    let _ = channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_before_commit_leaves_messages_in_the_queue() {
    let _rabbitmq = Lease::shared(&[Broker::RabbitMq]).await;
    // A sink slower than the stop: what it has not committed is never acked, so it stays
    // with the broker for the next consumer.
    let queue = format!("weir-test-slow-{}", std::process::id());
    let payloads: Vec<Vec<u8>> = (0..500)
        .map(|i| format!(r#"{{"device_id": "d", "seq": {i}}}"#).into_bytes())
        .collect();
    let channel = publish(&queue, payloads).await;
    let text = format!(
        "api: {{ enabled: false }}
sources:
  broker: {{ type: amqp, url: '{}', queue: '{queue}', prefetch: 50 }}
sinks:
  slow: {{ type: blackhole, inputs: [broker], rate: 100 }}
",
        services::rabbitmq()
    );
    let telemetry = Telemetry::new();
    let topology = RunningTopology::start(&pipeline(&text), &telemetry).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let _ = topology.stop(Duration::from_secs(20)).await;
    let consumed = metric(
        &telemetry,
        "component_sent_events_total",
        &[r#"component_id="slow""#],
    ) as u32;
    assert!(consumed < 500, "the sink is slow ({consumed} consumed)");
    let left = waiting(&channel, &queue).await;
    assert_eq!(
        left + consumed,
        500,
        "{left} left + {consumed} consumed: nothing lost, nothing acked early"
    );
    let _ = channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_with_a_test_ca_and_client_certificates() {
    let _rabbitmq = Lease::shared(&[Broker::RabbitMq]).await;
    let queue = format!("weir-test-tls-{}", std::process::id());
    let payloads: Vec<Vec<u8>> = (0..100)
        .map(|i| format!(r#"{{"device_id": "d", "seq": {i}}}"#).into_bytes())
        .collect();
    let channel = publish(&queue, payloads).await;
    let dir = tempfile::tempdir().unwrap();
    let pki = support::pki::generate(dir.path());
    let port = support::pki::tls_proxy(&pki, true, 5672).await;
    let text = format!(
        "api: {{ enabled: false }}
sources:
  broker:
    type: amqp
    url: 'amqps://guest:guest@localhost:{port}/%2f'
    queue: '{queue}'
    tls: {{ ca_file: '{}', cert_file: '{}', key_file: '{}' }}
sinks:
  out: {{ type: file, inputs: [broker], path: '{}/out.ndjson' }}
",
        pki.ca.display(),
        pki.client_cert.display(),
        pki.client_key.display(),
        dir.path().display()
    );
    let telemetry = Telemetry::new();
    let topology = RunningTopology::start(&pipeline(&text), &telemetry).unwrap();
    let out = dir.path().join("out.ndjson");
    let arrived = eventually(Duration::from_secs(20), || lines(&out).len() >= 100).await;
    let _ = topology.stop(Duration::from_secs(10)).await;
    let _ = channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    assert!(
        arrived,
        "messages arrive over TLS; errors: {}",
        metric(
            &telemetry,
            "component_errors_total",
            &[r#"component_id="broker""#]
        )
    );
}
