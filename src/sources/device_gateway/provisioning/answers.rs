//! The bodies of the provisioning service's answers (its `RegistrationOperationStatus`
//! and error shapes), as the device SDKs read them.

use serde_json::{Value, json};

use crate::registry::Device;

/// Where a registration request ended.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Outcome {
    /// Registered (now or before) as `device_id`, on the hub `assigned_hub`.
    Assigned {
        device_id: String,
        assigned_hub: String,
        created_at: String,
        updated_at: String,
        etag: String,
    },
    /// The enrollment group is disabled.
    Disabled,
    /// Refused for `message` (an error code as the service gives them).
    Failed { code: u32, message: String },
}

impl Outcome {
    pub(super) fn assigned(device: &Device, assigned_hub: &str) -> Self {
        Self::Assigned {
            device_id: device.id.clone(),
            assigned_hub: assigned_hub.to_owned(),
            created_at: device.created_at.to_string(),
            updated_at: device.updated_at.to_string(),
            etag: device.etag.clone(),
        }
    }

    /// The `status` label of the outcome.
    pub(super) fn status(&self) -> &'static str {
        match self {
            Self::Assigned { .. } => "assigned",
            Self::Disabled => "disabled",
            Self::Failed { .. } => "failed",
        }
    }
}

/// The first answer to a registration: the operation runs, poll it.
pub(super) fn assigning(operation_id: &str) -> Vec<u8> {
    json!({ "operationId": operation_id, "status": "assigning" })
        .to_string()
        .into_bytes()
}

/// The answer to a poll of a finished operation.
pub(super) fn finished(operation_id: &str, registration_id: &str, outcome: &Outcome) -> Vec<u8> {
    let mut state = json!({ "registrationId": registration_id, "status": outcome.status() });
    match outcome {
        Outcome::Assigned {
            device_id,
            assigned_hub,
            created_at,
            updated_at,
            etag,
        } => {
            state["assignedHub"] = Value::from(assigned_hub.as_str());
            state["deviceId"] = Value::from(device_id.as_str());
            state["substatus"] = Value::from("initialAssignment");
            state["createdDateTimeUtc"] = Value::from(created_at.as_str());
            state["lastUpdatedDateTimeUtc"] = Value::from(updated_at.as_str());
            state["etag"] = Value::from(etag.as_str());
        }
        Outcome::Disabled => {}
        Outcome::Failed { code, message } => {
            state["errorCode"] = Value::from(*code);
            state["errorMessage"] = Value::from(message.as_str());
        }
    }
    json!({ "operationId": operation_id, "status": outcome.status(), "registrationState": state })
        .to_string()
        .into_bytes()
}

/// An error answer (4xx): the request itself was wrong.
pub(super) fn error(code: u32, message: &str) -> Vec<u8> {
    json!({ "errorCode": code, "message": message })
        .to_string()
        .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_assigned_registration_names_the_hub_and_the_device() {
        let outcome = Outcome::Assigned {
            device_id: "pump-1".into(),
            assigned_hub: "weir.example".into(),
            created_at: "2026-01-01T00:00:00Z".into(),
            updated_at: "2026-01-01T00:00:00Z".into(),
            etag: "e1".into(),
        };
        let body: Value = serde_json::from_slice(&finished("op-1", "pump-1", &outcome)).unwrap();
        assert_eq!(body["operationId"], "op-1");
        assert_eq!(body["status"], "assigned");
        assert_eq!(body["registrationState"]["assignedHub"], "weir.example");
        assert_eq!(body["registrationState"]["deviceId"], "pump-1");
        assert_eq!(body["registrationState"]["registrationId"], "pump-1");
        let disabled: Value =
            serde_json::from_slice(&finished("op-2", "pump-1", &Outcome::Disabled)).unwrap();
        assert_eq!(disabled["status"], "disabled");
        assert!(disabled["registrationState"].get("assignedHub").is_none());
    }
}
