//! The `amqp` sink against the real RabbitMQ: `http → amqp sink → RabbitMQ → amqp source →
//! file` carries every reading once, and a device's request is answered only after the
//! broker confirmed its readings (a broker that is down holds the answer back until it is
//! up again).

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt as _;
use lapin::options::{ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use weir::telemetry::Telemetry;
use weir::topology::RunningTopology;

use crate::support::forward::Forwarder;
use crate::support::services::{Broker, Lease};
use crate::support::{eventually, free_port, lines, metric, pipeline, services};

/// The processing side: a queue bound to a topic exchange, consumed into a file.
fn processing(dir: &std::path::Path, exchange: &str, queue: &str) -> String {
    format!(
        "api: {{ enabled: false }}
data_dir: '{d}/processing'
sources:
  broker:
    type: amqp
    url: '{url}'
    queue: '{queue}'
    event_time: event_time
    declare: {{ durable: true, exchange: '{exchange}', routing_keys: ['#'] }}
sinks:
  out: {{ type: file, inputs: [broker], path: '{d}/out.ndjson', fsync: true }}
",
        url = services::rabbitmq(),
        d = dir.display()
    )
}

/// The ingest side: devices POST readings, forwarded to `url`'s exchange.
fn ingest(dir: &std::path::Path, port: u16, url: &str, exchange: &str, extra: &str) -> String {
    format!(
        "api: {{ enabled: false }}
data_dir: '{d}/ingest'
sources:
  devices: {{ type: http, listen: '127.0.0.1:{port}', event_time: ts{extra} }}
sinks:
  forward:
    type: amqp
    inputs: [devices]
    url: '{url}'
    exchange: '{exchange}'
    retry: {{ initial_backoff: 50ms, max_backoff: 500ms }}
",
        d = dir.display()
    )
}

async fn connected(telemetry: &std::sync::Arc<Telemetry>, component: &str) -> bool {
    let label = format!(r#"component_id="{component}""#);
    eventually(Duration::from_secs(20), || {
        metric(telemetry, "source_connected", &[&label]) == 1.0
    })
    .await
}

async fn cleanup(exchange: &str, queue: &str) {
    let connection = Connection::connect(services::rabbitmq(), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let _ = channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await;
    let _ = channel
        .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_readings_cross_rabbitmq_once_each_with_their_device_and_time() {
    let _rabbitmq = Lease::shared(&[Broker::RabbitMq]).await;
    let name = format!("weir-test-amqp-sink-{}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let processing_telemetry = Telemetry::new();
    let processing = RunningTopology::start(
        &pipeline(&processing(dir.path(), &name, &name)),
        &processing_telemetry,
    )
    .unwrap();
    assert!(connected(&processing_telemetry, "broker").await);

    let port = free_port();
    let telemetry = Telemetry::new();
    let ingest = RunningTopology::start(
        &pipeline(&ingest(dir.path(), port, services::rabbitmq(), &name, "")),
        &telemetry,
    )
    .unwrap();
    // 40 devices × 25 requests of 2 readings, 8 requests at a time.
    let client = reqwest::Client::new();
    let requests: Vec<(String, u64)> = (0..1000u64)
        .map(|n| (format!("pump-{}", n % 40), n))
        .collect();
    let answers: Vec<u16> = futures::stream::iter(requests)
        .map(|(device, n)| {
            let client = client.clone();
            async move {
                let body = format!(
                    r#"[{{"seq": {}, "ts": "2026-12-01T00:00:{:02}Z"}}, {{"seq": {}, "ts": "2026-12-01T00:00:{:02}Z"}}]"#,
                    2 * n,
                    n % 60,
                    2 * n + 1,
                    n % 60
                );
                client
                    .post(format!("http://127.0.0.1:{port}/v1/devices/{device}/messages"))
                    .body(body)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    assert!(answers.iter().all(|s| *s == 200), "{answers:?}");
    assert_eq!(
        metric(
            &telemetry,
            "component_sent_events_total",
            &[r#"component_id="forward""#]
        ),
        2000.0,
        "a 200 means the broker confirmed the readings"
    );

    let out = dir.path().join("out.ndjson");
    assert!(
        eventually(Duration::from_secs(30), || lines(&out).len() >= 2000).await,
        "{} of 2000 readings arrived",
        lines(&out).len()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = ingest.stop(Duration::from_secs(10)).await;
    let _ = processing.stop(Duration::from_secs(10)).await;

    let readings = lines(&out);
    assert_eq!(readings.len(), 2000, "nothing twice");
    let mut seen = BTreeMap::new();
    for reading in &readings {
        let seq = reading["seq"].as_u64().unwrap();
        let device = reading["device_id"].as_str().unwrap().to_owned();
        assert_eq!(device, format!("pump-{}", (seq / 2) % 40));
        assert_eq!(
            reading["meta"]["event_time"],
            format!("2026-12-01T00:00:{:02}Z", (seq / 2) % 60),
            "the event time crosses the broker"
        );
        assert_eq!(
            reading["meta"]["routing_key"], device,
            "the routing key is the device id"
        );
        assert!(seen.insert(seq, device).is_none(), "seq {seq} twice");
    }
    assert_eq!(seen.len(), 2000);
    cleanup(&name, &name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waits_for_a_broker_that_is_down_and_gets_200_once_it_confirmed() {
    let _rabbitmq = Lease::shared(&[Broker::RabbitMq]).await;
    let name = format!("weir-test-amqp-sink-down-{}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    // The exchange and queue exist: only the sink's way to the broker is missing.
    let processing_telemetry = Telemetry::new();
    let processing_config = format!(
        "api: {{ enabled: false }}
sources:
  broker:
    type: amqp
    url: '{}'
    queue: '{name}'
    declare: {{ durable: true, exchange: '{name}', routing_keys: ['#'] }}
sinks:
  idle: {{ type: blackhole, inputs: [broker] }}
",
        services::rabbitmq()
    );
    let processing =
        RunningTopology::start(&pipeline(&processing_config), &processing_telemetry).unwrap();
    assert!(connected(&processing_telemetry, "broker").await);
    // Stop consuming, so what the sink publishes stays in the queue to be counted.
    let _ = processing.stop(Duration::from_secs(10)).await;

    let mut broker = Forwarder::closed();
    let url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", broker.port);
    let port = free_port();
    let telemetry = Telemetry::new();
    let ingest = RunningTopology::start(
        &pipeline(&ingest(dir.path(), port, &url, &name, ", ack_timeout: 60s")),
        &telemetry,
    )
    .unwrap();
    let request = tokio::spawn(
        reqwest::Client::new()
            .post(format!(
                "http://127.0.0.1:{port}/v1/devices/pump-1/messages"
            ))
            .body(r#"[{"seq": 1, "ts": 1}, {"seq": 2, "ts": 2}, {"seq": 3, "ts": 3}]"#)
            .send(),
    );
    assert!(
        eventually(Duration::from_secs(10), || metric(
            &telemetry,
            "sink_retries_total",
            &[r#"component_id="forward""#]
        ) >= 3.0)
        .await,
        "the sink retries while the broker is down"
    );
    assert!(
        !request.is_finished(),
        "no answer before the broker confirmed"
    );
    assert_eq!(waiting(&name).await, 0);

    broker.open(5672).await;
    let answer = tokio::time::timeout(Duration::from_secs(20), request)
        .await
        .expect("an answer once the broker is up")
        .unwrap()
        .unwrap();
    assert_eq!(answer.status().as_u16(), 200);
    assert_eq!(waiting(&name).await, 3, "the broker holds every reading");
    let _ = ingest.stop(Duration::from_secs(10)).await;
    cleanup(&name, &name).await;
}

/// Messages in `queue` (asked passively, so a missing queue fails the test).
async fn waiting(queue: &str) -> u32 {
    let connection = Connection::connect(services::rabbitmq(), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let count = channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
        .unwrap()
        .message_count();
    let _ = connection.close(200, "done".into()).await;
    count
}
