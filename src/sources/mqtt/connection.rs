//! The connection: (re)connects with backoff, subscribes on every connect, and hands the
//! publishes over to the source's loop. A take-over loop ([`super::takeover`]) ends it
//! with an error: the source fails rather than fight another client for its session.

use std::time::{Duration as StdDuration, Instant};

use tokio::sync::mpsc;

use super::session::{Client, EventLoop, FailureKind, Message, PollError, Polled};
use super::takeover::{self, TakeOvers};
use super::{MqttSourceConfig, MqttVersion};
use crate::telemetry::InternalEvent;
use crate::telemetry::events::{ComponentError, ErrorType, Stage};

/// Drives the connection: (re)connects with backoff, subscribes, hands publishes over.
/// Fails when another client keeps taking the session over.
#[allow(clippy::too_many_arguments)]
pub(super) async fn poll(
    mut eventloop: EventLoop,
    client: Client,
    config: MqttSourceConfig,
    client_id: String,
    id: crate::config::ComponentId,
    telemetry: crate::telemetry::ComponentTelemetry,
    messages: mpsc::Sender<Message>,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let connected = telemetry.connected();
    let mut take_overs = TakeOvers::default();
    // SUBACKs still to come for the current connection.
    let mut awaiting_subacks = 0;
    let mut backoff = StdDuration::from_millis(200);
    let report_as = |error_type: ErrorType, message: &str| {
        ComponentError {
            error_type,
            stage: Stage::Receiving,
            message,
            count: 1,
        }
        .emit(&telemetry)
    };
    let report = |message: &str| report_as(ErrorType::Io, message);
    loop {
        let polled = tokio::select! {
            _ = stop.cancelled() => break,
            polled = eventloop.poll() => polled,
        };
        match polled {
            Ok(Polled::Connected { resumed }) => {
                take_overs.accepted(Instant::now());
                backoff = StdDuration::from_millis(200);
                for topic in &config.topics {
                    let filter = match &config.shared_group {
                        Some(group) => format!("$share/{group}/{topic}"),
                        None => topic.clone(),
                    };
                    if client.subscribe(filter, config.qos).await.is_err() {
                        return Ok(());
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
            Err(PollError::Failed(failure)) => {
                connected.set(0);
                tracing::debug!(component_id = %id, kind = ?failure.kind, "MQTT connection failed: {}", failure.message);
                if take_overs.failed(failure.kind, Instant::now()) {
                    let message = taken_over(&client_id, &config, failure.kind);
                    report_as(ErrorType::SessionTakenOver, &message);
                    return Err(anyhow::Error::msg(message));
                }
                let err = &failure.message;
                let hint = match (
                    config.protocol,
                    err.contains("protocol version") || err.contains("ProtocolVersion"),
                    failure.kind,
                ) {
                    (MqttVersion::V5, true, _) => {
                        " (a broker without MQTT 5 needs `protocol: \"3.1.1\"`)"
                    }
                    (_, _, FailureKind::Unauthorized) => {
                        " (not authorized: check `username` and `password`)"
                    }
                    _ => "",
                };
                let error_type = match failure.kind {
                    FailureKind::Unauthorized => ErrorType::Unauthorized,
                    _ => ErrorType::Io,
                };
                report_as(
                    error_type,
                    &format!(
                        "MQTT connection to {} failed: {err}{hint}; retrying in {backoff:?}",
                        config.url.redacted()
                    ),
                );
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.cancelled() => break,
                }
                backoff = (backoff * 2).min(StdDuration::from_secs(30));
            }
        }
    }
    connected.set(0);
    Ok(())
}

/// Why the source gives up its connection, and what to do about it.
fn taken_over(client_id: &str, config: &MqttSourceConfig, last: FailureKind) -> String {
    let how = match last {
        FailureKind::TakenOver => "the broker disconnected weir with `Session taken over`",
        _ => "the broker closed each connection right after accepting it",
    };
    format!(
        "another client with client id `{client_id}` keeps taking over the session on {}: \
         {} take-overs within {:?} ({how}); this source stops rather than fight over the \
         session. Give each weir (and every other client) its own `client_id`, or use \
         `shared_group` to split a subscription, then reload",
        config.url.redacted(),
        takeover::LIMIT,
        takeover::WINDOW,
    )
}
