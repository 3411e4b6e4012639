//! What becomes of cloud-to-device messages, out of the gateway's named outputs: expired
//! ones are dead-lettered by the gateway's timer (no device needs to connect) and
//! reported as `Expired` feedback when their `ack` asks; a message Microsoft's Python SDK
//! received and acknowledged is reported as `Success`; what expires while weir is down is
//! settled after the restart. The `device_message` action queues a message an event asks
//! for (templated device, body, properties), its feedback comes out of the gateway, and an
//! unknown device is dead-lettered by the action.

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use weir::devicebound::{Ack, Devicebound, NewMessage, Queues};
use weir::registry::{DeviceSpec, Registry};
use weir::telemetry::Telemetry;
use weir::topology::RunningTopology;

use crate::support::azure_sdk::{self, connection_string, gateway_address};
use crate::support::{eventually, free_port, lines, pipeline};

/// A gateway `devices` whose default output, feedback and dead letters go to files.
const SINKS: &str = "sinks:
  out: { type: file, inputs: [devices], path: '{d}/out.ndjson' }
  feedback: { type: file, inputs: [devices.feedback], path: '{d}/feedback.ndjson' }
  dead: { type: file, inputs: [devices.devicebound_dead_letters], path: '{d}/dead.ndjson' }
";

fn write_pipeline(dir: &Path, host: Ipv4Addr, rest: &str) -> String {
    let text = format!(
        "api: {{ enabled: false }}
data_dir: '{d}'
registry: {{}}
sources:
  devices: {gateway}
{rest}",
        d = dir.display(),
        gateway = azure_sdk::gateway_source(dir, host),
        rest = rest.replace("{d}", &dir.display().to_string()),
    );
    std::fs::write(dir.join("pipeline.yaml"), &text).unwrap();
    text
}

fn queues(topology: &RunningTopology) -> Arc<Queues> {
    let hub = topology.services().get::<Devicebound>().unwrap();
    hub.gateway(None).unwrap()
}

fn register(topology: &RunningTopology, id: &str) -> String {
    let registry = topology.services().get::<Registry>().unwrap();
    let device = registry
        .create(DeviceSpec {
            id: id.into(),
            fields: Default::default(),
        })
        .unwrap();
    device.primary_key.into_exposed()
}

fn message(payload: &str, ttl: Duration, ack: Ack) -> NewMessage {
    NewMessage {
        payload: payload.into(),
        properties: vec![("colour".into(), "red".into())],
        ttl,
        ack,
        ..NewMessage::default()
    }
}

/// The records of `file` whose `field` is `value`.
fn with(file: &Path, field: &str, value: &str) -> Vec<Value> {
    lines(file)
        .into_iter()
        .filter(|line| line[field] == value)
        .collect()
}

async fn sdk_receive(dir: &Path, host: Ipv4Addr, device: &str, key: &str, count: usize) -> String {
    let (dir, ca) = (dir.to_path_buf(), dir.join("ca.pem"));
    let conn = connection_string(host, device, key);
    tokio::task::spawn_blocking(move || azure_sdk::run(&dir, "receive", &conn, &ca, count))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_dead_letters_by_timer_and_feedback_follows_ack_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let host = gateway_address();
    let text = write_pipeline(d, host, SINKS);
    let telemetry = Telemetry::new();
    let topology = RunningTopology::start(&pipeline(&text), &telemetry).unwrap();
    let key = register(&topology, "fb-lamp-1");
    register(&topology, "fb-lamp-2");
    let q = queues(&topology);
    let second = Duration::from_secs(1);
    let hour = Duration::from_secs(3600);
    let expiring = q
        .enqueue("fb-lamp-1", message("late", second, Ack::Full))
        .unwrap();
    let silent = q
        .enqueue("fb-lamp-2", message("quiet", second, Ack::None))
        .unwrap();
    let kept = q
        .enqueue("fb-lamp-1", message("on time", hour, Ack::Positive))
        .unwrap();
    let (feedback, dead) = (d.join("feedback.ndjson"), d.join("dead.ndjson"));

    // No device connects: the timer dead-letters both, feedback only where `ack` asks.
    assert!(
        eventually(Duration::from_secs(15), || lines(&dead).len() == 2).await,
        "dead letters: {:?}",
        lines(&dead)
    );
    let expired = with(&dead, "messageId", &expiring.message.id);
    assert_eq!(expired.len(), 1, "{:?}", lines(&dead));
    assert_eq!(expired[0]["statusCode"], "Expired");
    assert_eq!(expired[0]["payload"], "late");
    assert_eq!(expired[0]["properties"]["colour"], "red");
    assert_eq!(expired[0]["device_id"], "fb-lamp-1");
    assert_eq!(with(&dead, "messageId", &silent.message.id).len(), 1);
    assert!(eventually(Duration::from_secs(10), || lines(&feedback).len() == 1).await);
    let record = &lines(&feedback)[0];
    assert_eq!(record["originalMessageId"], expiring.message.id.as_str());
    assert_eq!(record["deviceId"], "fb-lamp-1");
    assert_eq!(record["statusCode"], "Expired");
    assert_eq!(
        record["enqueuedTimeUtc"],
        expiring.message.enqueued_at.to_string()
    );
    // Gone from the queue file too, once the outputs committed its outcome (until then
    // the file keeps the outcome, so a crash cannot lose the feedback).
    let queue_file = d.join("devicebound/devices.json");
    let settled = || {
        let file = std::fs::read_to_string(&queue_file).unwrap_or_default();
        !file.contains(&expiring.message.id) && file.contains(&kept.message.id)
    };
    assert!(
        eventually(Duration::from_secs(10), settled).await,
        "{}",
        std::fs::read_to_string(&queue_file).unwrap_or_default()
    );

    // The SDK gets only the live message; its PUBACK is positive feedback.
    let said = sdk_receive(d, host, "fb-lamp-1", &key, 1).await;
    assert!(said.contains("on time") && !said.contains("late"), "{said}");
    assert!(
        eventually(Duration::from_secs(10), || {
            with(&feedback, "originalMessageId", &kept.message.id).len() == 1
        })
        .await
    );
    let success = &with(&feedback, "originalMessageId", &kept.message.id)[0];
    assert_eq!(success["statusCode"], "Success");

    // What expires while weir is down is settled after the restart.
    let down = q
        .enqueue(
            "fb-lamp-2",
            message("while down", Duration::from_secs(2), Ack::Negative),
        )
        .unwrap();
    drop(q);
    topology.stop(Duration::from_secs(10)).await;
    while jiff::Timestamp::now() <= down.message.expires_at {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let topology = RunningTopology::start(&pipeline(&text), &telemetry).unwrap();
    assert!(
        eventually(Duration::from_secs(15), || {
            with(&feedback, "originalMessageId", &down.message.id).len() == 1
        })
        .await,
        "{:?}",
        lines(&feedback)
    );
    assert_eq!(
        lines(&feedback).len(),
        3,
        "each outcome once: {:?}",
        lines(&feedback)
    );
    assert_eq!(lines(&dead).len(), 3);
    topology.stop(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_message_action_queues_what_an_event_asks_for() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let host = gateway_address();
    let http: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let rest = format!(
        "  alarms: {{ type: http, listen: '{http}' }}
{SINKS}  action_errors: {{ type: file, inputs: [tell.errors], path: '{{d}}/action-errors.ndjson' }}
actions:
  tell:
    type: device_message
    inputs: [alarms]
    device_id: '{{{{ target }}}}'
    payload: 'please {{{{ command }}}}'
    properties: {{ severity: '{{{{ severity }}}}' }}
    ttl: 10m
    ack: full
    retry: {{ attempts: 1 }}
"
    );
    let text = write_pipeline(d, host, &rest);
    let telemetry = Telemetry::new();
    let topology = RunningTopology::start(&pipeline(&text), &telemetry).unwrap();
    let key = register(&topology, "fb-pump-1");
    let client = reqwest::Client::new();
    let alarm = |target: &str| {
        client
            .post(format!("http://{http}/v1/devices/alarm-box/messages"))
            .json(&serde_json::json!({
                "target": target, "command": "reduce_load", "severity": "major"
            }))
            .send()
    };
    assert_eq!(alarm("fb-pump-1").await.unwrap().status(), 200);
    assert_eq!(alarm("fb-nobody").await.unwrap().status(), 200);

    let said = sdk_receive(d, host, "fb-pump-1", &key, 1).await;
    let received: Value = serde_json::from_str(
        said.lines()
            .find(|l| l.starts_with('{'))
            .expect("a message"),
    )
    .unwrap();
    assert_eq!(received["data"], "please reduce_load");
    assert_eq!(received["custom_properties"]["severity"], "major");
    let id = received["message_id"].as_str().unwrap().to_owned();
    assert!(id.ends_with(".tell"), "{id}");

    let feedback = d.join("feedback.ndjson");
    assert!(
        eventually(Duration::from_secs(10), || {
            with(&feedback, "originalMessageId", &id).len() == 1
        })
        .await
    );
    assert_eq!(
        with(&feedback, "originalMessageId", &id)[0]["statusCode"],
        "Success"
    );
    let errors = d.join("action-errors.ndjson");
    assert!(eventually(Duration::from_secs(10), || !lines(&errors).is_empty()).await);
    let error = &lines(&errors)[0];
    assert_eq!(error["target"], "fb-nobody");
    assert!(error.to_string().contains("not in the registry"), "{error}");
    topology.stop(Duration::from_secs(10)).await;
}

/// A rumqttc client of `device` that never acknowledges what it receives (manual acks,
/// and none sent), subscribed to its cloud-to-device messages.
async fn silent_receiver(
    dir: &Path,
    host: Ipv4Addr,
    device: &str,
    key: &str,
) -> (rumqttc::AsyncClient, rumqttc::EventLoop) {
    use rumqttc::{AsyncClient, MqttOptions, QoS, TlsConfiguration, Transport};
    let expiry = jiff::Timestamp::now().as_second() as u64 + 3600;
    let token = weir::registry::sas::sign(
        &format!("{host}/devices/{device}"),
        &weir::registry::keys::decode(key).unwrap(),
        expiry,
    );
    let mut options = MqttOptions::new(device, (host.to_string().as_str(), 8883));
    options
        .set_keep_alive(30)
        .set_ack_mode(rumqttc::AckMode::Manual)
        .set_credentials(format!("{host}/{device}/?api-version=2021-04-12"), token);
    let tls = weir::tls::TlsConfig {
        ca_file: Some(dir.join("ca.pem")),
        ..Default::default()
    }
    .client_config()
    .unwrap();
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    let (client, eventloop) = AsyncClient::builder(options).capacity(16).build();
    client
        .subscribe(
            format!("devices/{device}/messages/devicebound/#"),
            QoS::AtLeastOnce,
        )
        .await
        .unwrap();
    (client, eventloop)
}

/// The payload of the next message the client receives within `wait`.
async fn received(eventloop: &mut rumqttc::EventLoop, wait: Duration) -> Option<String> {
    use rumqttc::{Event, Incoming};
    tokio::time::timeout(wait, async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Incoming::Publish(publish))) => {
                    return Some(String::from_utf8_lossy(&publish.payload).into_owned());
                }
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    })
    .await
    .ok()
    .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_never_completed_is_dead_lettered_after_max_delivery_count() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let host = gateway_address();
    let text = write_pipeline(d, host, SINKS).replacen(
        "' } }",
        "' }, devicebound: { max_delivery_count: 2 } }",
        1,
    );
    assert!(text.contains("max_delivery_count: 2"), "{text}");
    let telemetry = Telemetry::new();
    let topology = RunningTopology::start(&pipeline(&text), &telemetry).unwrap();
    let key = register(&topology, "fb-valve-1");
    let q = queues(&topology);
    let hour = Duration::from_secs(3600);
    let unlucky = q
        .enqueue(
            "fb-valve-1",
            message("never completed", hour, Ack::Negative),
        )
        .unwrap();

    // Delivered twice, each time to a connection that ends without a PUBACK.
    for delivery in 1..=2 {
        let (client, mut eventloop) = silent_receiver(d, host, "fb-valve-1", &key).await;
        let payload = received(&mut eventloop, Duration::from_secs(10)).await;
        assert_eq!(
            payload.as_deref(),
            Some("never completed"),
            "delivery {delivery}"
        );
        let _ = client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), eventloop.poll()).await;
        drop(eventloop);
    }
    let dead = d.join("dead.ndjson");
    assert!(lines(&dead).is_empty(), "not dead yet: {:?}", lines(&dead));

    // The third subscription finds it spent: dead-lettered, and not sent again.
    let (_client, mut eventloop) = silent_receiver(d, host, "fb-valve-1", &key).await;
    let third = received(&mut eventloop, Duration::from_secs(3)).await;
    assert_eq!(third, None, "a spent message is not delivered again");
    assert!(
        eventually(Duration::from_secs(10), || lines(&dead).len() == 1).await,
        "dead letters: {:?}",
        lines(&dead)
    );
    let letter = &lines(&dead)[0];
    assert_eq!(letter["messageId"], unlucky.message.id.as_str());
    assert_eq!(letter["statusCode"], "DeliveryCountExceeded");
    assert_eq!(letter["payload"], "never completed");
    assert_eq!(letter["device_id"], "fb-valve-1");
    // `ack: negative` asks for the feedback of a message that never got through.
    let feedback = d.join("feedback.ndjson");
    assert!(
        eventually(Duration::from_secs(10), || {
            with(&feedback, "originalMessageId", &unlucky.message.id).len() == 1
        })
        .await,
        "feedback: {:?}",
        lines(&feedback)
    );
    assert_eq!(
        with(&feedback, "originalMessageId", &unlucky.message.id)[0]["statusCode"],
        "DeliveryCountExceeded"
    );
    assert!(
        eventually(Duration::from_secs(10), || {
            let file = std::fs::read_to_string(d.join("devicebound/devices.json"));
            !file.unwrap_or_default().contains(&unlucky.message.id)
        })
        .await,
        "gone from the queue file once settled"
    );
    topology.stop(Duration::from_secs(10)).await;
}
