//! Dropping telemetry a device sends again: a publish whose `$.mid` (message id) the
//! gateway already committed for that device is acknowledged without entering the
//! pipeline, and counted (`device_gateway_duplicates_dropped`).
//!
//! Why: a device resends what it sent but did not see acknowledged — after weir was
//! killed between a sink's commit and the PUBACK, say. Bounded and cheap rather than
//! exact: the gateway remembers the last `dedupe.window` (device, `$.mid`) pairs it
//! committed, in memory and appended (one `write`, no fsync) to
//! `data_dir/device_gateway/<id>.seen` after the commit and before the PUBACK, so they
//! survive a killed process (not a lost machine); the file is rewritten with the window
//! alone once it has grown past twice the window. A publish without `$.mid`, one
//! committed just before a crash but not yet written down, or one older than the window
//! still gets through: duplicates stay possible, never losses. Two messages a device
//! gives the same `$.mid` within the window count as one: ids must be unique per device.

use std::collections::{HashSet, VecDeque};
use std::fs::File;
use std::io::{BufRead as _, Write as _};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How the gateway drops telemetry sent again.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DedupeSettings {
    /// (device, `$.mid`) pairs remembered, the latest committed; 0 turns dropping off.
    #[serde(default = "default_window")]
    pub window: usize,
}

impl Default for DedupeSettings {
    fn default() -> Self {
        Self {
            window: default_window(),
        }
    }
}

fn default_window() -> usize {
    10_000
}

type Key = (String, String);

/// The (device, `$.mid`) pairs committed lately: see the module documentation.
pub(super) struct SeenMessages {
    window: usize,
    state: Mutex<Seen>,
}

struct Seen {
    keys: HashSet<Key>,
    order: VecDeque<Key>,
    path: PathBuf,
    /// Appended to; `None` after a write failed (dedupe goes on in memory).
    file: Option<File>,
    /// Lines in the file.
    lines: usize,
}

impl SeenMessages {
    /// The pairs `path` remembers (the last `window`), appended to from now on.
    pub(super) fn open(path: PathBuf, window: usize) -> anyhow::Result<Self> {
        let mut seen = Seen {
            keys: HashSet::new(),
            order: VecDeque::new(),
            path,
            file: None,
            lines: 0,
        };
        if window > 0 {
            if let Some(dir) = seen.path.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
            }
            match File::open(&seen.path) {
                Ok(file) => {
                    for line in std::io::BufReader::new(file).lines() {
                        let line = line.map_err(|e| {
                            anyhow::anyhow!("cannot read {}: {e}", seen.path.display())
                        })?;
                        // A line cut short by a crash is skipped, not fatal.
                        if let Ok(key) = serde_json::from_str::<Key>(&line) {
                            seen.remember(key, window);
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => anyhow::bail!("cannot read {}: {e}", seen.path.display()),
            }
            seen.rewrite()
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", seen.path.display()))?;
        }
        Ok(Self {
            window,
            state: Mutex::new(seen),
        })
    }

    /// Whether `device_id` had a message `mid` committed lately.
    pub(super) fn contains(&self, device_id: &str, mid: &str) -> bool {
        self.window > 0
            && self
                .lock()
                .keys
                .contains(&(device_id.to_owned(), mid.to_owned()))
    }

    /// What to call once message `mid` of `device_id` is committed, if dedupe is on.
    pub(super) fn remember_later(
        self: &Arc<Self>,
        device_id: &str,
        mid: Option<&str>,
    ) -> Option<Remember> {
        let mid = mid.filter(|_| self.window > 0)?;
        Some(Remember {
            seen: Arc::clone(self),
            key: (device_id.to_owned(), mid.to_owned()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A committed message to remember (see [`SeenMessages::remember_later`]).
pub(super) struct Remember {
    seen: Arc<SeenMessages>,
    key: Key,
}

impl Remember {
    /// The message is committed: remember it, in memory and in the file.
    pub(super) fn committed(self) {
        let window = self.seen.window;
        let mut seen = self.seen.lock();
        if seen.keys.contains(&self.key) {
            return;
        }
        let line = serde_json::to_string(&self.key).unwrap_or_default();
        seen.remember(self.key, window);
        let written = seen
            .file
            .as_mut()
            .map(|file| writeln!(file, "{line}"))
            .transpose();
        seen.lines += 1;
        let result = match written {
            Ok(_) if seen.lines > window.saturating_mul(2) => seen.rewrite(),
            other => other.map(drop),
        };
        if let Err(e) = result {
            tracing::warn!(file = %seen.path.display(), error = %e, "the message ids seen could not be written: after a restart, duplicates are not dropped");
            seen.file = None;
        }
    }
}

impl Seen {
    fn remember(&mut self, key: Key, window: usize) {
        if self.keys.insert(key.clone()) {
            self.order.push_back(key);
        }
        while self.order.len() > window {
            if let Some(old) = self.order.pop_front() {
                self.keys.remove(&old);
            }
        }
    }

    /// Replaces the file with the window alone, and appends to it from now on.
    fn rewrite(&mut self) -> std::io::Result<()> {
        let temporary = self.path.with_extension("seen.tmp");
        let mut out = std::io::BufWriter::new(File::create(&temporary)?);
        for key in &self.order {
            let line = serde_json::to_string(key).map_err(std::io::Error::other)?;
            writeln!(out, "{line}")?;
        }
        out.flush()?;
        drop(out);
        std::fs::rename(&temporary, &self.path)?;
        self.file = Some(File::options().append(true).open(&self.path)?);
        self.lines = self.order.len();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_ids_are_remembered_across_a_restart_within_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gw/devices.seen");
        let seen = Arc::new(SeenMessages::open(path.clone(), 3).unwrap());
        for mid in ["a", "b", "c", "d", "e", "f", "g"] {
            assert!(!seen.contains("d1", mid));
            seen.remember_later("d1", Some(mid)).unwrap().committed();
        }
        assert!(seen.remember_later("d1", None).is_none());
        assert!(seen.contains("d1", "g") && !seen.contains("d2", "g"));
        assert!(!seen.contains("d1", "d"), "out of the window");
        // A line cut short by a crash is skipped.
        let mut file = File::options().append(true).open(&path).unwrap();
        write!(file, "[\"d1\",\"h").unwrap();
        drop((file, seen));

        let seen = SeenMessages::open(path.clone(), 3).unwrap();
        assert!(["e", "f", "g"].iter().all(|mid| seen.contains("d1", mid)));
        assert!(!seen.contains("d1", "d"));
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 3);
        let off = SeenMessages::open(dir.path().join("off.seen"), 0).unwrap();
        assert!(!off.contains("d1", "g"));
    }
}
