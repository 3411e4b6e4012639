//! Publishing to the local Mosquitto as a device would, starting pipelines that subscribe
//! to it, and waiting until a subscription is in place (connected is not yet subscribed).

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, PublishOptions};
use weir::telemetry::Telemetry;
use weir::topology::RunningTopology;

/// Starts the pipeline `text` and waits until every source named in `sources` is
/// connected and subscribed.
pub async fn start_subscribed(text: &str, sources: &[&str]) -> (RunningTopology, Arc<Telemetry>) {
    let telemetry = Telemetry::new();
    let topology = RunningTopology::start(&super::pipeline(text), &telemetry).unwrap();
    for source in sources {
        let label = format!(r#"component_id="{source}""#);
        assert!(
            super::eventually(Duration::from_secs(10), || super::metric(
                &telemetry,
                "source_connected",
                &[&label]
            ) == 1.0)
            .await,
            "{source} connects and subscribes"
        );
    }
    // The gauge rises once the broker answered every SUBSCRIBE: messages published from
    // now on reach the source.
    (topology, telemetry)
}

/// Publishes `messages` (topic, payload) with QoS 1 as client `<prefix>-publisher` and
/// returns once every PUBACK has arrived.
pub async fn publish(prefix: &str, messages: Vec<(String, Vec<u8>)>) {
    let mut options = MqttOptions::new(format!("{prefix}-publisher"), ("127.0.0.1", 1883));
    options
        .set_keep_alive(30)
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::builder(options).capacity(4096).build();
    let total = messages.len();
    let sender = tokio::spawn(async move {
        for (topic, payload) in messages {
            client
                .publish(topic, payload, PublishOptions::at_least_once())
                .await
                .unwrap();
        }
        client
    });
    let mut acked = 0;
    while acked < total {
        if let Event::Incoming(Incoming::PubAck(_)) = eventloop.poll().await.unwrap() {
            acked += 1;
        }
    }
    let _ = sender.await.unwrap().disconnect().await;
}

/// A publish of [`publish_v5`]: topic, payload and MQTT 5 user properties.
pub struct Publish5 {
    pub topic: String,
    pub payload: Vec<u8>,
    pub user_properties: Vec<(String, String)>,
    pub content_type: Option<String>,
}

/// Publishes over MQTT 5 with QoS 1 as client `<prefix>-publisher5` and returns once every
/// PUBACK has arrived.
pub async fn publish_v5(prefix: &str, messages: Vec<Publish5>) {
    use rumqttc_v5::{
        AsyncClient, Event, Incoming, MqttOptions, PublishOptions, PublishProperties,
    };
    let mut options = MqttOptions::new(format!("{prefix}-publisher5"), ("127.0.0.1", 1883));
    options.set_keep_alive(30);
    let (client, mut eventloop) = AsyncClient::builder(options).capacity(4096).build();
    let total = messages.len();
    let sender = tokio::spawn(async move {
        for message in messages {
            let properties = PublishProperties {
                user_properties: message.user_properties,
                content_type: message.content_type,
                ..Default::default()
            };
            let options = PublishOptions::at_least_once().properties(properties);
            client
                .publish(message.topic, message.payload, options)
                .await
                .unwrap();
        }
        client
    });
    let mut acked = 0;
    while acked < total {
        if let Event::Incoming(Incoming::PubAck(_)) = eventloop.poll().await.unwrap() {
            acked += 1;
        }
    }
    let _ = sender.await.unwrap().disconnect().await;
}

/// Returns once the broker has a subscriber for `topic`: publishes `payload` there at QoS 1,
/// as MQTT 5 client `<prefix>-probe`, until the PUBACK says it was routed rather than "no
/// matching subscribers". A `weir run` answers `/ready` (and sets `source_connected`)
/// before its SUBSCRIBE is through, and what is published before then reaches nobody: a
/// test that must count every publish waits here, not for a while. The probe that finds
/// the subscriber is delivered to it, so `payload` must be one the test tells apart (an
/// undecodable one goes to the source's `<id>.errors`).
pub async fn await_subscriber(prefix: &str, topic: &str, payload: &[u8]) {
    use rumqttc_v5::{AsyncClient, Event, Incoming, MqttOptions, PubAckReason, PublishOptions};
    let mut options = MqttOptions::new(format!("{prefix}-probe"), ("127.0.0.1", 1883));
    options.set_keep_alive(30);
    let (client, mut eventloop) = AsyncClient::builder(options).capacity(16).build();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        client
            .publish(topic, payload.to_vec(), PublishOptions::at_least_once())
            .await
            .unwrap();
        let reason = loop {
            if let Event::Incoming(Incoming::PubAck(ack)) = eventloop.poll().await.unwrap() {
                break ack.reason;
            }
        };
        match reason {
            PubAckReason::Success => break,
            PubAckReason::NoMatchingSubscribers => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "nobody subscribed to {topic} within 30 s"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("the broker refused the probe on {topic}: {other:?}"),
        }
    }
    let _ = client.disconnect().await;
}
