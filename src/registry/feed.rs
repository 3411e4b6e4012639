//! The change feed: one lifecycle event per change to a device, for `device_registry`
//! sources.

use std::sync::Arc;

use jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::{Entry, Properties, Registry};

/// How many lifecycle events a slow `device_registry` source may fall behind before it
/// misses some (it counts what it missed).
pub(super) const FEED_CAPACITY: usize = 1 << 16;

/// What happened to a device, for the change feed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Created,
    Updated,
    Deleted,
    Enabled,
    Disabled,
    KeyRotated,
}

impl ChangeKind {
    pub const ALL: [ChangeKind; 6] = [
        Self::Created,
        Self::Updated,
        Self::Deleted,
        Self::Enabled,
        Self::Disabled,
        Self::KeyRotated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Updated => "updated",
            Self::Deleted => "deleted",
            Self::Enabled => "enabled",
            Self::Disabled => "disabled",
            Self::KeyRotated => "key_rotated",
        }
    }
}

/// One lifecycle event: the device as it is after the change (as it was, for `deleted`).
#[derive(Clone, Debug)]
pub struct Change {
    pub kind: ChangeKind,
    pub device: Arc<Entry>,
    pub at: Timestamp,
    /// When the change touched the desired properties: what changed, as a merge patch
    /// (a removed property `null`), for gateways to push to the device with its new
    /// `$version` (`device.device.desired_version`).
    pub desired_patch: Option<Arc<Properties>>,
}

impl Registry {
    /// Lifecycle events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.feed.subscribe()
    }

    pub(super) fn announce(&self, kind: ChangeKind, device: Arc<Entry>) {
        self.announce_desired(kind, device, None);
    }

    /// [`Self::announce`] of a change that may have touched the desired properties.
    pub(super) fn announce_desired(
        &self,
        kind: ChangeKind,
        device: Arc<Entry>,
        desired_patch: Option<Properties>,
    ) {
        // No subscriber is fine: lifecycle events are for pipelines that ask for them.
        let _ = self.feed.send(Change {
            kind,
            device,
            at: Timestamp::now(),
            desired_patch: desired_patch.map(Arc::new),
        });
    }
}
