//! API tokens: who may call the admin API, and with which [`Role`].
//!
//! A token is `weir_` and 43 Base64url characters (32 bytes from the operating system's
//! random generator, 256 bits); weir shows it once, when it is made, and keeps only its
//! SHA-256 in `data_dir/api-tokens.json` (mode 0600). A presented token is hashed and
//! compared with every stored hash in constant time, so neither the answer nor its
//! timing says how much of a guess was right.
//!
//! The store belongs to one process at a time: the running weir holds
//! `data_dir/api-tokens.lock`, and `weir tokens` without `--token` works on the files
//! directly only while nobody holds it (weir stopped); while weir runs, the same commands
//! go through its API. On a start with no tokens at all, weir makes an `admin` token named
//! `initial-admin` and writes it to `data_dir/initial-admin-token` (mode 0600), logging
//! the path, never the token (see [`TokenStore::ensure_initial_admin`]).

pub mod cli;
mod file;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jiff::Timestamp;
use rand::TryRngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub(crate) use self::file::give_to_owner_of;
pub use self::file::{INITIAL_ADMIN_FILE, LOCK_FILE, TOKENS_FILE};

pub use crate::config::{Grant, Role, Scope};

/// A token's value, shown once. `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenSecret(String);

impl TokenSecret {
    const PREFIX: &'static str = "weir_";

    fn generate() -> Result<Self, TokenError> {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng
            .try_fill_bytes(&mut bytes)
            .map_err(|e| TokenError::Io(format!("the random number generator failed: {e}")))?;
        Ok(Self(format!(
            "{}{}",
            Self::PREFIX,
            URL_SAFE_NO_PAD.encode(bytes)
        )))
    }

    /// The value, for the one place that shows it (the answer to `create`).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for TokenSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSecret(***)")
    }
}

fn sha256(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// One stored token, as `api-tokens.json` holds it.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredToken {
    name: String,
    role: Role,
    /// Device tags the role is limited to; empty: every device.
    #[serde(default, skip_serializing_if = "Scope::is_empty")]
    scope: Scope,
    /// Hex SHA-256 of the token.
    sha256: String,
    created_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_used_at: Option<Timestamp>,
}

/// What `list` shows of a token: everything but its hash.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenInfo {
    pub name: String,
    pub role: Role,
    /// The device tags the role is limited to (absent: every device).
    #[serde(default, skip_serializing_if = "Scope::is_empty")]
    pub scope: Scope,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<Timestamp>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_used_at: Option<Timestamp>,
}

impl From<&StoredToken> for TokenInfo {
    fn from(t: &StoredToken) -> Self {
        Self {
            name: t.name.clone(),
            role: t.role,
            scope: t.scope.clone(),
            created_at: t.created_at,
            expires_at: t.expires_at,
            last_used_at: t.last_used_at,
        }
    }
}

/// Who presented a valid token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenHolder {
    pub name: String,
    pub grant: Grant,
}

/// Why a presented token was not accepted (the metric's `reason`; the caller's 401 says
/// none of it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// No stored token has this hash (never made, or revoked).
    Unknown,
    Expired,
}

impl Rejection {
    pub fn reason(self) -> &'static str {
        match self {
            Rejection::Unknown => "unknown_token",
            Rejection::Expired => "expired_token",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{0}")]
    Invalid(String),
    #[error("a token named `{0}` exists already")]
    Exists(String),
    #[error("no token is named `{0}`")]
    NotFound(String),
    #[error(
        "weir is running with this data_dir ({0} is held): manage tokens through its API with an admin token (`--token` or WEIR_TOKEN)"
    )]
    Locked(PathBuf),
    #[error("{0}")]
    Io(String),
}

/// How long a token's last use may be only in memory before it is written down.
const LAST_USED_PERSIST_EVERY: Duration = Duration::from_secs(60);

/// The tokens of one `data_dir`, held by this process while it lives.
pub struct TokenStore {
    files: file::TokenFiles,
    tokens: Mutex<Vec<StoredToken>>,
    /// Serialises writes of the file, so an older state never overwrites a newer one.
    writing: Mutex<()>,
}

impl std::fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenStore")
            .field("path", &self.files.tokens_path())
            .finish_non_exhaustive()
    }
}

impl TokenStore {
    /// Opens (or starts) the tokens of `data_dir`; [`TokenError::Locked`] while another
    /// process holds them.
    pub fn open(data_dir: &Path) -> Result<Self, TokenError> {
        let files = file::TokenFiles::lock(data_dir)?;
        let tokens = files.read()?;
        Ok(Self {
            files,
            tokens: Mutex::new(tokens),
            writing: Mutex::new(()),
        })
    }

    fn tokens(&self) -> std::sync::MutexGuard<'_, Vec<StoredToken>> {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes a token with `role` on every device; its value is in the answer and nowhere
    /// else.
    pub fn create(
        &self,
        name: &str,
        role: Role,
        ttl: Option<Duration>,
    ) -> Result<(TokenSecret, TokenInfo), TokenError> {
        self.create_with(name, Grant::everywhere(role), ttl)
    }

    /// Makes a token granting `grant` (a role, maybe limited to devices by tag).
    pub fn create_with(
        &self,
        name: &str,
        grant: Grant,
        ttl: Option<Duration>,
    ) -> Result<(TokenSecret, TokenInfo), TokenError> {
        check_name(name)?;
        grant.check().map_err(TokenError::Invalid)?;
        let secret = TokenSecret::generate()?;
        let now = Timestamp::now();
        let expires_at = match ttl {
            Some(ttl) => Some(
                jiff::SignedDuration::try_from(ttl)
                    .ok()
                    .and_then(|ttl| now.checked_add(ttl).ok())
                    .ok_or_else(|| TokenError::Invalid("the ttl is too long".into()))?,
            ),
            None => None,
        };
        let stored = StoredToken {
            name: name.to_owned(),
            role: grant.role,
            scope: grant.scope,
            sha256: hex::encode(sha256(secret.expose())),
            created_at: now,
            expires_at,
            last_used_at: None,
        };
        let info = TokenInfo::from(&stored);
        {
            let mut tokens = self.tokens();
            if tokens.iter().any(|t| t.name == name) {
                return Err(TokenError::Exists(name.to_owned()));
            }
            tokens.push(stored);
        }
        self.save()?;
        Ok((secret, info))
    }

    /// Every token, by name.
    pub fn list(&self) -> Vec<TokenInfo> {
        let mut list: Vec<TokenInfo> = self.tokens().iter().map(TokenInfo::from).collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }

    pub fn is_empty(&self) -> bool {
        self.tokens().is_empty()
    }

    /// Removes the token `name`: it is refused from the next request on.
    pub fn revoke(&self, name: &str) -> Result<TokenInfo, TokenError> {
        let removed = {
            let mut tokens = self.tokens();
            let at = tokens
                .iter()
                .position(|t| t.name == name)
                .ok_or_else(|| TokenError::NotFound(name.to_owned()))?;
            tokens.remove(at)
        };
        self.save()?;
        Ok(TokenInfo::from(&removed))
    }

    /// The holder of `presented`, noting its use. The second value says the last use
    /// should be written down now ([`TokenStore::save`], off the async threads).
    pub fn authenticate(&self, presented: &str) -> Result<(TokenHolder, bool), Rejection> {
        let hash = sha256(presented);
        let now = Timestamp::now();
        let mut tokens = self.tokens();
        let mut found = None;
        // Every stored hash is compared, in constant time, whatever matched before.
        for (at, token) in tokens.iter().enumerate() {
            let stored = hex::decode(&token.sha256).unwrap_or_default();
            if bool::from(stored.as_slice().ct_eq(&hash)) {
                found = Some(at);
            }
        }
        let token = found
            .and_then(|at| tokens.get_mut(at))
            .ok_or(Rejection::Unknown)?;
        if token.expires_at.is_some_and(|at| at <= now) {
            return Err(Rejection::Expired);
        }
        let persist = token
            .last_used_at
            .is_none_or(|last| now.duration_since(last).unsigned_abs() >= LAST_USED_PERSIST_EVERY);
        token.last_used_at = Some(now);
        Ok((
            TokenHolder {
                name: token.name.clone(),
                grant: Grant {
                    role: token.role,
                    scope: token.scope.clone(),
                },
            },
            persist,
        ))
    }

    /// Writes the tokens down (atomically, fsync'd, mode 0600).
    pub fn save(&self) -> Result<(), TokenError> {
        let _writing = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        let tokens = self.tokens().clone();
        self.files.write(&tokens)
    }

    /// On a store with no tokens at all: makes the admin token `initial-admin` and writes
    /// it to `data_dir/initial-admin-token` (0600). The path written, if any.
    pub fn ensure_initial_admin(&self) -> Result<Option<PathBuf>, TokenError> {
        if !self.is_empty() {
            return Ok(None);
        }
        let (secret, _) = self.create("initial-admin", Role::Admin, None)?;
        self.files.write_initial_admin(&secret).map(Some)
    }
}

/// Token names: 1 to 64 of `A-Z a-z 0-9 . _ -` (they appear in URLs and the audit log).
fn check_name(name: &str) -> Result<(), TokenError> {
    let fits = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    match fits {
        true => Ok(()),
        false => Err(TokenError::Invalid(format!(
            "token name `{name}`: expected 1 to 64 of A-Z, a-z, 0-9, `.`, `_`, `-`"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_authenticates_until_revoked_and_only_its_hash_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::open(dir.path()).unwrap();
        let (secret, info) = store.create("ci", Role::Operator, None).unwrap();
        assert_eq!(info.role, Role::Operator);
        assert!(secret.expose().starts_with("weir_"));
        // 32 bytes in unpadded Base64url.
        assert_eq!(secret.expose().len(), "weir_".len() + 43);
        assert_eq!(format!("{secret:?}"), "TokenSecret(***)");
        let (holder, persist) = store.authenticate(secret.expose()).unwrap();
        assert_eq!(holder.name, "ci");
        assert!(persist, "a first use is written down");
        assert!(!store.authenticate(secret.expose()).unwrap().1);
        assert_eq!(
            store.authenticate("weir_guess"),
            Err(Rejection::Unknown),
            "a wrong token"
        );
        let text = std::fs::read_to_string(dir.path().join(TOKENS_FILE)).unwrap();
        assert!(!text.contains(secret.expose()), "{text}");
        assert!(text.contains(&hex::encode(sha256(secret.expose()))));
        store.revoke("ci").unwrap();
        assert_eq!(store.authenticate(secret.expose()), Err(Rejection::Unknown));
    }

    #[test]
    fn an_expired_token_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::open(dir.path()).unwrap();
        let (secret, _) = store
            .create("short", Role::Viewer, Some(Duration::from_millis(1)))
            .unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(store.authenticate(secret.expose()), Err(Rejection::Expired));
    }

    #[test]
    fn a_scoped_token_keeps_its_scope_and_admin_cannot_be_scoped() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::open(dir.path()).unwrap();
        let scope = Scope::from([("site".to_owned(), "plant-3".to_owned())]);
        let grant = |role| Grant {
            role,
            scope: scope.clone(),
        };
        let (secret, info) = store
            .create_with("plant3", grant(Role::Operator), None)
            .unwrap();
        assert_eq!(info.scope, scope);
        drop(store);
        let store = TokenStore::open(dir.path()).unwrap();
        let (holder, _) = store.authenticate(secret.expose()).unwrap();
        assert_eq!(holder.grant, grant(Role::Operator));
        assert!(matches!(
            store.create_with("boss", grant(Role::Admin), None),
            Err(TokenError::Invalid(_))
        ));
    }

    #[test]
    fn names_are_unique_and_plain() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::open(dir.path()).unwrap();
        store.create("a", Role::Admin, None).unwrap();
        assert!(matches!(
            store.create("a", Role::Viewer, None),
            Err(TokenError::Exists(_))
        ));
        for bad in ["", "a b", "a/b", &"x".repeat(65)] {
            assert!(
                matches!(
                    store.create(bad, Role::Viewer, None),
                    Err(TokenError::Invalid(_))
                ),
                "{bad}"
            );
        }
        assert!(matches!(store.revoke("nope"), Err(TokenError::NotFound(_))));
    }

    #[test]
    fn tokens_survive_a_reopen_and_the_store_is_held_by_one_process() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::open(dir.path()).unwrap();
        assert!(matches!(
            TokenStore::open(dir.path()),
            Err(TokenError::Locked(_))
        ));
        let (secret, _) = store.create("kept", Role::Viewer, None).unwrap();
        drop(store);
        let store = TokenStore::open(dir.path()).unwrap();
        assert_eq!(store.authenticate(secret.expose()).unwrap().0.name, "kept");
    }

    #[test]
    fn the_initial_admin_token_is_made_once_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::open(dir.path()).unwrap();
        let path = store.ensure_initial_admin().unwrap().unwrap();
        assert_eq!(path, dir.path().join(INITIAL_ADMIN_FILE));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let token = std::fs::read_to_string(&path).unwrap();
        let (holder, _) = store.authenticate(token.trim()).unwrap();
        assert_eq!(holder.grant, Grant::everywhere(Role::Admin));
        assert_eq!(store.ensure_initial_admin().unwrap(), None);
        let mode = std::fs::metadata(dir.path().join(TOKENS_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
