//! The connection: (re)connects with backoff, subscribes on every connect, and hands the
//! publishes over to the source's loop.

use std::time::Duration as StdDuration;

use tokio::sync::mpsc;

use super::session::{Client, EventLoop, Message, PollError, Polled};
use super::{MqttSourceConfig, MqttVersion};
use crate::telemetry::InternalEvent;
use crate::telemetry::events::{ComponentError, ErrorType, Stage};

/// Drives the connection: (re)connects with backoff, subscribes, hands publishes over.
pub(super) async fn poll(
    mut eventloop: EventLoop,
    client: Client,
    config: MqttSourceConfig,
    id: crate::config::ComponentId,
    telemetry: crate::telemetry::ComponentTelemetry,
    messages: mpsc::Sender<Message>,
    stop: tokio_util::sync::CancellationToken,
) {
    let connected = telemetry.connected();
    // SUBACKs still to come for the current connection.
    let mut awaiting_subacks = 0;
    let mut backoff = StdDuration::from_millis(200);
    let report = |message: &str| {
        ComponentError {
            error_type: ErrorType::Io,
            stage: Stage::Receiving,
            message,
            count: 1,
        }
        .emit(&telemetry)
    };
    loop {
        let polled = tokio::select! {
            _ = stop.cancelled() => break,
            polled = eventloop.poll() => polled,
        };
        match polled {
            Ok(Polled::Connected { resumed }) => {
                backoff = StdDuration::from_millis(200);
                for topic in &config.topics {
                    let filter = match &config.shared_group {
                        Some(group) => format!("$share/{group}/{topic}"),
                        None => topic.clone(),
                    };
                    if client.subscribe(filter, config.qos).await.is_err() {
                        return;
                    }
                }
                awaiting_subacks = config.topics.len();
                tracing::info!(component_id = %id, topics = ?config.topics, resumed, protocol = ?config.protocol, "connected over MQTT; subscribing");
            }
            Ok(Polled::Subscribed(answer)) => {
                if let Err(why) = answer {
                    report(&format!("MQTT broker {}: {why}", config.url.redacted()));
                }
                awaiting_subacks = awaiting_subacks.saturating_sub(1);
                if awaiting_subacks == 0 {
                    // Connected means able to receive: every subscription was answered.
                    connected.set(1);
                    tracing::info!(component_id = %id, topics = ?config.topics, "subscribed over MQTT");
                }
            }
            Ok(Polled::Message(message)) => {
                // Closed: the source is stopping; the publish stays unacked for redelivery.
                let _ = messages.send(message).await;
            }
            Ok(Polled::Refused(why)) => {
                report(&format!("MQTT broker {}: {why}", config.url.redacted()))
            }
            Ok(Polled::Nothing) => {}
            Err(PollError::Stopped) => break,
            Err(PollError::Failed(err)) => {
                connected.set(0);
                let hint = match (
                    config.protocol,
                    err.contains("protocol version") || err.contains("ProtocolVersion"),
                ) {
                    (MqttVersion::V5, true) => {
                        " (a broker without MQTT 5 needs `protocol: \"3.1.1\"`)"
                    }
                    _ => "",
                };
                report(&format!(
                    "MQTT connection to {} failed: {err}{hint}; retrying in {backoff:?}",
                    config.url.redacted()
                ));
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.cancelled() => break,
                }
                backoff = (backoff * 2).min(StdDuration::from_secs(30));
            }
        }
    }
    connected.set(0);
}
