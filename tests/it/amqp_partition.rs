//! Partitioned consumption on RabbitMQ's consistent-hash exchange: two `amqp` sources with
//! different `instance`s split 200 devices, each device's readings all at one instance;
//! with `single_active_consumer`, a second process on one instance's queue is a standby
//! that takes over when the first stops.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeleteOptions,
};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use weir::telemetry::Telemetry;
use weir::topology::RunningTopology;

use crate::support::services::{Broker, Lease};
use crate::support::{eventually, lines, metric, pipeline, services};

/// One instance's pipeline: its share of `exchange`, into `out`.
fn instance(exchange: &str, instance: &str, extra: &str, out: &Path) -> String {
    format!(
        "api: {{ enabled: false }}
sources:
  share:
    type: amqp
    url: '{url}'
    queue: '{exchange}'
    partition: {{ exchange: '{exchange}', instance: '{instance}', weight: 20{extra} }}
sinks:
  out: {{ type: file, inputs: [share], path: '{out}', fsync: true }}
",
        url = services::rabbitmq(),
        out = out.display()
    )
}

async fn start(text: &str) -> (RunningTopology, std::sync::Arc<Telemetry>) {
    let telemetry = Telemetry::new();
    let topology = RunningTopology::start(&pipeline(text), &telemetry).unwrap();
    assert!(
        eventually(Duration::from_secs(20), || metric(
            &telemetry,
            "source_connected",
            &[r#"component_id="share""#]
        ) == 1.0)
        .await,
        "the source declares its partition and consumes"
    );
    (topology, telemetry)
}

/// Publishes one reading per (device, seq) to `exchange`, routing key = device id, as the
/// `amqp` sink does; returns once the broker confirmed all of them.
async fn publish(exchange: &str, readings: &[(String, u64)]) {
    let connection = Connection::connect(services::rabbitmq(), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut confirms = Vec::new();
    for (device, seq) in readings {
        let body = format!(r#"{{"device_id": "{device}", "seq": {seq}}}"#);
        let confirm = channel
            .basic_publish(
                exchange.into(),
                device.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body.as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap();
        confirms.push(confirm);
    }
    for confirm in confirms {
        let confirmation = confirm.await.unwrap();
        assert!(
            confirmation.is_ack() && confirmation.take_message().is_none(),
            "the exchange routed every reading to a queue"
        );
    }
    let _ = connection.close(200, "done".into()).await;
}

async fn cleanup(exchange: &str, queues: &[String]) {
    let connection = Connection::connect(services::rabbitmq(), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    for queue in queues {
        let _ = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = channel
        .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
        .await;
}

/// (device, seq) of every line of `file`.
fn readings(file: &Path) -> Vec<(String, u64)> {
    lines(file)
        .iter()
        .map(|line| {
            (
                line["device_id"].as_str().unwrap().to_owned(),
                line["seq"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_split_200_devices_and_each_device_stays_at_one() {
    let _rabbitmq = Lease::shared(&[Broker::RabbitMq]).await;
    let exchange = format!("weir-test-partition-{}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let outs = [dir.path().join("p1.ndjson"), dir.path().join("p2.ndjson")];
    let (first, _) = start(&instance(&exchange, "p1", "", &outs[0])).await;
    let (second, _) = start(&instance(&exchange, "p2", "", &outs[1])).await;

    let sent: Vec<(String, u64)> = (0..2000u64)
        .map(|n| (format!("dev-{:03}", n % 200), n))
        .collect();
    publish(&exchange, &sent).await;
    let total = || readings(&outs[0]).len() + readings(&outs[1]).len();
    assert!(
        eventually(Duration::from_secs(30), || total() >= 2000).await,
        "{} of 2000 readings arrived",
        total()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = first.stop(Duration::from_secs(10)).await;
    let _ = second.stop(Duration::from_secs(10)).await;

    let mut owner: BTreeMap<String, usize> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    let mut per_instance = [BTreeSet::new(), BTreeSet::new()];
    for (n, out) in outs.iter().enumerate() {
        for (device, seq) in readings(out) {
            assert!(seen.insert(seq), "seq {seq} arrived twice");
            let at = *owner.entry(device.clone()).or_insert(n);
            assert_eq!(at, n, "{device}'s readings went to both instances");
            per_instance[n].insert(device);
        }
    }
    assert_eq!(seen.len(), 2000, "every reading arrived");
    assert_eq!(owner.len(), 200);
    let (a, b) = (per_instance[0].len(), per_instance[1].len());
    assert!(
        a >= 20 && b >= 20,
        "both instances hold a share of the devices: {a} and {b}"
    );
    cleanup(
        &exchange,
        &[format!("{exchange}.p1"), format!("{exchange}.p2")],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_active_consumer_standby_takes_over_when_the_active_one_stops() {
    let _rabbitmq = Lease::shared(&[Broker::RabbitMq]).await;
    let exchange = format!("weir-test-partition-sac-{}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let outs = [dir.path().join("a.ndjson"), dir.path().join("b.ndjson")];
    let sac = ", single_active_consumer: true";
    let (active, _) = start(&instance(&exchange, "p1", sac, &outs[0])).await;
    let (standby, _) = start(&instance(&exchange, "p1", sac, &outs[1])).await;

    let first: Vec<(String, u64)> = (0..100).map(|n| (format!("d{}", n % 7), n)).collect();
    publish(&exchange, &first).await;
    assert!(eventually(Duration::from_secs(20), || readings(&outs[0]).len() >= 100).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        readings(&outs[1]).is_empty(),
        "the standby receives nothing"
    );

    let _ = active.stop(Duration::from_secs(10)).await;
    let second: Vec<(String, u64)> = (100..200).map(|n| (format!("d{}", n % 7), n)).collect();
    publish(&exchange, &second).await;
    assert!(
        eventually(Duration::from_secs(20), || readings(&outs[1]).len() >= 100).await,
        "the standby took over: {} readings",
        readings(&outs[1]).len()
    );
    let _ = standby.stop(Duration::from_secs(10)).await;
    let mut seqs: Vec<u64> = readings(&outs[0])
        .into_iter()
        .chain(readings(&outs[1]))
        .map(|(_, seq)| seq)
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..200).collect::<Vec<_>>(), "each reading once");
    cleanup(&exchange, &[format!("{exchange}.p1")]).await;
}
