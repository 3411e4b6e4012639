//! The state of `throttle` and `dedupe`, and the idempotency keys an action sent last, and
//! where they outlive the process: `data_dir/actions/<id>.json`.
//!
//! The keys close the gap between two copies of one notification after a crash: the alarm
//! emits again a transition whose handover it had not yet recorded, while the action's disk
//! buffer hands back the copy it already held. Whichever comes second finds its key among
//! the [`RECENT_KEYS`] sent last and is not sent again (counted as `deduplicated`).
//!
//! Both count in wall-clock time (milliseconds since the epoch), so what was written before a
//! restart means the same after it: a notification sent just before a crash still holds back
//! the next one for its key, and an identical payload is still a duplicate. The runner
//! writes the file (atomically: temporary file, fsync, rename) after each notification it
//! sent and before it acknowledges that notification to its buffer; a crash in between
//! re-sends that one notification (with the same idempotency key), never more, and never
//! forgets one that was acknowledged.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use super::policy::{DedupeConfig, ThrottleConfig};
use crate::config::ComponentId;

/// The file format version; another version is refused rather than misread.
const VERSION: u32 = 1;

/// How many idempotency keys of sent notifications are remembered.
pub const RECENT_KEYS: usize = 1024;

/// How often idle keys are forgotten, so state stays bounded by recent activity.
const SWEEP_EVERY_MS: i64 = 60_000;

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// The state file of action `id` under `data_dir`.
pub fn state_path(data_dir: &Path, id: &ComponentId) -> PathBuf {
    data_dir.join("actions").join(format!("{id}.json"))
}

fn millis(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Sliding-window counts of notifications per key.
pub struct Throttler {
    max: usize,
    period_ms: i64,
    sent: HashMap<String, VecDeque<i64>>,
    last_sweep: i64,
}

impl Throttler {
    pub fn new(config: &ThrottleConfig) -> Self {
        Self {
            max: config.max as usize,
            period_ms: millis(config.period.get()),
            sent: HashMap::new(),
            last_sweep: now_ms(),
        }
    }

    /// Whether a notification for `key` may go at `now` (ms); if so it is counted.
    pub fn admit(&mut self, key: &str, now: i64) -> bool {
        self.sweep(now);
        let period = self.period_ms;
        let times = self.sent.entry(key.to_owned()).or_default();
        while times.front().is_some_and(|t| now - *t >= period) {
            times.pop_front();
        }
        if times.len() >= self.max {
            return false;
        }
        times.push_back(now);
        true
    }

    fn sweep(&mut self, now: i64) {
        if now - self.last_sweep < SWEEP_EVERY_MS {
            return;
        }
        self.last_sweep = now;
        let period = self.period_ms;
        self.sent
            .retain(|_, times| times.back().is_some_and(|t| now - *t < period));
    }
}

/// Payload fingerprints seen within the window.
pub struct Deduper {
    window_ms: i64,
    seen: HashMap<u64, i64>,
    last_sweep: i64,
}

impl Deduper {
    pub fn new(config: &DedupeConfig) -> Self {
        Self {
            window_ms: millis(config.window.get()),
            seen: HashMap::new(),
            last_sweep: now_ms(),
        }
    }

    /// Whether `fingerprint` was seen within the window before `now` (ms); records it
    /// otherwise.
    pub fn is_duplicate(&mut self, fingerprint: u64, now: i64) -> bool {
        let window = self.window_ms;
        if now - self.last_sweep >= SWEEP_EVERY_MS {
            self.last_sweep = now;
            self.seen.retain(|_, at| now - *at < window);
        }
        match self.seen.get(&fingerprint) {
            Some(at) if now - *at < window => true,
            _ => {
                self.seen.insert(fingerprint, now);
                false
            }
        }
    }
}

/// An action's throttle and dedupe, the keys it sent last, and the file they are kept in.
pub struct Limits {
    pub throttle: Option<Throttler>,
    pub dedupe: Option<Deduper>,
    /// Idempotency keys of the last notifications sent, oldest first.
    sent: indexmap::IndexSet<String>,
    path: PathBuf,
    /// What the limits were made from, to read them again.
    configs: (Option<ThrottleConfig>, Option<DedupeConfig>),
}

/// The file's content.
#[derive(Debug, Default, PartialEq, Deserialize, Serialize)]
struct Saved {
    version: u32,
    /// Send times (ms) per throttle key, oldest first.
    #[serde(default)]
    throttle: BTreeMap<String, Vec<i64>>,
    /// When each payload fingerprint (hex) was last let through (ms).
    #[serde(default)]
    dedupe: BTreeMap<String, i64>,
    /// The idempotency keys of the last notifications sent, oldest first.
    #[serde(default)]
    sent: Vec<String>,
}

impl Limits {
    /// The limits `throttle` and `dedupe` ask for, with what `path` remembers of them. A file
    /// that cannot be read fails the build: starting without it could repeat notifications.
    pub fn open(
        path: PathBuf,
        throttle: Option<&ThrottleConfig>,
        dedupe: Option<&DedupeConfig>,
    ) -> anyhow::Result<Limits> {
        let mut limits = Limits {
            throttle: throttle.map(Throttler::new),
            dedupe: dedupe.map(Deduper::new),
            sent: indexmap::IndexSet::new(),
            path,
            configs: (throttle.cloned(), dedupe.cloned()),
        };
        let saved = match std::fs::read(&limits.path) {
            Ok(bytes) => serde_json::from_slice::<Saved>(&bytes).with_context(|| {
                format!(
                    "{} is not an action's throttle and dedupe state (move it away to start without it)",
                    limits.path.display()
                )
            })?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(limits),
            Err(err) => {
                return Err(err).with_context(|| format!("cannot read {}", limits.path.display()));
            }
        };
        if saved.version != VERSION {
            anyhow::bail!(
                "{} has action state version {}, this weir reads version {VERSION}",
                limits.path.display(),
                saved.version
            );
        }
        limits.sent = saved.sent.into_iter().collect();
        if let Some(throttle) = &mut limits.throttle {
            throttle.sent = saved
                .throttle
                .into_iter()
                .map(|(key, times)| (key, times.into()))
                .collect();
        }
        if let Some(dedupe) = &mut limits.dedupe {
            dedupe.seen = saved
                .dedupe
                .into_iter()
                .filter_map(|(hex, at)| Some((u64::from_str_radix(&hex, 16).ok()?, at)))
                .collect();
        }
        Ok(limits)
    }

    /// Reads the file again: a reload's new instance does so once the old one let go of the
    /// action's disk buffer, so it sees what the old one sent while draining.
    pub fn reread(&mut self) -> anyhow::Result<()> {
        *self = Limits::open(
            self.path.clone(),
            self.configs.0.as_ref(),
            self.configs.1.as_ref(),
        )?;
        Ok(())
    }

    /// Whether a notification with idempotency key `key` was sent lately.
    pub fn was_sent(&self, key: &str) -> bool {
        self.sent.contains(key)
    }

    /// Records that the notification with idempotency key `key` was sent.
    pub fn sent(&mut self, key: &str) {
        self.sent.insert(key.to_owned());
        while self.sent.len() > RECENT_KEYS {
            self.sent.shift_remove_index(0);
        }
    }

    /// Writes the state atomically: a crash leaves the old file or the new one.
    pub fn save(&self) -> anyhow::Result<()> {
        let saved = Saved {
            version: VERSION,
            throttle: self.throttle.as_ref().map_or_else(BTreeMap::new, |t| {
                t.sent
                    .iter()
                    .filter(|(_, times)| !times.is_empty())
                    .map(|(key, times)| (key.clone(), times.iter().copied().collect()))
                    .collect()
            }),
            dedupe: self.dedupe.as_ref().map_or_else(BTreeMap::new, |d| {
                d.seen
                    .iter()
                    .map(|(fingerprint, at)| (format!("{fingerprint:016x}"), *at))
                    .collect()
            }),
            sent: self.sent.iter().cloned().collect(),
        };
        let bytes = serde_json::to_vec(&saved)?;
        if let Some(parent) = self.path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let mut temp = self.path.as_os_str().to_owned();
        temp.push(".tmp");
        let temp = PathBuf::from(temp);
        let mut file = std::fs::File::create(&temp)
            .with_context(|| format!("cannot create {}", temp.display()))?;
        file.write_all(&bytes)
            .and_then(|()| file.sync_all())
            .with_context(|| format!("cannot write {}", temp.display()))?;
        std::fs::rename(&temp, &self.path).with_context(|| {
            format!(
                "cannot rename {} to {}",
                temp.display(),
                self.path.display()
            )
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Duration;

    fn throttle(max: u32, secs: u64) -> ThrottleConfig {
        ThrottleConfig {
            key: super::super::policy::default_throttle_key(),
            max,
            period: Duration::from_secs(secs),
        }
    }

    #[test]
    fn throttle_allows_max_per_key_per_period() {
        let mut throttle = Throttler::new(&throttle(2, 10));
        let t0 = now_ms();
        assert!(throttle.admit("a", t0));
        assert!(throttle.admit("a", t0 + 1000));
        assert!(!throttle.admit("a", t0 + 2000));
        assert!(throttle.admit("b", t0 + 2000), "keys are separate");
        assert!(throttle.admit("a", t0 + 10_000), "the window slides");
        assert!(!throttle.admit("a", t0 + 10_000));
    }

    #[test]
    fn dedupe_drops_identical_payloads_within_the_window() {
        let mut dedupe = Deduper::new(&DedupeConfig {
            window: Duration::from_secs(5),
        });
        let t0 = now_ms();
        assert!(!dedupe.is_duplicate(1, t0));
        assert!(dedupe.is_duplicate(1, t0 + 4000));
        assert!(!dedupe.is_duplicate(2, t0 + 4000));
        assert!(!dedupe.is_duplicate(1, t0 + 6000));
    }

    #[test]
    fn what_was_let_through_is_remembered_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = state_path(dir.path(), &ComponentId::new("page"));
        let throttle = throttle(1, 3600);
        let dedupe = DedupeConfig {
            window: Duration::from_secs(3600),
        };
        let t0 = now_ms();
        let mut before = Limits::open(path.clone(), Some(&throttle), Some(&dedupe)).unwrap();
        assert!(before.throttle.as_mut().unwrap().admit("dev-1", t0));
        assert!(!before.dedupe.as_mut().unwrap().is_duplicate(u64::MAX, t0));
        before.save().unwrap();

        let mut after = Limits::open(path.clone(), Some(&throttle), Some(&dedupe)).unwrap();
        let throttler = after.throttle.as_mut().unwrap();
        assert!(!throttler.admit("dev-1", t0 + 1000), "still throttled");
        assert!(throttler.admit("dev-2", t0 + 1000));
        assert!(throttler.admit("dev-1", t0 + 3_600_000), "the period ended");
        let deduper = after.dedupe.as_mut().unwrap();
        assert!(deduper.is_duplicate(u64::MAX, t0 + 1000));
    }

    #[test]
    fn the_last_keys_sent_are_remembered_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = state_path(dir.path(), &ComponentId::new("page"));
        let mut before = Limits::open(path.clone(), None, None).unwrap();
        for i in 0..=RECENT_KEYS {
            before.sent(&format!("a-{i}"));
        }
        before.save().unwrap();
        let after = Limits::open(path, None, None).unwrap();
        assert!(after.was_sent(&format!("a-{RECENT_KEYS}")));
        assert!(after.was_sent("a-1"));
        assert!(!after.was_sent("a-0"), "the oldest is forgotten");
        assert!(!after.was_sent("b-1"));
    }

    #[test]
    fn an_unreadable_state_file_is_refused_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = state_path(dir.path(), &ComponentId::new("page"));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"[1,").unwrap();
        let err = match Limits::open(path, Some(&throttle(1, 1)), None) {
            Ok(_) => panic!("a corrupt file was accepted"),
            Err(err) => format!("{err:#}"),
        };
        assert!(err.contains("page.json"), "{err}");
    }
}
