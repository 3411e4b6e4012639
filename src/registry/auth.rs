//! Letting devices in at a source: SAS tokens checked against their keys (registering
//! devices of auto-registering enrollment groups on first contact), and the gate of
//! sources without tokens.

use std::sync::Arc;

use jiff::Timestamp;

use super::{Entry, Registry, SasError, SasToken, Status, device, provisioning, sas};

/// Why a device was refused at a source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(transparent)]
    Token(#[from] SasError),
    #[error("device `{0}` is not registered")]
    UnknownDevice(String),
    #[error("device `{0}` is disabled")]
    Disabled(String),
    #[error("device `{0}` could not be registered: {1}")]
    Registration(String, String),
}

impl AuthError {
    /// The `reason` label of `registry_auth_failures_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Token(e) => e.reason(),
            Self::UnknownDevice(_) => "unknown_device",
            Self::Disabled(_) => "disabled",
            Self::Registration(..) => "registration_failed",
        }
    }

    /// Disabled devices are forbidden (403); everything else is unauthenticated (401).
    pub fn is_forbidden(&self) -> bool {
        matches!(self, Self::Disabled(_))
    }
}

impl Registry {
    /// Authenticates `device_id` by the `Authorization` header it sent: a SAS token signed
    /// with one of its keys, or — for a device not registered yet — with the key an
    /// auto-registering enrollment group derives for it, in which case the device is
    /// registered now with the group's tags. Failures are counted by reason.
    pub fn authenticate(
        &self,
        device_id: &str,
        authorization: Option<&str>,
    ) -> Result<Arc<Entry>, AuthError> {
        let result = self.check_token(device_id, authorization);
        match &result {
            Ok(entry) => entry.touch(),
            Err(e) => self.count_auth_failure(e.reason()),
        }
        result
    }

    fn check_token(
        &self,
        device_id: &str,
        authorization: Option<&str>,
    ) -> Result<Arc<Entry>, AuthError> {
        let token = sas::parse(authorization.ok_or(SasError::Missing)?)?;
        let now = Timestamp::now().as_second().max(0) as u64;
        match self.lookup(device_id) {
            Some(entry) => {
                token.verify(device_id, &entry.primary, &entry.secondary, now)?;
                match entry.device.status {
                    Status::Enabled => Ok(entry),
                    Status::Disabled => Err(AuthError::Disabled(device_id.to_owned())),
                }
            }
            None => self.register_from_group(device_id, &token, now),
        }
    }

    /// First contact of a device holding a group-derived key.
    fn register_from_group(
        &self,
        device_id: &str,
        token: &SasToken,
        now: u64,
    ) -> Result<Arc<Entry>, AuthError> {
        let unknown = || AuthError::UnknownDevice(device_id.to_owned());
        token.check_resource(device_id).map_err(|_| unknown())?;
        token.check_expiry(now)?;
        let group = self
            .groups()
            .into_iter()
            .filter(|g| g.auto_register && g.status == Status::Enabled)
            .find(|group| {
                provisioning::derived_key(group, device_id)
                    .is_some_and(|key| token.check_signature(&key, &key).is_ok())
            });
        let Some(group) = group else {
            return Err(unknown());
        };
        if device::check_id(device_id).is_err() {
            return Err(unknown());
        }
        self.enroll(device_id, &group)
            .map(|(entry, _)| entry)
            .map_err(|e| AuthError::Registration(device_id.to_owned(), e.to_string()))
    }

    /// The gate of sources without tokens (brokers, `auth: none`): disabled devices are
    /// refused, and unknown ones too when `refuse_unknown`. Failures are counted by reason.
    pub fn admit(&self, device_id: &str, refuse_unknown: bool) -> Result<(), AuthError> {
        let result = match self.lookup(device_id) {
            Some(entry) if entry.device.status == Status::Disabled => {
                Err(AuthError::Disabled(device_id.to_owned()))
            }
            Some(entry) => {
                entry.touch();
                Ok(())
            }
            None if refuse_unknown => Err(AuthError::UnknownDevice(device_id.to_owned())),
            None => Ok(()),
        };
        if let Err(e) = &result {
            self.count_auth_failure(e.reason());
        }
        result
    }
}
