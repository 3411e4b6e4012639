//! Changing devices on an operator's request (the admin API and `weir devices`): create,
//! update, enable or disable, rotate keys, delete, list in pages, import in bulk.

use std::sync::Arc;

use jiff::Timestamp;
use serde::Serialize;

use super::{
    ChangeKind, Device, DevicePatch, DeviceSpec, Entry, Registry, RegistryError, Status,
    check_etag, device, keys, twin,
};

/// One page of a device listing.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Page {
    /// The devices, without their keys.
    #[schema(value_type = Vec<Device>)]
    pub devices: Vec<serde_json::Value>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// What became of one row of a bulk import.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ImportOutcome {
    Created,
    /// A device with this id exists already (a re-run after a crash skips what it had done).
    Exists,
    Failed {
        error: String,
    },
}

impl Registry {
    /// Registers a device; its missing keys are generated.
    pub fn create(&self, spec: DeviceSpec) -> Result<Device, RegistryError> {
        spec.check().map_err(RegistryError::Invalid)?;
        let _writer = self.lock_writer();
        if self.lookup(&spec.id).is_some() {
            return Err(RegistryError::Exists(format!("device `{}`", spec.id)));
        }
        let device = Device::new(spec, Timestamp::now());
        self.commit(device, ChangeKind::Created)
    }

    /// Changes a device. With `if_match`, refuses when the stored etag differs.
    pub fn update(
        &self,
        id: &str,
        patch: DevicePatch,
        if_match: Option<&str>,
    ) -> Result<Device, RegistryError> {
        patch.check().map_err(RegistryError::Invalid)?;
        self.modify(id, if_match, |device| {
            let before = device.status;
            patch.apply(device);
            Ok(match (before, device.status) {
                (Status::Enabled, Status::Disabled) => ChangeKind::Disabled,
                (Status::Disabled, Status::Enabled) => ChangeKind::Enabled,
                _ => ChangeKind::Updated,
            })
        })
    }

    /// Enables or disables a device.
    pub fn set_status(
        &self,
        id: &str,
        status: Status,
        if_match: Option<&str>,
    ) -> Result<Device, RegistryError> {
        let patch = DevicePatch {
            status: Some(status),
            ..DevicePatch::default()
        };
        self.update(id, patch, if_match)
    }

    /// Rotates a device's keys: the secondary key becomes the primary (devices already
    /// using it keep working) and a fresh secondary is generated; the old primary stops
    /// working.
    pub fn rotate_key(&self, id: &str, if_match: Option<&str>) -> Result<Device, RegistryError> {
        self.modify(id, if_match, |device| {
            device.primary_key =
                std::mem::replace(&mut device.secondary_key, keys::generate().into());
            Ok(ChangeKind::KeyRotated)
        })
    }

    /// Changes device `id` as `change` says (after checking `if_match`), giving its twin
    /// new versions where its properties changed.
    pub(super) fn modify(
        &self,
        id: &str,
        if_match: Option<&str>,
        change: impl FnOnce(&mut Device) -> Result<ChangeKind, RegistryError>,
    ) -> Result<Device, RegistryError> {
        let _writer = self.lock_writer();
        let entry = self
            .lookup(id)
            .ok_or_else(|| RegistryError::NotFound(format!("device `{id}`")))?;
        check_etag(&entry.device.etag, if_match)?;
        let mut device = entry.snapshot();
        let kind = change(&mut device)?;
        device.updated_at = Timestamp::now();
        device.etag = device::new_etag();
        let desired_patch = twin::bump_versions(&entry.device, &mut device);
        let reported = entry.device.reported_version != device.reported_version;
        let device = self.commit_desired(device, kind, desired_patch.clone())?;
        if desired_patch.is_some() {
            self.count_twin_update(twin::Side::Desired);
        }
        if reported {
            self.count_twin_update(twin::Side::Reported);
        }
        Ok(device)
    }

    /// Removes a device. With `if_match`, refuses when the stored etag differs.
    pub fn delete(&self, id: &str, if_match: Option<&str>) -> Result<(), RegistryError> {
        let _writer = self.lock_writer();
        let entry = self
            .lookup(id)
            .ok_or_else(|| RegistryError::NotFound(format!("device `{id}`")))?;
        check_etag(&entry.device.etag, if_match)?;
        self.store()?.write_devices(&[], &[id])?;
        self.remove(id);
        self.announce(ChangeKind::Deleted, entry);
        self.update_status_gauge();
        Ok(())
    }

    /// A page of devices in id order, after `after`, with every `tag=value` of `tags`;
    /// keys are left out.
    pub fn list(&self, after: Option<&str>, limit: usize, tags: &[(String, String)]) -> Page {
        self.list_where(after, limit, &|device| device.has_tags(tags))
    }

    /// A page of the devices `keep` keeps, in id order, after `after`; keys are left out.
    pub fn list_where(
        &self,
        after: Option<&str>,
        limit: usize,
        keep: &dyn Fn(&Device) -> bool,
    ) -> Page {
        let ordered = self.ordered.read().unwrap_or_else(|p| p.into_inner());
        let start = match after {
            Some(after) => std::ops::Bound::Excluded(after),
            None => std::ops::Bound::Unbounded,
        };
        let mut devices = Vec::new();
        let mut next = None;
        for (id, entry) in ordered.range::<str, _>((start, std::ops::Bound::Unbounded)) {
            if !keep(&entry.device) {
                continue;
            }
            if devices.len() == limit {
                break;
            }
            devices.push(entry.snapshot().without_keys());
            next = Some(id.to_string());
        }
        if devices.len() < limit {
            next = None;
        }
        Page { devices, next }
    }

    /// Creates many devices, one transaction for all of them; rows that fail are reported
    /// and skipped, rows whose id exists already are reported as such.
    pub fn import(&self, specs: Vec<DeviceSpec>) -> Result<Vec<ImportOutcome>, RegistryError> {
        let _writer = self.lock_writer();
        let now = Timestamp::now();
        let mut outcomes = Vec::with_capacity(specs.len());
        let mut fresh: Vec<Device> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for spec in specs {
            if let Err(error) = spec.check() {
                outcomes.push(ImportOutcome::Failed { error });
                continue;
            }
            if self.lookup(&spec.id).is_some() {
                outcomes.push(ImportOutcome::Exists);
                continue;
            }
            if !seen.insert(spec.id.clone()) {
                outcomes.push(ImportOutcome::Failed {
                    error: format!("id `{}` appears twice in the import", spec.id),
                });
                continue;
            }
            outcomes.push(ImportOutcome::Created);
            fresh.push(Device::new(spec, now));
        }
        self.store()?
            .write_devices(&fresh.iter().collect::<Vec<_>>(), &[])?;
        for device in fresh {
            let entry = Entry::new(device);
            self.put(Arc::clone(&entry));
            self.announce(ChangeKind::Created, entry);
        }
        self.update_status_gauge();
        Ok(outcomes)
    }
}
