//! The alarm state on disk: `data_dir/alarms/<id>.json`, written atomically (temp file,
//! fsync, rename) after each batch in which an alarm changed, when the outbox handed
//! transitions over, and at shutdown. It holds every key's state and the outbox
//! (`pending`: transitions not yet handed to the alarm's consumers).

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use super::machine::{Severity, Tracker};
use super::outbox::PendingTransition;
use crate::config::ComponentId;
use crate::event::Fields;

/// The file format version; a file of another version is refused rather than misread.
const VERSION: u32 = 1;

/// The snapshot file of alarm transform `id` under `data_dir`.
pub fn snapshot_path(data_dir: &Path, id: &ComponentId) -> PathBuf {
    data_dir.join("alarms").join(format!("{id}.json"))
}

/// An alarm that has been raised and not cleared.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct ActiveAlarm {
    pub id: String,
    pub severity: Severity,
    pub started_at: jiff::Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// The reading that raised it (or last changed its severity).
    pub values: Fields,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_at: Option<jiff::Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_by: Option<String>,
    /// The sequence number of its last transition (1: raised); files written before
    /// sequence numbers existed count from 0.
    #[serde(default)]
    pub seq: u64,
}

/// Everything kept about one key.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct KeyState {
    pub tracker: Tracker,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alarm: Option<ActiveAlarm>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
pub struct Snapshot {
    version: u32,
    pub keys: HashMap<String, KeyState>,
    /// Transitions recorded and not yet handed to the consumers, oldest first.
    #[serde(default)]
    pub pending: Vec<PendingTransition>,
}

impl Snapshot {
    pub fn of<'a>(
        keys: &'a HashMap<String, KeyState>,
        pending: Vec<&'a PendingTransition>,
    ) -> SnapshotRef<'a> {
        SnapshotRef {
            version: VERSION,
            keys,
            pending,
        }
    }

    /// Reads the snapshot at `path`; nothing there is an empty state. A file that cannot
    /// be read fails the build (better than silently re-raising every alarm).
    pub fn read(path: &Path) -> anyhow::Result<Snapshot> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Snapshot {
                    version: VERSION,
                    keys: HashMap::new(),
                    pending: Vec::new(),
                });
            }
            Err(err) => {
                return Err(err).with_context(|| format!("cannot read {}", path.display()));
            }
        };
        let snapshot: Snapshot = serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{} is not an alarm state file (move it away to start without the saved alarms)",
                path.display()
            )
        })?;
        if snapshot.version != VERSION {
            anyhow::bail!(
                "{} has alarm state version {}, this weir reads version {VERSION}",
                path.display(),
                snapshot.version
            );
        }
        Ok(snapshot)
    }
}

/// A snapshot borrowing the live state, for writing.
#[derive(Serialize)]
pub struct SnapshotRef<'a> {
    version: u32,
    keys: &'a HashMap<String, KeyState>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pending: Vec<&'a PendingTransition>,
}

impl SnapshotRef<'_> {
    /// Writes atomically: a reader (or a crash) sees the old file or the new one.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec(self)?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let mut temp = path.as_os_str().to_owned();
        temp.push(".tmp");
        let temp = PathBuf::from(temp);
        let mut file = std::fs::File::create(&temp)
            .with_context(|| format!("cannot create {}", temp.display()))?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
            .with_context(|| format!("cannot rename {} to {}", temp.display(), path.display()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = snapshot_path(dir.path(), &ComponentId::new("hot"));
        assert!(Snapshot::read(&path).unwrap().keys.is_empty());
        let mut tracker = Tracker::default();
        tracker.active = Some(Severity::Major);
        let mut keys = HashMap::new();
        keys.insert(
            "dev-1".to_owned(),
            KeyState {
                tracker,
                alarm: Some(ActiveAlarm {
                    id: "a1".into(),
                    severity: Severity::Major,
                    started_at: jiff::Timestamp::UNIX_EPOCH,
                    device_id: Some("dev-1".into()),
                    values: Fields::new(),
                    acknowledged_at: None,
                    acknowledged_by: None,
                    seq: 1,
                }),
            },
        );
        Snapshot::of(&keys, Vec::new()).write(&path).unwrap();
        assert_eq!(Snapshot::read(&path).unwrap().keys, keys);
    }

    #[test]
    fn a_corrupt_file_is_refused_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = snapshot_path(dir.path(), &ComponentId::new("hot"));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"{not json").unwrap();
        let err = Snapshot::read(&path).unwrap_err().to_string();
        assert!(err.contains("hot.json"), "{err}");
    }
}
