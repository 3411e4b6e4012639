//! The connections of one gateway, by device: one per device, a new one closes the old
//! (as a hub does), and the gauge of connected devices follows the table.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio_util::sync::CancellationToken;

/// Live connections by device id.
#[derive(Default)]
pub(super) struct Connections {
    next: AtomicU64,
    live: Mutex<HashMap<String, (u64, CancellationToken)>>,
}

/// A connection's place in the table: its serial, and the token that fires when a newer
/// connection of the same device takes its place.
pub(super) struct Claim {
    pub serial: u64,
    pub replaced: CancellationToken,
}

impl Connections {
    /// Records a new connection of `device_id`, closing the one it replaces.
    pub(super) fn claim(&self, device_id: &str) -> Claim {
        let serial = self.next.fetch_add(1, Ordering::Relaxed);
        let replaced = CancellationToken::new();
        let old = self
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(device_id.to_owned(), (serial, replaced.clone()));
        if let Some((_, old)) = old {
            old.cancel();
        }
        Claim { serial, replaced }
    }

    /// Forgets connection `serial` of `device_id`, unless a newer one took its place.
    pub(super) fn release(&self, device_id: &str, serial: u64) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if live.get(device_id).is_some_and(|(s, _)| *s == serial) {
            live.remove(device_id);
        }
    }

    pub(super) fn len(&self) -> usize {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}
