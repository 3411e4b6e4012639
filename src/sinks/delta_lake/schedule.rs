//! The `delta_lake` sink's options of when things happen: when the open window is
//! committed (`batch`), and when the table is compacted (`optimize`) and vacuumed
//! (`vacuum`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::{self, ByteSize};

/// Scheduled `OPTIMIZE` (compaction): each partition's files smaller than `target_size`
/// are rewritten into files of about that size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OptimizeConfig {
    /// How often to compact.
    #[serde(default = "default_optimize_interval")]
    pub interval: config::Duration,
    /// The file size to aim for.
    #[serde(default = "default_target_size")]
    pub target_size: ByteSize,
}

fn default_optimize_interval() -> config::Duration {
    config::Duration::from_secs(3600)
}

fn default_target_size() -> ByteSize {
    ByteSize::mib(128)
}

/// Scheduled `VACUUM`: removes data files the table no longer refers to (replaced by a
/// compaction, or written by a window that crashed before its commit).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VacuumConfig {
    /// How often to vacuum.
    #[serde(default = "default_vacuum_interval")]
    pub interval: config::Duration,
    /// Keep files younger than this, so readers of recent versions still find them.
    #[serde(default = "default_vacuum_retention")]
    pub retention: config::Duration,
}

fn default_vacuum_interval() -> config::Duration {
    config::Duration::from_secs(24 * 3600)
}

fn default_vacuum_retention() -> config::Duration {
    config::Duration::from_secs(7 * 24 * 3600)
}

/// When the open window is committed: whichever limit is reached first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Rows per commit.
    #[serde(default = "default_max_events")]
    pub max_events: usize,
    /// Encoded Parquet bytes per commit (so files are large, not thousands of small ones).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: ByteSize,
    /// The longest a row waits for its commit (and its source for the acknowledgement).
    #[serde(default = "default_timeout")]
    pub timeout: config::Duration,
}

fn default_max_events() -> usize {
    5_000_000
}

fn default_max_bytes() -> ByteSize {
    ByteSize::mib(64)
}

fn default_timeout() -> config::Duration {
    config::Duration::from_secs(60)
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_events: default_max_events(),
            max_bytes: default_max_bytes(),
            timeout: default_timeout(),
        }
    }
}
