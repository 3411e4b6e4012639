//! The token store's files in `data_dir`: the lock, `api-tokens.json`, and the first
//! admin token.
//!
//! `api-tokens.json` is replaced whole (a temporary file, fsync, rename, fsync of the
//! directory), so a crash leaves the old list or the new one. Files are made 0600; when
//! root writes them (`sudo weir tokens create` on a stopped service) they are given to the
//! owner of `data_dir`, so the service can still read them.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{StoredToken, TokenError, TokenSecret};

/// The token list, in `data_dir`.
pub const TOKENS_FILE: &str = "api-tokens.json";
/// Held (flock) by the process that owns the tokens.
pub const LOCK_FILE: &str = "api-tokens.lock";
/// The first admin token, written on a start with no tokens.
pub const INITIAL_ADMIN_FILE: &str = "initial-admin-token";

#[derive(Serialize, Deserialize)]
struct Contents {
    version: u32,
    tokens: Vec<StoredToken>,
}

/// The files of one `data_dir`, locked for this process while it lives.
pub struct TokenFiles {
    dir: PathBuf,
    /// Held open: the lock is released when the process ends or this is dropped.
    _lock: File,
}

fn io(what: &str, path: &Path, err: std::io::Error) -> TokenError {
    TokenError::Io(format!("cannot {what} {}: {err}", path.display()))
}

impl TokenFiles {
    pub fn lock(dir: &Path) -> Result<Self, TokenError> {
        std::fs::create_dir_all(dir).map_err(|e| io("create", dir, e))?;
        let path = dir.join(LOCK_FILE);
        // Read-only is enough for flock, and lets the service open a lock file root made.
        if !path.exists() {
            let made = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o644)
                .open(&path)
                .map_err(|e| io("create", &path, e))?;
            drop(made);
            give_to_owner_of(dir, &path)?;
        }
        let lock = File::open(&path).map_err(|e| io("open", &path, e))?;
        match lock.try_lock() {
            Ok(()) => Ok(Self {
                dir: dir.to_path_buf(),
                _lock: lock,
            }),
            Err(std::fs::TryLockError::WouldBlock) => Err(TokenError::Locked(path)),
            Err(std::fs::TryLockError::Error(e)) => Err(io("lock", &path, e)),
        }
    }

    pub fn tokens_path(&self) -> PathBuf {
        self.dir.join(TOKENS_FILE)
    }

    pub fn read(&self) -> Result<Vec<StoredToken>, TokenError> {
        let path = self.tokens_path();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io("read", &path, e)),
        };
        let contents: Contents = serde_json::from_str(&text).map_err(|e| {
            TokenError::Io(format!(
                "{} is not a token list (expected {{\"version\": 1, \"tokens\": [...]}}): {e}",
                path.display()
            ))
        })?;
        Ok(contents.tokens)
    }

    pub fn write(&self, tokens: &[StoredToken]) -> Result<(), TokenError> {
        let contents = Contents {
            version: 1,
            tokens: tokens.to_vec(),
        };
        let bytes = serde_json::to_vec_pretty(&contents)
            .map_err(|e| TokenError::Io(format!("cannot encode the token list: {e}")))?;
        write_private(&self.dir, &self.tokens_path(), &bytes)
    }

    pub fn write_initial_admin(&self, secret: &TokenSecret) -> Result<PathBuf, TokenError> {
        let path = self.dir.join(INITIAL_ADMIN_FILE);
        write_private(
            &self.dir,
            &path,
            format!("{}\n", secret.expose()).as_bytes(),
        )?;
        Ok(path)
    }
}

/// Replaces `path` (in `dir`) with `bytes`, atomically and durably, mode 0600.
fn write_private(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), TokenError> {
    let mut temp = path.as_os_str().to_owned();
    temp.push(".tmp");
    let temp = PathBuf::from(temp);
    let _ = std::fs::remove_file(&temp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)
        .map_err(|e| io("create", &temp, e))?;
    file.write_all(bytes).map_err(|e| io("write", &temp, e))?;
    file.sync_all().map_err(|e| io("sync", &temp, e))?;
    give_to_owner_of(dir, &temp)?;
    std::fs::rename(&temp, path).map_err(|e| io("replace", path, e))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("sync", dir, e))
}

/// When this process is root and `dir` belongs to someone else, `path` becomes theirs
/// (so the service can still open what `sudo weir tokens` made).
pub(crate) fn give_to_owner_of(dir: &Path, path: &Path) -> Result<(), TokenError> {
    let made = std::fs::metadata(path).map_err(|e| io("inspect", path, e))?;
    let owner = std::fs::metadata(dir).map_err(|e| io("inspect", dir, e))?;
    // A file this process made is root's only when the process is root.
    if made.uid() != 0 || (owner.uid() == 0 && owner.gid() == 0) {
        return Ok(());
    }
    std::os::unix::fs::chown(path, Some(owner.uid()), Some(owner.gid()))
        .map_err(|e| io("change the owner of", path, e))
}
