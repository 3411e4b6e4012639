//! Cloud-to-device messages on a device's connection: once the device subscribes to
//! `devices/{id}/messages/devicebound/#`, a task sends its queued messages one at a time
//! at QoS 1 and completes each (removes it from the queue) on the device's PUBACK. A
//! message not acknowledged when the connection ends stays queued for the next one (and
//! counts as one delivery: see `max_delivery_count`).

use std::sync::{Arc, Mutex};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{Packet, Publish};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

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

/// The message in flight on a connection: its packet id and message id.
type InFlight = Arc<Mutex<Option<(u16, String)>>>;

/// The delivery task of one connection, and what its PUBACKs complete.
pub(super) struct Deliveries {
    queue: Arc<Queues>,
    device_id: String,
    in_flight: InFlight,
    acked: Arc<Notify>,
    stop: CancellationToken,
}

impl Deliveries {
    /// Starts delivering `device_id`'s messages on `out`.
    pub(super) fn start(queue: Arc<Queues>, device_id: &str, out: mpsc::Sender<Packet>) -> Self {
        let deliveries = Self {
            queue,
            device_id: device_id.to_owned(),
            in_flight: InFlight::default(),
            acked: Arc::default(),
            stop: CancellationToken::new(),
        };
        tokio::spawn(deliver(
            Arc::clone(&deliveries.queue),
            deliveries.device_id.clone(),
            out,
            Arc::clone(&deliveries.in_flight),
            Arc::clone(&deliveries.acked),
            deliveries.stop.clone(),
        ));
        deliveries
    }

    /// The device acknowledged packet `pkid`: if it is the message in flight, it is
    /// completed now (before the connection reads its next packet), and the next one may go.
    pub(super) fn acknowledge(&self, pkid: u16) {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let Some((_, id)) = in_flight.take_if(|(sent, _)| *sent == pkid) else {
            return;
        };
        if let Err(e) = self.queue.complete(&self.device_id, &id) {
            // Still queued on disk: the device may get it once more after a restart.
            tracing::warn!(device_id = self.device_id, error = %e, "a delivered message could not be removed from the queue file");
        }
        self.acked.notify_one();
    }
}

impl Drop for Deliveries {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn deliver(
    queue: Arc<Queues>,
    device_id: String,
    out: mpsc::Sender<Packet>,
    in_flight: InFlight,
    acked: Arc<Notify>,
    stop: CancellationToken,
) {
    let waiter = queue.waiter(&device_id);
    let mut pkid: u16 = 0;
    loop {
        let Some(message) = queue.next_delivery(&device_id) else {
            tokio::select! {
                _ = waiter.notified() => continue,
                _ = stop.cancelled() => return,
            }
        };
        pkid = pkid % u16::MAX + 1;
        let topic = topics::devicebound_topic(&device_id, &message.id, &message.properties);
        let mut publish = Publish::new(topic, QoS::AtLeastOnce, message.payload.into_bytes());
        publish.pkid = pkid;
        *in_flight.lock().unwrap_or_else(|p| p.into_inner()) = Some((pkid, message.id));
        if out.send(Packet::Publish(publish)).await.is_err() {
            return;
        }
        while in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
        {
            tokio::select! {
                _ = acked.notified() => {}
                _ = stop.cancelled() => return,
            }
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
