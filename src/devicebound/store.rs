//! One gateway's queue file: the messages waiting per device and the settled ones not yet
//! handed over, rewritten whole on every change (a temporary file, fsync'd, renamed over
//! it, the directory fsync'd) so a crash leaves either the old or the new state.
//!
//! Files written before gateways had a file each (a bare `{device: [message…]}` map in
//! `data_dir/devicebound.json`) are still read: see [`super::Devicebound::open`].

use std::collections::{BTreeMap, VecDeque};
use std::io::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::Message;
use super::feedback::Settled;

/// The file's current format.
const VERSION: u32 = 2;

/// What one queue file holds.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Stored {
    version: u32,
    pub queues: BTreeMap<String, VecDeque<Message>>,
    /// Outcomes waiting to leave through the gateway's outputs, oldest first.
    #[serde(default)]
    pub settled: VecDeque<Settled>,
    /// The `seq` the next settled message gets.
    #[serde(default)]
    pub next_seq: u64,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OnDisk {
    Current(Stored),
    /// The first format: the queues alone.
    Queues(BTreeMap<String, VecDeque<Message>>),
}

impl Stored {
    pub(super) fn new(queues: BTreeMap<String, VecDeque<Message>>) -> Self {
        Self {
            version: VERSION,
            queues,
            settled: VecDeque::new(),
            next_seq: 0,
        }
    }

    /// The state in `file`, empty when there is none.
    pub(super) fn load(file: &Path) -> anyhow::Result<Self> {
        let bytes = match std::fs::read(file) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Self::new(BTreeMap::new()));
            }
            Err(e) => anyhow::bail!("cannot read {}: {e}", file.display()),
        };
        match serde_json::from_slice::<OnDisk>(&bytes) {
            Ok(OnDisk::Current(stored)) if stored.version == VERSION => Ok(stored),
            Ok(OnDisk::Current(stored)) => anyhow::bail!(
                "{} is a cloud-to-device queue of format {}, newer than this weir reads ({VERSION})",
                file.display(),
                stored.version
            ),
            Ok(OnDisk::Queues(queues)) => Ok(Self::new(queues)),
            Err(e) => anyhow::bail!("{} is not a cloud-to-device queue: {e}", file.display()),
        }
    }

    /// Rewrites `file` with this state.
    pub(super) fn save(&self, file: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        let temporary = file.with_extension("json.tmp");
        let mut out = std::fs::File::create(&temporary)?;
        out.write_all(&bytes)?;
        out.sync_all()?;
        std::fs::rename(&temporary, file)?;
        if let Some(dir) = file.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_format_is_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("q.json");
        std::fs::write(
            &file,
            r#"{"d1":[{"id":"m1","payload":"x","properties":[["a","b"]],
                "enqueued_at":"2026-01-01T00:00:00Z","expires_at":"2026-01-01T01:00:00Z"}]}"#,
        )
        .unwrap();
        let stored = Stored::load(&file).unwrap();
        assert_eq!(stored.queues["d1"][0].id, "m1");
        assert_eq!(stored.queues["d1"][0].delivery_count, 0);
        stored.save(&file).unwrap();
        assert_eq!(Stored::load(&file).unwrap(), stored);
        std::fs::write(&file, r#"{"version":9,"queues":{}}"#).unwrap();
        assert!(
            Stored::load(&file)
                .unwrap_err()
                .to_string()
                .contains("newer")
        );
    }
}
