//! `kill -9` while consuming RabbitMQ: 100,000 messages, two crashes, a file sink that
//! fsyncs. Every message id is in the file at least once; duplicates (messages written but
//! not yet acked when weir died) are counted and reported.

use std::time::Duration;

use lapin::options::{BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};

use crate::support::services::{Broker, Lease};
use crate::support::{self, Weir, free_port, services};

const MESSAGES: u64 = 100_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_survives_two_kill_9s() {
    let _rabbitmq = Lease::shared(&[Broker::RabbitMq]).await;
    let queue = format!("weir-kill-{}", std::process::id());
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
    for i in 0..MESSAGES {
        let payload = format!(
            r#"{{"device_id": "d{}", "id": {i}, "temperature": 20}}"#,
            i % 100
        );
        channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                payload.as_bytes(),
                BasicProperties::default(),
            )
            .await
            .unwrap();
    }

    let dir = tempfile::tempdir().unwrap();
    let api = free_port();
    let pipeline = dir.path().join("pipeline.yaml");
    std::fs::write(
        &pipeline,
        format!(
            "api: {{ listen: 127.0.0.1:{api} }}\ndata_dir: state\nsources:\n  broker: {{ type: amqp, url: '{}', queue: '{queue}', prefetch: 500, declare: {{ durable: true }} }}\nsinks:\n  out: {{ type: file, inputs: [broker], path: out.ndjson, fsync: true }}\n",
            services::rabbitmq()
        ),
    )
    .unwrap();
    let api_addr = format!("127.0.0.1:{api}").parse().unwrap();
    let weir = Weir::start(dir.path(), &pipeline, api_addr).await;
    let weir = weir
        .crash_and_restart(2, Duration::from_millis(1500), dir.path(), &pipeline)
        .await;

    // Wait until every id is in the file, then stop.
    let out = dir.path().join("out.ndjson");
    let seen = support::occurrences(&out, "id", MESSAGES as usize, Duration::from_secs(180)).await;
    let status = tokio::task::spawn_blocking(move || weir.terminate())
        .await
        .unwrap();
    assert!(status.success());
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    println!(
        "kill -9 x2 on AMQP: {} of {MESSAGES} ids written, {duplicates} duplicates",
        seen.len()
    );
    assert_eq!(
        seen.len() as u64,
        MESSAGES,
        "every message id is in the sink"
    );
    let _ = channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
}
