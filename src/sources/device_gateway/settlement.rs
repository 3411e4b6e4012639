//! The gateway's side of settled cloud-to-device messages: a timer that expires messages
//! when their time to live passes (whether or not their device ever connects), and the
//! hand-over of settled messages to the gateway's named outputs:
//!
//! - `<id>.feedback`: one event per outcome the message's `ack` asked for, an IoT hub's
//!   feedback record (`originalMessageId`, `deviceId`, `statusCode` = `Success`,
//!   `Expired` or `DeliveryCountExceeded`, `description`, `enqueuedTimeUtc`);
//! - `<id>.devicebound_dead_letters`: every message removed undelivered (expired,
//!   delivered too often), whatever its `ack`, with its payload and properties.
//!
//! A settled message leaves the queue file only once the outputs committed its events
//! (or nothing reads the output it is for: then it is dropped on purpose, counted); a
//! failed hand-over is tried again a second later, so feedback is at least once.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::config::OutputName;
use crate::devicebound::{Queues, Settled};
use crate::event::{Delivery, DeliveryStatus, Event, EventBatch, EventMeta, Fields};
use crate::telemetry::InternalEvent;
use crate::telemetry::events::EventsDiscarded;
use crate::topology::channel::Outputs;

/// The output of feedback records.
pub(super) const FEEDBACK: &str = "feedback";
/// The output of dead-lettered cloud-to-device messages.
pub(super) const DEAD_LETTERS: &str = "devicebound_dead_letters";

/// Settled messages handed over at once.
const BATCH: usize = 100;
/// The longest the timer sleeps without looking (a clock that jumped, a missed wake-up).
const LONGEST_SLEEP: Duration = Duration::from_secs(60);
/// How long a failed hand-over waits before the next attempt.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The gateway's named outputs.
pub(super) fn outputs() -> Vec<OutputName> {
    vec![OutputName(FEEDBACK.into()), OutputName(DEAD_LETTERS.into())]
}

/// Expires messages as their time to live passes, until `stop` fires.
pub(super) async fn expire(queues: Arc<Queues>, stop: CancellationToken) {
    loop {
        let next = queues.expire(Timestamp::now());
        let wait = next
            .map(|at| {
                let ahead = at.duration_since(Timestamp::now());
                // Just past the expiry: `expire` settles what expires strictly before now.
                Duration::try_from(ahead).unwrap_or(Duration::ZERO) + Duration::from_millis(1)
            })
            .unwrap_or(LONGEST_SLEEP)
            .min(LONGEST_SLEEP);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = queues.sooner().notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Hands settled messages over to the outputs, oldest first, until `stop` fires.
pub(super) async fn hand_over(
    queues: Arc<Queues>,
    out: Outputs,
    source: Arc<str>,
    ack_timeout: Duration,
    telemetry: crate::telemetry::ComponentTelemetry,
    stop: CancellationToken,
) {
    loop {
        let settled = queues.take_settled(BATCH);
        let Some(through) = settled.last().map(|s| s.seq) else {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = queues.settled().notified() => continue,
            }
        };
        let feedback: Vec<Event> = settled
            .iter()
            .filter(|s| s.wants_feedback())
            .map(|s| feedback_event(s, &source))
            .collect();
        let dead: Vec<Event> = settled
            .iter()
            .filter(|s| s.outcome.is_dead_letter())
            .map(|s| dead_letter_event(s, &source))
            .collect();
        let sent = tokio::select! {
            _ = stop.cancelled() => false,
            sent = async {
                let feedback = send(&out, FEEDBACK, feedback, ack_timeout, &telemetry).await;
                feedback && send(&out, DEAD_LETTERS, dead, ack_timeout, &telemetry).await
            } => sent,
        };
        let handed = sent
            && queues
                .handed_over(through)
                .inspect_err(|e| tracing::warn!(component_id = %source, error = %e, "settled cloud-to-device messages could not be removed from the queue file; they will be handed over again"))
                .is_ok();
        if !handed {
            queues.release();
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(RETRY_AFTER) => {}
            }
        }
    }
}

/// Sends `events` to output `name` and waits for their commit; whether they are safe
/// (committed, or dropped on purpose because nothing reads the output).
async fn send(
    out: &Outputs,
    name: &str,
    mut events: Vec<Event>,
    ack_timeout: Duration,
    telemetry: &crate::telemetry::ComponentTelemetry,
) -> bool {
    if events.is_empty() {
        return true;
    }
    if !out.named_connected(name) {
        EventsDiscarded {
            count: events.len(),
            intentional: true,
        }
        .emit(telemetry);
        return true;
    }
    let outcome = Delivery::attach_all(&mut events);
    out.send_named(name, EventBatch::new(events)).await;
    matches!(
        tokio::time::timeout(ack_timeout, outcome).await,
        Ok(Ok(DeliveryStatus::Committed))
    )
}

fn event(settled: &Settled, source: &Arc<str>, fields: Value) -> Event {
    let fields: Fields = match fields {
        Value::Object(fields) => fields,
        _ => Fields::new(),
    };
    let meta = Arc::new(EventMeta::received_by(Arc::clone(source)));
    let mut event = Event::new(Some(settled.device_id.as_str().into()), fields, meta);
    event.time = settled.at;
    event
}

/// An IoT hub's feedback record for `settled`.
fn feedback_event(settled: &Settled, source: &Arc<str>) -> Event {
    let fields = json!({
        "originalMessageId": settled.message.id,
        "deviceId": settled.device_id,
        "statusCode": settled.outcome.status_code(),
        "description": settled.outcome.description(),
        "enqueuedTimeUtc": settled.message.enqueued_at.to_string(),
    });
    event(settled, source, fields)
}

/// A dead-lettered message, whole.
fn dead_letter_event(settled: &Settled, source: &Arc<str>) -> Event {
    let message = &settled.message;
    let properties: serde_json::Map<String, Value> = message
        .properties
        .iter()
        .map(|(name, value)| (name.clone(), Value::String(value.clone())))
        .collect();
    let fields = json!({
        "messageId": message.id,
        "deviceId": settled.device_id,
        "statusCode": settled.outcome.status_code(),
        "description": settled.outcome.description(),
        "payload": message.payload,
        "properties": properties,
        "enqueuedTimeUtc": message.enqueued_at.to_string(),
        "expiryTimeUtc": message.expires_at.to_string(),
        "deliveryCount": message.delivery_count,
    });
    event(settled, source, fields)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devicebound::{Ack, Message, Outcome};

    #[test]
    fn feedback_records_use_a_hubs_names() {
        let at = Timestamp::now();
        let settled = Settled {
            seq: 0,
            device_id: "d1".into(),
            message: Message {
                id: "m1".into(),
                payload: "p".into(),
                properties: vec![("a".into(), "b".into())],
                enqueued_at: at,
                expires_at: at,
                ack: Ack::Full,
                delivery_count: 2,
            },
            outcome: Outcome::Expired,
            at,
        };
        let source: Arc<str> = "gw".into();
        let feedback = feedback_event(&settled, &source);
        assert_eq!(feedback.device_id.as_deref(), Some("d1"));
        let f = feedback.fields();
        assert_eq!(f["originalMessageId"], "m1");
        assert_eq!(f["statusCode"], "Expired");
        assert_eq!(f["enqueuedTimeUtc"], at.to_string());
        let dead = dead_letter_event(&settled, &source);
        assert_eq!(dead.fields()["properties"]["a"], "b");
        assert_eq!(dead.fields()["deliveryCount"], 2);
    }
}
