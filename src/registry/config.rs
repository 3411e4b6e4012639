//! The global `registry:` section of a pipeline file: where the registry is kept.

use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The global `registry:` section: the store weir keeps its devices in (`path`), or,
/// for a batch run, a read-only file of devices (`snapshot`). With it, the admin API
/// serves `/v1/devices`, every source refuses disabled devices, and `enrich`,
/// `device_registry` and `auth: sas` can be used.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(try_from = "RegistryFields", into = "RegistryFields")]
pub enum RegistryConfig {
    /// A redb store, relative to `data_dir` (or absolute): the registry weir manages.
    Store(PathBuf),
    /// A file of devices (`weir devices export`), relative to `data_dir` (or absolute),
    /// held in memory and read-only: for `weir run --batch` only.
    Snapshot(PathBuf),
}

/// The `registry:` section as it is written ([`RegistryConfig`] once checked).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegistryFields {
    /// Database file, relative to `data_dir` (or absolute); default `registry.redb`.
    /// Not with `snapshot`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Devices from a file `weir devices export` wrote (NDJSON, or CSV when it ends in
    /// `.csv`), relative to `data_dir` (or absolute), loaded into memory at the start and
    /// never written: the registry of a batch run (`weir run --batch`), which must not
    /// open the live daemon's store. Not with `path`; refused by a live `weir run`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<PathBuf>,
}

impl TryFrom<RegistryFields> for RegistryConfig {
    type Error = String;

    fn try_from(fields: RegistryFields) -> Result<Self, String> {
        match (fields.path, fields.snapshot) {
            (Some(_), Some(_)) => Err(
                "registry: write `path` (the store weir manages) or `snapshot` (a read-only file of devices), not both".to_owned(),
            ),
            (None, Some(snapshot)) => Ok(Self::Snapshot(snapshot)),
            (path, None) => Ok(Self::Store(path.unwrap_or_else(default_path))),
        }
    }
}

impl From<RegistryConfig> for RegistryFields {
    fn from(config: RegistryConfig) -> Self {
        match config {
            RegistryConfig::Store(path) => Self {
                path: Some(path),
                snapshot: None,
            },
            RegistryConfig::Snapshot(file) => Self {
                path: None,
                snapshot: Some(file),
            },
        }
    }
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self::Store(default_path())
    }
}

fn default_path() -> PathBuf {
    PathBuf::from("registry.redb")
}

impl RegistryConfig {
    /// The file the registry is read from (the store, or the snapshot) for a given
    /// `data_dir`.
    pub fn file(&self, data_dir: &Path) -> PathBuf {
        match self {
            Self::Store(path) | Self::Snapshot(path) => data_dir.join(path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: serde_json::Value) -> Result<RegistryConfig, String> {
        serde_json::from_value(json).map_err(|e| e.to_string())
    }

    #[test]
    fn path_or_snapshot_not_both() {
        assert_eq!(
            parse(serde_json::json!({})).unwrap(),
            RegistryConfig::Store("registry.redb".into())
        );
        assert_eq!(
            parse(serde_json::json!({ "snapshot": "fleet.ndjson" })).unwrap(),
            RegistryConfig::Snapshot("fleet.ndjson".into())
        );
        let both = parse(serde_json::json!({ "path": "r.redb", "snapshot": "f.ndjson" }));
        assert!(both.unwrap_err().contains("not both"));
        let unknown = parse(serde_json::json!({ "snapshots": "f.ndjson" }));
        assert!(unknown.unwrap_err().contains("unknown field"));
    }
}
