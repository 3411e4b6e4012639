//! A buffer directory seen from outside its buffer: how many events it still holds, and
//! deleting it when the user said to discard them (`--discard-buffer`).
//!
//! The count reads the ack file and checks every frame after it, without changing a byte:
//! a torn or corrupt tail is not counted (recovery would cut it off). A directory a buffer
//! is using is counted as of its last persisted ack position, so the count can only be
//! higher than what the running buffer knows, never lower.

use std::path::Path;

use super::{ack, lock, segment};

/// Events in `dir` that its sink has not acknowledged; 0 when there is no directory.
pub fn pending(dir: &Path) -> std::io::Result<u64> {
    if !dir.is_dir() {
        return Ok(0);
    }
    // An unreadable ack position means everything on disk would be delivered again.
    let position = ack::read_position(dir)?.ok().flatten().unwrap_or(0);
    let mut events = 0;
    for (_, path) in segment::list(dir)? {
        if let Ok(scan) = segment::scan(&path, position)? {
            events += scan.end_seq().saturating_sub(scan.first_seq.max(position));
        }
    }
    Ok(events)
}

/// Waits until no buffer holds `dir`, then deletes it; returns how many unacknowledged
/// events it held.
pub async fn discard(dir: &Path) -> std::io::Result<u64> {
    if !dir.is_dir() {
        return Ok(0);
    }
    let held = lock::acquire(dir, |message| tracing::warn!("{message}")).await?;
    let events = pending(dir)?;
    std::fs::remove_dir_all(dir)?;
    if let Some(parent) = dir.parent() {
        segment::sync_dir(parent)?;
    }
    drop(held);
    Ok(events)
}
