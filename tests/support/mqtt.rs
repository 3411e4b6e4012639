//! Publishing to the local Mosquitto as a device would.

use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, PublishOptions};

/// Publishes `messages` (topic, payload) with QoS 1 as client `<prefix>-publisher` and
/// returns once every PUBACK has arrived.
pub async fn publish(prefix: &str, messages: Vec<(String, Vec<u8>)>) {
    let mut options = MqttOptions::new(format!("{prefix}-publisher"), ("127.0.0.1", 1883));
    options.set_keep_alive(30);
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
