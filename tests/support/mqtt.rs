//! Publishing to the local Mosquitto as a device would.

use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, PublishOptions};

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
