//! The global `registry:` section of a pipeline file: where the registry is kept.

use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The global `registry:` section: where the registry is kept. With it, the admin API
/// serves `/v1/devices`, every source refuses disabled devices, and `enrich`,
/// `device_registry` and `auth: sas` can be used.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Database file, relative to `data_dir` (or absolute).
    #[serde(default = "default_path")]
    pub path: PathBuf,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            path: default_path(),
        }
    }
}

fn default_path() -> PathBuf {
    PathBuf::from("registry.redb")
}

impl RegistryConfig {
    /// The database file for a given `data_dir`.
    pub fn file(&self, data_dir: &Path) -> PathBuf {
        data_dir.join(&self.path)
    }
}
