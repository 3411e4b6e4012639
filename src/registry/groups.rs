//! Enrollment groups: the keys from which devices derive their own, to register
//! themselves on first contact (see [`super::auth`]).

use jiff::Timestamp;

use super::{EnrollmentGroup, GroupPatch, GroupSpec, Registry, RegistryError, check_etag, device};

impl Registry {
    /// Enrollment groups, in id order.
    pub fn groups(&self) -> Vec<EnrollmentGroup> {
        let groups = self.groups.read().unwrap_or_else(|p| p.into_inner());
        groups.values().cloned().collect()
    }

    pub fn group(&self, id: &str) -> Option<EnrollmentGroup> {
        let groups = self.groups.read().unwrap_or_else(|p| p.into_inner());
        groups.get(id).cloned()
    }

    pub fn create_group(&self, spec: GroupSpec) -> Result<EnrollmentGroup, RegistryError> {
        spec.check().map_err(RegistryError::Invalid)?;
        let _writer = self.lock_writer();
        if self.group(&spec.id).is_some() {
            return Err(RegistryError::Exists(format!(
                "enrollment group `{}`",
                spec.id
            )));
        }
        let group = spec.into_group(Timestamp::now());
        self.store()?.write_group(&group)?;
        let mut groups = self.groups.write().unwrap_or_else(|p| p.into_inner());
        groups.insert(group.id.clone(), group.clone());
        Ok(group)
    }

    pub fn update_group(
        &self,
        id: &str,
        patch: GroupPatch,
        if_match: Option<&str>,
    ) -> Result<EnrollmentGroup, RegistryError> {
        patch.check().map_err(RegistryError::Invalid)?;
        let _writer = self.lock_writer();
        let mut group = self
            .group(id)
            .ok_or_else(|| RegistryError::NotFound(format!("enrollment group `{id}`")))?;
        check_etag(&group.etag, if_match)?;
        patch.apply(&mut group);
        group.updated_at = Timestamp::now();
        group.etag = device::new_etag();
        self.store()?.write_group(&group)?;
        let mut groups = self.groups.write().unwrap_or_else(|p| p.into_inner());
        groups.insert(group.id.clone(), group.clone());
        Ok(group)
    }

    pub fn delete_group(&self, id: &str, if_match: Option<&str>) -> Result<(), RegistryError> {
        let _writer = self.lock_writer();
        let group = self
            .group(id)
            .ok_or_else(|| RegistryError::NotFound(format!("enrollment group `{id}`")))?;
        check_etag(&group.etag, if_match)?;
        self.store()?.delete_group(id)?;
        let mut groups = self.groups.write().unwrap_or_else(|p| p.into_inner());
        groups.remove(id);
        Ok(())
    }
}
