//! The instance id: which weir installation this is, the same across restarts and reloads.
//!
//! Components that leave their mark somewhere shared need a name no other weir uses: the
//! `delta_lake` sink names its transactions in a table's log with it (two instances writing
//! one table must never take each other's commits for their own), and partitioned work will
//! name its share with it. The id is made on first use and kept in `data_dir/instance_id`,
//! so a restart is the same instance; `WEIR_INSTANCE_ID` overrides it (for a fleet
//! provisioned with ids of its own, or an image whose `data_dir` was copied: copies of one
//! `data_dir` must be given different ids).
//!
//! It is read lazily, when the first component asks, so a topology that needs none (and a
//! test without a `data_dir`) writes nothing.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;

/// The environment variable that overrides the stored id.
pub const INSTANCE_ID_ENV: &str = "WEIR_INSTANCE_ID";
const INSTANCE_ID_FILE: &str = "instance_id";
const MAX_LEN: usize = 64;

/// A checked instance id: 1 to 64 ASCII letters, digits, `-`, `_` or `.`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct InstanceId(Arc<str>);

impl InstanceId {
    /// `text` as an id, or what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        match text {
            "" => Err("expected an instance id, found an empty string".into()),
            _ if text.len() > MAX_LEN => Err(format!(
                "expected at most {MAX_LEN} characters, found {}",
                text.len()
            )),
            _ if !text.chars().all(valid) => Err(format!(
                "expected ASCII letters, digits, `-`, `_` or `.`, found `{}`",
                text.escape_debug()
            )),
            _ => Ok(Self(text.into())),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where this instance's id comes from; handed to every component's build context.
pub struct InstanceIdentity {
    data_dir: PathBuf,
    /// `WEIR_INSTANCE_ID`, as found at start.
    overridden: Option<String>,
    id: Mutex<Option<InstanceId>>,
}

impl InstanceIdentity {
    /// The instance whose id is `WEIR_INSTANCE_ID` if set, else the one in `data_dir`.
    pub fn from_env(data_dir: &Path) -> Self {
        Self::new(data_dir, std::env::var(INSTANCE_ID_ENV).ok())
    }

    pub fn new(data_dir: &Path, overridden: Option<String>) -> Self {
        Self {
            data_dir: data_dir.to_path_buf(),
            overridden,
            id: Mutex::new(None),
        }
    }

    /// The id: the override, else `data_dir/instance_id`, made there (durably) if absent.
    /// Blocking (a small file, once per process).
    pub fn get(&self) -> anyhow::Result<InstanceId> {
        let mut id = self.id.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(id) = id.as_ref() {
            return Ok(id.clone());
        }
        let found = match &self.overridden {
            Some(text) => InstanceId::parse(text.trim())
                .map_err(|problem| anyhow::anyhow!("{INSTANCE_ID_ENV}: {problem}"))?,
            None => self.stored()?,
        };
        *id = Some(found.clone());
        Ok(found)
    }

    /// The id in `data_dir/instance_id`, made if the file does not exist.
    fn stored(&self) -> anyhow::Result<InstanceId> {
        let path = self.data_dir.join(INSTANCE_ID_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                return InstanceId::parse(text.trim()).map_err(|problem| {
                    anyhow::anyhow!(
                        "{}: {problem}; fix the file, or set {INSTANCE_ID_ENV} (a new id makes this weir another instance)",
                        path.display()
                    )
                });
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => {
                return Err(err).with_context(|| format!("cannot read {}", path.display()));
            }
        }
        let id = InstanceId(format!("{:032x}", rand::random::<u128>()).into());
        write_new(&path, id.as_str())
            .with_context(|| format!("cannot create the instance id file {}", path.display()))?;
        tracing::info!(instance_id = %id, path = %path.display(), "made this instance's id");
        Ok(id)
    }
}

/// Writes `text` to `path` durably and atomically (a temporary file, then a rename).
fn write_new(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_is_made_once_and_kept_in_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("state");
        let first = InstanceIdentity::new(&data_dir, None).get().unwrap();
        assert_eq!(first.as_str().len(), 32);
        let again = InstanceIdentity::new(&data_dir, None).get().unwrap();
        assert_eq!(first, again, "a restart is the same instance");
        let other = InstanceIdentity::new(dir.path().join("elsewhere").as_path(), None)
            .get()
            .unwrap();
        assert_ne!(first, other, "another data_dir is another instance");
    }

    #[test]
    fn the_override_wins_and_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let id = InstanceIdentity::new(dir.path(), Some("plant-7.gw_2".into()))
            .get()
            .unwrap();
        assert_eq!(id.as_str(), "plant-7.gw_2");
        assert!(
            !dir.path().join(INSTANCE_ID_FILE).exists(),
            "an override is not stored"
        );
        let bad = InstanceIdentity::new(dir.path(), Some("a/b".into()))
            .get()
            .unwrap_err();
        assert!(bad.to_string().contains(INSTANCE_ID_ENV), "{bad}");
    }

    #[test]
    fn a_damaged_file_is_an_error_not_a_new_identity() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(INSTANCE_ID_FILE), "not an id!\n").unwrap();
        let err = InstanceIdentity::new(dir.path(), None).get().unwrap_err();
        assert!(err.to_string().contains("instance_id"), "{err}");
    }
}
