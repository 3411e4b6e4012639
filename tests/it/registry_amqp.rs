//! The registry as a gate at the `amqp` source, against the real RabbitMQ: readings of a
//! disabled device go to `<id>.errors`, and their messages are still acknowledged (the queue
//! drains), while an enabled device's readings pass.

use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use weir::registry::{DeviceSpec, Registry, Status};
use weir::telemetry::Telemetry;
use weir::topology::RunningTopology;

use crate::support::services::{Broker, Lease};
use crate::support::{auth_failures, eventually, lines, metric, pipeline, services};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_of_disabled_devices_are_dead_lettered_and_acked() {
    let _rabbitmq = Lease::shared(&[Broker::RabbitMq]).await;
    let queue = format!("weir-registry-{}", std::process::id());
    let connection = Connection::connect(services::rabbitmq(), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(queue.as_str().into(), durable, FieldTable::default())
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "api: {{ enabled: false }}
data_dir: '{d}'
registry: {{}}
sources:
  broker: {{ type: amqp, url: '{}', queue: '{queue}', declare: {{ durable: true }} }}
sinks:
  out: {{ type: file, inputs: [broker], path: '{d}/out.ndjson' }}
  dead: {{ type: file, inputs: [broker.errors], path: '{d}/dead.ndjson' }}
",
        services::rabbitmq(),
        d = dir.path().display()
    );
    let telemetry = Telemetry::new();
    let topology = RunningTopology::start(&pipeline(&text), &telemetry).unwrap();
    let registry = topology.services().get::<Registry>().unwrap();
    registry
        .create(DeviceSpec {
            id: "off".into(),
            ..DeviceSpec::default()
        })
        .unwrap();
    registry.set_status("off", Status::Disabled, None).unwrap();

    // One message holds readings of both devices; unknown ones are accepted by default.
    let messages = [
        r#"[{"device_id": "on", "seq": 1}, {"device_id": "off", "seq": 2}]"#,
        r#"{"device_id": "off", "seq": 3}"#,
        r#"{"device_id": "unregistered", "seq": 4}"#,
    ];
    for body in messages {
        channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                BasicProperties::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let (out, dead) = (
        dir.path().join("out.ndjson"),
        dir.path().join("dead.ndjson"),
    );
    assert!(
        eventually(Duration::from_secs(20), || lines(&out).len() == 2
            && lines(&dead).len() == 2)
        .await,
        "out {:?} dead {:?}",
        lines(&out),
        lines(&dead)
    );
    let seqs = |path| -> Vec<u64> {
        lines(path)
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(seqs(&out), [1, 4]);
    assert_eq!(seqs(&dead), [2, 3]);
    assert!(
        eventually(Duration::from_secs(10), || metric(
            &telemetry,
            "source_pending_deliveries",
            &[r#"component_id="broker""#]
        ) == 0.0)
        .await,
        "every message was acknowledged"
    );
    assert_eq!(auth_failures(&telemetry, "disabled"), 2.0);
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let left = channel
        .queue_declare(queue.as_str().into(), passive, FieldTable::default())
        .await
        .unwrap()
        .message_count();
    assert_eq!(left, 0, "the queue drained");
    topology.stop(Duration::from_secs(10)).await;
    let _ = channel
        .queue_delete(queue.as_str().into(), Default::default())
        .await;
}
