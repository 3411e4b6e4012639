//! Device twins on a device's connection: `$iothub/twin/GET/` answers the registry's
//! desired and reported properties with their `$version`s; a PATCH to
//! `$iothub/twin/PATCH/properties/reported/` merges into the registry's reported
//! properties (answered 204 with the new version; the registry announces the change); a
//! desired change anyone made in the registry goes to the connected device, if it
//! subscribed to them, on `$iothub/twin/PATCH/properties/desired/?$version=n`.

use std::sync::Arc;

use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{Packet, Publish};
use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;

use super::{Gateway, hub};
use crate::registry::twin::{self, Side};
use crate::registry::{Properties, RegistryError};

/// A twin answer: `$iothub/twin/res/{status}/?$rid=…` with `body`.
fn answer(status: u16, rid: &str, version: Option<u64>, body: Vec<u8>) -> Packet {
    Packet::Publish(Publish::new(
        hub::twin_answer_topic(status, rid, version),
        QoS::AtMostOnce,
        body,
    ))
}

/// A twin error answer: the status and `{"message": …}`, as a hub words them.
fn refusal(status: u16, rid: &str, message: &str) -> Packet {
    let body = serde_json::json!({ "message": message }).to_string();
    answer(status, rid, None, body.into_bytes())
}

/// The answer to `$iothub/twin/GET/?$rid=…`.
pub(super) fn get(gateway: &Gateway, device_id: &str, rid: &str) -> Packet {
    match gateway.registry.get(device_id) {
        Some(device) => answer(
            200,
            rid,
            None,
            twin::document(&device).to_string().into_bytes(),
        ),
        None => refusal(404, rid, "the device is not in the registry"),
    }
}

/// Merges a reported patch (the payload, a JSON object) into the registry; the answer.
pub(super) async fn patch_reported(
    gateway: &Gateway,
    device_id: &str,
    rid: &str,
    payload: &[u8],
) -> Packet {
    let patch = match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(patch)) => patch,
        _ => return refusal(400, rid, "a reported patch is a JSON object"),
    };
    let (registry, id) = (Arc::clone(&gateway.registry), device_id.to_owned());
    // A registry change waits for an fsync: off the async threads.
    let patched =
        tokio::task::spawn_blocking(move || registry.patch_twin(&id, Side::Reported, patch, None))
            .await;
    match patched {
        Ok(Ok(device)) => answer(204, rid, Some(device.reported_version), Vec::new()),
        Ok(Err(RegistryError::Invalid(message))) => refusal(400, rid, &message),
        Ok(Err(RegistryError::NotFound(_))) => {
            refusal(404, rid, "the device is not in the registry")
        }
        Ok(Err(e)) => {
            tracing::warn!(device_id, error = %e, "a reported patch could not be stored");
            refusal(500, rid, "the reported properties could not be stored")
        }
        Err(_) => refusal(500, rid, "the reported properties could not be stored"),
    }
}

/// The PUBLISH of a desired change: the patch with its `$version`.
pub(super) fn desired(version: u64, patch: Vec<u8>) -> Packet {
    Packet::Publish(Publish::new(
        hub::desired_topic(version),
        QoS::AtMostOnce,
        patch,
    ))
}

/// The body of a desired change: `patch` with `"$version": version`.
fn desired_body(patch: &Properties, version: u64) -> Vec<u8> {
    twin::versioned(patch, version).to_string().into_bytes()
}

/// Pushes every desired change the registry announces to the device's connection on
/// this gateway (if it has one and subscribed), until the gateway stops.
pub(super) async fn push_desired_changes(gateway: Arc<Gateway>) {
    let mut changes = gateway.registry.subscribe();
    loop {
        let change = tokio::select! {
            _ = gateway.shutdown.cancelled() => return,
            change = changes.recv() => change,
        };
        let change = match change {
            Ok(change) => change,
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(
                    component_id = %gateway.source,
                    missed,
                    "device twins: desired changes were missed (connected devices see them on their next twin GET)"
                );
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        let Some(patch) = &change.desired_patch else {
            continue;
        };
        let device = &change.device.device;
        let version = device.desired_version;
        let body = desired_body(patch, version);
        if !gateway
            .sessions
            .is_subscribed(&device.id, crate::device_sessions::Subscription::Desired)
        {
            continue;
        }
        if !gateway
            .sessions
            .push_desired(&gateway.source, &device.id, version, body)
        {
            tracing::debug!(
                device_id = device.id,
                version,
                "a desired change was not pushed: the device is on another gateway or its connection is busy"
            );
        }
    }
}
