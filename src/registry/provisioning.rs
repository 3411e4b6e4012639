//! Provisioning through enrollment groups, as a device provisioning service does it: a
//! device proves it holds the key an enrollment group derives for its registration id
//! (a SAS token for `{id scope}/registrations/{registration id}`), and is registered with
//! the group's tags. Unlike registration on first contact ([`super::auth`]), this is an
//! explicit request, so a group's `auto_register: false` does not stop it; a disabled
//! group does.

use std::sync::Arc;

use jiff::Timestamp;

use super::{
    AuthError, ChangeKind, Device, DevicePatch, DeviceSpec, EnrollmentGroup, Entry, Registry,
    RegistryError, SasError, Status, device, keys, sas,
};

/// Why a registration request was not assigned a device.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProvisionError {
    #[error("enrollment group `{0}` is disabled")]
    GroupDisabled(String),
    #[error("enrollment group `{0}` no longer exists")]
    GroupGone(String),
    #[error("device `{0}` exists and was not registered through enrollment group `{1}`")]
    NotInGroup(String, String),
    #[error("device `{0}` could not be registered: {1}")]
    Registration(String, String),
}

/// A device a registration request was assigned.
#[derive(Debug, Clone)]
pub struct Provisioned {
    pub device: Device,
    /// Whether this request created it (`false`: it registered before).
    pub created: bool,
}

impl Registry {
    /// The enrollment group whose derived key for `registration_id` signed `token`, a SAS
    /// token that must grant exactly `resource` and be unexpired. Every group is tried,
    /// disabled ones too (the caller answers those `disabled`), each in constant time.
    /// Failures are counted by reason.
    pub fn enrollment_of(
        &self,
        registration_id: &str,
        resource: &str,
        token: &str,
    ) -> Result<EnrollmentGroup, AuthError> {
        let result = self.match_enrollment(registration_id, resource, token);
        if let Err(e) = &result {
            self.count_auth_failure(e.reason());
        }
        result
    }

    fn match_enrollment(
        &self,
        registration_id: &str,
        resource: &str,
        token: &str,
    ) -> Result<EnrollmentGroup, AuthError> {
        let token = sas::parse(token)?;
        if token.resource != resource {
            return Err(SasError::ResourceMismatch.into());
        }
        token.check_expiry(Timestamp::now().as_second().max(0) as u64)?;
        self.groups()
            .into_iter()
            .find(|group| {
                derived_key(group, registration_id)
                    .is_some_and(|key| token.check_signature(&key, &key).is_ok())
            })
            .ok_or(AuthError::Token(SasError::BadSignature))
    }

    /// Registers `registration_id` as a device of enrollment group `group_id` (with the
    /// group's tags and derived key), or finds it registered by that group before.
    pub fn provision(
        &self,
        registration_id: &str,
        group_id: &str,
    ) -> Result<Provisioned, ProvisionError> {
        let group = self
            .group(group_id)
            .ok_or_else(|| ProvisionError::GroupGone(group_id.to_owned()))?;
        if group.status == Status::Disabled {
            return Err(ProvisionError::GroupDisabled(group.id));
        }
        let (entry, created) = self
            .enroll(registration_id, &group)
            .map_err(|e| ProvisionError::Registration(registration_id.to_owned(), e.to_string()))?;
        if entry.device.enrollment_group.as_deref() != Some(group.id.as_str()) {
            return Err(ProvisionError::NotInGroup(
                registration_id.to_owned(),
                group.id,
            ));
        }
        Ok(Provisioned {
            device: entry.snapshot(),
            created,
        })
    }

    /// Registers `device_id` with `group`'s derived key and tags unless it is registered
    /// already; the entry, and whether this call created it.
    pub(super) fn enroll(
        &self,
        device_id: &str,
        group: &EnrollmentGroup,
    ) -> Result<(Arc<Entry>, bool), RegistryError> {
        let derived = keys::decode(group.key.expose_str())
            .map(|key| keys::derive(&key, device_id))
            .ok_or_else(|| {
                RegistryError::Invalid(format!("enrollment group `{}` has no usable key", group.id))
            })?;
        device::check_id(device_id).map_err(RegistryError::Invalid)?;
        let _writer = self.lock_writer();
        // Another request of the same device may have registered it meanwhile.
        if let Some(entry) = self.lookup(device_id) {
            return Ok((entry, false));
        }
        let spec = DeviceSpec {
            id: device_id.to_owned(),
            fields: DevicePatch {
                primary_key: Some(derived.into()),
                tags: Some(group.tags.clone()),
                ..DevicePatch::default()
            },
        };
        let mut device = Device::new(spec, Timestamp::now());
        device.enrollment_group = Some(group.id.clone());
        self.commit(device, ChangeKind::Created)?;
        tracing::info!(device_id, group = %group.id, "device registered through its enrollment group");
        let entry = self
            .lookup(device_id)
            .ok_or_else(|| RegistryError::NotFound(format!("device `{device_id}`")))?;
        Ok((entry, true))
    }
}

/// The key `group` derives for `device_id`, decoded.
pub(super) fn derived_key(group: &EnrollmentGroup, device_id: &str) -> Option<Vec<u8>> {
    let group_key = keys::decode(group.key.expose_str())?;
    keys::decode(&keys::derive(&group_key, device_id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{GroupPatch, GroupSpec};

    fn registry() -> (tempfile::TempDir, Arc<Registry>) {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::open(&dir.path().join("registry.redb")).unwrap();
        (dir, registry)
    }

    fn group(registry: &Registry, id: &str, status: Status) -> EnrollmentGroup {
        let mut tags = crate::registry::Properties::default();
        tags.insert("site".into(), serde_json::json!("plant-3"));
        registry
            .create_group(GroupSpec {
                id: id.into(),
                fields: GroupPatch {
                    tags: Some(tags),
                    auto_register: Some(false),
                    status: Some(status),
                    ..GroupPatch::default()
                },
            })
            .unwrap()
    }

    fn token(group: &EnrollmentGroup, resource: &str, registration_id: &str) -> String {
        let key = derived_key(group, registration_id).unwrap();
        let expiry = Timestamp::now().as_second() as u64 + 3600;
        sas::sign(resource, &key, expiry)
    }

    const RESOURCE: &str = "0ne000A1B2/registrations/pump-1";

    #[test]
    fn a_derived_key_names_its_group_and_registers_the_device_once() {
        let (_dir, registry) = registry();
        let group = group(&registry, "pumps", Status::Enabled);
        let token = token(&group, RESOURCE, "pump-1");
        let found = registry.enrollment_of("pump-1", RESOURCE, &token).unwrap();
        assert_eq!(found.id, "pumps");
        let first = registry.provision("pump-1", "pumps").unwrap();
        assert!(first.created);
        assert_eq!(first.device.enrollment_group.as_deref(), Some("pumps"));
        assert_eq!(
            first.device.tags.get("site"),
            Some(&serde_json::json!("plant-3"))
        );
        // The device's key is the derived one: its hub token verifies.
        let entry = registry.lookup("pump-1").unwrap();
        assert_eq!(entry.primary, derived_key(&group, "pump-1").unwrap());
        let again = registry.provision("pump-1", "pumps").unwrap();
        assert!(!again.created, "a second registration finds the device");
    }

    #[test]
    fn the_token_must_grant_exactly_this_registration() {
        let (_dir, registry) = registry();
        let group = group(&registry, "pumps", Status::Enabled);
        // Another registration id's key, another scope, another resource shape.
        let other_key = token(&group, RESOURCE, "pump-2");
        assert_eq!(
            registry.enrollment_of("pump-1", RESOURCE, &other_key),
            Err(AuthError::Token(SasError::BadSignature))
        );
        let other_scope = token(&group, "0ne000FFFF/registrations/pump-1", "pump-1");
        assert_eq!(
            registry.enrollment_of("pump-1", RESOURCE, &other_scope),
            Err(AuthError::Token(SasError::ResourceMismatch))
        );
        let hub_token = token(&group, "hub/devices/pump-1", "pump-1");
        assert_eq!(
            registry.enrollment_of("pump-1", RESOURCE, &hub_token),
            Err(AuthError::Token(SasError::ResourceMismatch))
        );
        let key = derived_key(&group, "pump-1").unwrap();
        let expired = sas::sign(RESOURCE, &key, 1_000);
        assert_eq!(
            registry.enrollment_of("pump-1", RESOURCE, &expired),
            Err(AuthError::Token(SasError::Expired))
        );
    }

    #[test]
    fn disabled_groups_match_but_do_not_provision() {
        let (_dir, registry) = registry();
        let group = group(&registry, "old", Status::Disabled);
        let token = token(&group, RESOURCE, "pump-1");
        assert_eq!(
            registry
                .enrollment_of("pump-1", RESOURCE, &token)
                .unwrap()
                .id,
            "old"
        );
        assert_eq!(
            registry.provision("pump-1", "old").unwrap_err(),
            ProvisionError::GroupDisabled("old".into())
        );
        assert!(registry.lookup("pump-1").is_none());
    }

    #[test]
    fn devices_outside_the_group_are_not_taken_over() {
        let (_dir, registry) = registry();
        group(&registry, "pumps", Status::Enabled);
        registry
            .create(DeviceSpec {
                id: "pump-1".into(),
                fields: DevicePatch::default(),
            })
            .unwrap();
        assert_eq!(
            registry.provision("pump-1", "pumps").unwrap_err(),
            ProvisionError::NotInGroup("pump-1".into(), "pumps".into())
        );
    }
}
