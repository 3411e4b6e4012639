//! Direct methods on a device's connection: a request from the `device_sessions` service
//! goes out on `$iothub/methods/POST/{name}/?$rid=…` (QoS 0, as a hub sends them), and the
//! device's answer on `$iothub/methods/res/{status}/?$rid=…` goes back to the service,
//! which hands it to the caller waiting for that request id of this device (or counts it
//! as a stray).

use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{Packet, Publish};

use super::Gateway;
use super::hub;

/// The PUBLISH of direct method `name`'s request `rid`.
pub(super) fn request(name: &str, rid: u64, payload: Vec<u8>) -> Packet {
    Packet::Publish(Publish::new(
        hub::method_topic(name, rid),
        QoS::AtMostOnce,
        payload,
    ))
}

/// The device answered request `rid` with `status` and `payload`.
pub(super) fn answer(gateway: &Gateway, device_id: &str, status: i64, rid: &str, payload: &[u8]) {
    if !gateway.sessions.answer(device_id, rid, status, payload) {
        tracing::debug!(
            device_id,
            rid,
            "a direct-method answer nobody waits for is ignored"
        );
    }
}
