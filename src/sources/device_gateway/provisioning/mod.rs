//! The device provisioning service's MQTT protocol on the gateway's own listener, so a
//! device holding an enrollment group's derived key runs the SDKs'
//! `ProvisioningDeviceClient.create_from_symmetric_key(provisioning_host=<weir>, …)`
//! unchanged, is registered with the group's tags, and is told weir is its hub.
//!
//! A registration connection is told apart from a hub connection by its username,
//! `{id scope}/registrations/{registration id}/api-version=…` (the client id is the
//! registration id). Its password is a SAS token for `{id scope}/registrations/{registration
//! id}` signed with the key an enrollment group derives for that id
//! ([`Registry::enrollment_of`]): no such group, another scope or a gateway without
//! `provisioning` is refused at CONNECT (5, "not authorized") and counted.
//!
//! Then, as the service does: the device subscribes to `$dps/registrations/res/#` and
//! publishes `{registrationId, payload}` to `$dps/registrations/PUT/iotdps-register/?$rid=…`;
//! weir registers it at once ([`Registry::provision`]: idempotent, the group's tags, its
//! derived key) and answers `202 assigning` with an operation id; the device polls
//! `$dps/registrations/GET/iotdps-get-operationstatus/?$rid=…&operationId=…` and gets `200`
//! with `assigned` (`assignedHub` = `provisioning.assigned_hub`, `deviceId` = the
//! registration id), `disabled` (the group is disabled) or `failed` (the id belongs to a
//! device of no such group, or the store failed). Answers go out at QoS 0 on
//! `$dps/registrations/res/{status}/?$rid=…`. Answering `assigning` first, rather than
//! `assigned` at once, is what the service always does, so it is the path every SDK takes.
//!
//! Not served: X.509 and TPM attestation, individual enrollments, custom allocation
//! payloads (a request's `payload` is ignored and none is returned).

mod answers;
mod session;
mod topics;

use rumqttc::mqttbytes::v4::{Connect, ConnectAuth};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::FieldProblem;

pub(super) use session::serve;

/// Serving the provisioning service's protocol beside the hub's.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProvisioningConfig {
    /// The ID scope devices are given (their usernames and tokens name it); a registration
    /// for another scope is refused.
    pub id_scope: String,
    /// The host name registered devices are told to connect to (`assignedHub`): the
    /// name or address of this gateway their certificates check.
    pub assigned_hub: String,
}

impl ProvisioningConfig {
    pub(super) fn check(&self) -> Vec<FieldProblem> {
        let mut problems = Vec::new();
        if self.id_scope.is_empty() || !self.id_scope.bytes().all(|b| b.is_ascii_alphanumeric()) {
            problems.push(FieldProblem::at(
                ["provisioning", "id_scope"],
                "expected letters and digits (such as `0ne00A1B2C3`)",
            ));
        }
        if self.assigned_hub.is_empty() || self.assigned_hub.contains(['/', ' ', ';']) {
            problems.push(FieldProblem::at(
                ["provisioning", "assigned_hub"],
                "expected the host name (or IP address) devices connect to",
            ));
        }
        problems
    }
}

/// Whether `connect` opens a registration connection rather than a hub one.
pub(super) fn is_registration(connect: &Connect) -> bool {
    match &connect.auth {
        ConnectAuth::Username { username } | ConnectAuth::UsernamePassword { username, .. } => {
            registration_username(username).is_some()
        }
        ConnectAuth::None => false,
    }
}

/// The id scope and registration id a provisioning username names:
/// `{id scope}/registrations/{registration id}/api-version=…`; `None` for any other
/// username (a hub device's `{host}/{device id}/?api-version=…`).
pub(super) fn registration_username(username: &str) -> Option<(&str, &str)> {
    let mut segments = username.split('/');
    let scope = segments.next()?;
    if segments.next()? != "registrations" {
        return None;
    }
    // A hub username's third segment is its query (`?api-version=…`).
    let registration_id = segments.next().filter(|id| !id.starts_with('?'))?;
    (!scope.is_empty() && !registration_id.is_empty()).then_some((scope, registration_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provisioning_usernames_are_told_from_hub_ones() {
        assert_eq!(
            registration_username(
                "0ne00A1B2C3/registrations/pump-1/api-version=2019-03-31&ClientVersion=azure-iot-device%2F2.14.0"
            ),
            Some(("0ne00A1B2C3", "pump-1"))
        );
        // A hub device that happens to be called `registrations`.
        assert_eq!(
            registration_username("hub.example/registrations/?api-version=1"),
            None
        );
        assert_eq!(registration_username("hub.example/d1/?api-version=1"), None);
        assert_eq!(registration_username("/registrations/pump-1/"), None);
    }

    #[test]
    fn the_settings_are_checked() {
        let ok = ProvisioningConfig {
            id_scope: "0ne00A1B2C3".into(),
            assigned_hub: "127.0.17.3".into(),
        };
        assert!(ok.check().is_empty());
        let bad = ProvisioningConfig {
            id_scope: "a/b".into(),
            assigned_hub: String::new(),
        };
        assert_eq!(bad.check().len(), 2);
    }
}
