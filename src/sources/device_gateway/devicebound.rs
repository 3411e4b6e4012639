//! Cloud-to-device messages on a device's connection: once the device subscribes to
//! `devices/{id}/messages/devicebound/#`, its session sends its queued messages one at a
//! time at QoS 1 and completes each (removes it from the queue) on the device's PUBACK. A
//! message not acknowledged when the connection ends stays queued for the next one (and
//! counts as one delivery: see `max_delivery_count`).

use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::Publish;
use tokio::sync::Notify;

use super::topics;
use crate::config::FieldProblem;
use crate::devicebound::{Limits, Queues};

/// The bounds of the gateway's cloud-to-device queues.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceboundSettings {
    /// Messages one device may have waiting; one more is refused (409). An IoT hub
    /// allows 50.
    #[serde(default = "default_max_queued")]
    pub max_queued_per_device: usize,
    /// Times a message is sent without the device's acknowledgement (its connection
    /// ended first) before it is dead-lettered as `DeliveryCountExceeded`.
    #[serde(default = "default_max_delivery_count")]
    pub max_delivery_count: u32,
    /// Settled messages (feedback, dead letters) kept while the gateway's outputs do
    /// not take them; past it the oldest are dropped (logged).
    #[serde(default = "default_max_settled")]
    pub max_settled: usize,
}

impl Default for DeviceboundSettings {
    fn default() -> Self {
        Self {
            max_queued_per_device: default_max_queued(),
            max_delivery_count: default_max_delivery_count(),
            max_settled: default_max_settled(),
        }
    }
}

fn default_max_queued() -> usize {
    50
}
fn default_max_delivery_count() -> u32 {
    10
}
fn default_max_settled() -> usize {
    10_000
}

impl DeviceboundSettings {
    pub(super) fn limits(&self) -> Limits {
        Limits {
            max_queued: self.max_queued_per_device,
            max_delivery_count: self.max_delivery_count,
            max_settled: self.max_settled,
        }
    }

    pub(super) fn check(&self) -> Vec<FieldProblem> {
        let mut problems = Vec::new();
        let at = |field: &'static str, message: &str| {
            FieldProblem::at(["devicebound", field], message.to_owned())
        };
        if self.max_queued_per_device == 0 {
            problems.push(at("max_queued_per_device", "expected at least 1"));
        }
        if self.max_delivery_count == 0 {
            problems.push(at("max_delivery_count", "expected at least 1"));
        }
        if self.max_settled == 0 {
            problems.push(at("max_settled", "expected at least 1"));
        }
        problems
    }
}

/// Whether `filter` asks for the cloud-to-device messages of `device_id`.
pub(super) fn is_devicebound_filter(device_id: &str, filter: &str) -> bool {
    filter
        .strip_prefix("devices/")
        .and_then(|rest| rest.strip_prefix(device_id))
        .and_then(|rest| rest.strip_prefix("/messages/devicebound"))
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// What a connection delivers: the next queued message once the one in flight (if any)
/// is acknowledged.
pub(super) struct Deliveries {
    queue: Arc<Queues>,
    device_id: String,
    /// Fires when a message is queued for the device.
    waiter: Arc<Notify>,
    /// The message sent and not acknowledged yet: its packet id and message id.
    in_flight: Option<(u16, String)>,
    pkid: u16,
}

impl Deliveries {
    /// Delivery of `device_id`'s messages, for its connection to poll.
    pub(super) fn start(queue: Arc<Queues>, device_id: &str) -> Self {
        Self {
            waiter: queue.waiter(device_id),
            queue,
            device_id: device_id.to_owned(),
            in_flight: None,
            pkid: 0,
        }
    }

    /// The next message to send, once none is in flight and one is queued. Cancel-safe:
    /// a message is taken from the queue only when it is returned.
    pub(super) async fn next(&mut self) -> Publish {
        if self.in_flight.is_some() {
            return std::future::pending().await;
        }
        loop {
            if let Some(message) = self.queue.next_delivery(&self.device_id) {
                self.pkid = self.pkid % u16::MAX + 1;
                let topic =
                    topics::devicebound_topic(&self.device_id, &message.id, &message.properties);
                let mut publish =
                    Publish::new(topic, QoS::AtLeastOnce, message.payload.into_bytes());
                publish.pkid = self.pkid;
                self.in_flight = Some((self.pkid, message.id));
                return publish;
            }
            self.waiter.notified().await;
        }
    }

    /// The device acknowledged packet `pkid`: if it is the message in flight, it is
    /// completed now (before the connection reads its next packet), and the next one may go.
    pub(super) fn acknowledge(&mut self, pkid: u16) {
        let Some((_, id)) = self.in_flight.take_if(|(sent, _)| *sent == pkid) else {
            return;
        };
        if let Err(e) = self.queue.complete(&self.device_id, &id) {
            // Still queued on disk: the device may get it once more after a restart.
            tracing::warn!(device_id = self.device_id, error = %e, "a delivered message could not be removed from the queue file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devicebound_filters_are_recognised() {
        assert!(is_devicebound_filter(
            "d1",
            "devices/d1/messages/devicebound/#"
        ));
        assert!(is_devicebound_filter(
            "d1",
            "devices/d1/messages/devicebound"
        ));
        assert!(!is_devicebound_filter(
            "d1",
            "devices/d1/messages/deviceboundx"
        ));
        assert!(!is_devicebound_filter("d1", "$iothub/methods/POST/#"));
    }
}
