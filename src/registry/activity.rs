//! Device activity: when each device was last seen, stamped in memory on the hot path and
//! written to the store in the background.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use jiff::Timestamp;

use super::{Device, Entry, Registry, RegistryError};

impl Entry {
    /// The record with its last activity as known in memory.
    pub fn snapshot(&self) -> Device {
        let mut device = self.device.clone();
        let seen = self.last_seen.load(Ordering::Relaxed);
        if seen > 0 {
            device.last_activity = Timestamp::from_millisecond(seen).ok();
        }
        device
    }

    /// Records that the device was just seen (in memory; written with its next change).
    pub fn touch(&self) {
        self.last_seen.store(now_millis(), Ordering::Relaxed);
    }
}

/// Unix milliseconds now, for activity stamps.
fn now_millis() -> i64 {
    Timestamp::now().as_millisecond()
}

impl Registry {
    /// Writes the last activity of every device seen since the previous flush (activity is
    /// kept in memory on the hot path); returns how many were written. Not a change: no
    /// new etag, no lifecycle event.
    pub fn flush_activity(&self) -> Result<usize, RegistryError> {
        let _writer = self.lock_writer();
        let seen: Vec<(Arc<Entry>, i64)> = {
            let ordered = self.ordered.read().unwrap_or_else(|p| p.into_inner());
            ordered
                .values()
                .filter_map(|e| {
                    let seen = e.last_seen.load(Ordering::Relaxed);
                    (seen > e.stored_seen.load(Ordering::Relaxed)).then(|| (Arc::clone(e), seen))
                })
                .collect()
        };
        if seen.is_empty() {
            return Ok(0);
        }
        let records: Vec<Device> = seen.iter().map(|(e, _)| e.snapshot()).collect();
        self.store()?
            .write_devices(&records.iter().collect::<Vec<_>>(), &[])?;
        for (entry, at) in &seen {
            entry.stored_seen.store(*at, Ordering::Relaxed);
        }
        Ok(seen.len())
    }

    /// Flushes activity every `period` until `stop`, and once more at the end.
    pub async fn keep_activity(
        self: Arc<Self>,
        period: std::time::Duration,
        stop: tokio_util::sync::CancellationToken,
    ) {
        loop {
            let stopping = tokio::select! {
                _ = tokio::time::sleep(period) => false,
                _ = stop.cancelled() => true,
            };
            let registry = Arc::clone(&self);
            match tokio::task::spawn_blocking(move || registry.flush_activity()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::error!("cannot write device activity: {e}"),
                Err(e) => tracing::error!("device activity flush failed: {e}"),
            }
            if stopping {
                return;
            }
        }
    }
}
