//! The built-in device registry: identities, keys, tags and properties of devices, and the
//! enrollment groups that let devices register themselves.
//!
//! One [`Registry`] per database file lives for the whole process (see [`Registry::open`]):
//! the daemon's API, the sources that authenticate or gate devices, `enrich` and the
//! `device_registry` source all share it, so it outlives reloads and a change made through
//! the API is visible to every component at once. Reads are served from memory (a sharded
//! hash table of [`Entry`]s, updated in the same call that commits a change to disk);
//! writes go to the redb file first ([`store`]), then to memory, then to the change feed.
//!
//! This module holds the handle, its lookup table and the way a changed device is written;
//! the operations are grouped by job: `admin` (operators change devices), `auth` (devices
//! arrive at sources), `groups` (enrollment groups), `provisioning` (devices registering
//! through a group's derived key, for the device gateway's provisioning protocol),
//! `activity` (when devices were last seen), `feed` (lifecycle events), `metrics`,
//! `config` (the `registry:` section) and `service` (how the topology starts it and
//! components find it); `rows` is the file of devices that `weir devices import` reads
//! and `export` writes.
//!
//! A batch run's registry is read-only ([`Backing::ReadOnly`]): loaded into memory from
//! a snapshot (`snapshot`, such a file) or from a store read once, with no file behind
//! it, so every change is refused ([`RegistryError::ReadOnly`]) rather than dropped.

pub mod cli;
pub mod device;
mod export;
pub mod keys;
pub mod rows;
pub mod sas;
mod snapshot;
mod store;

mod activity;
mod admin;
mod auth;
mod config;
mod feed;
mod groups;
mod metrics;
mod provisioning;
mod service;
pub mod twin;

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

use arc_swap::ArcSwapOption;
use tokio::sync::broadcast;

pub use admin::{ImportOutcome, Page};
pub use auth::AuthError;
pub use config::RegistryConfig;
pub use device::{
    Device, DevicePatch, DeviceSpec, EnrollmentGroup, GroupPatch, GroupSpec, Properties, Status,
    tags_match,
};
pub use feed::{Change, ChangeKind};
pub use provisioning::{ProvisionError, Provisioned};
pub use sas::{SasError, SasToken};
pub use service::{SERVICE, used_by};
pub use snapshot::SnapshotError;
pub use store::StoreError;

use crate::telemetry::Metrics;
use store::Store;

/// Lookup shards: writers lock one shard, readers never wait for a writer of another.
const SHARDS: usize = 64;

/// A device as the lookup table holds it (see [`device::Entry`]), plus its last activity.
pub use device::Entry;

/// Why a registry operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    Exists(String),
    #[error("etag mismatch: the record changed (current etag {current})")]
    EtagMismatch { current: String },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The registry was loaded once and is never written (a batch run's).
    #[error(
        "the device registry is read-only: this run loaded it from {} and changes no device",
        .0.display()
    )]
    ReadOnly(PathBuf),
}

type Shard = RwLock<HashMap<Arc<str>, Arc<Entry>, foldhash::fast::FixedState>>;

/// The registry: see the module documentation.
pub struct Registry {
    path: PathBuf,
    backing: Backing,
    shards: Box<[Shard]>,
    hasher: foldhash::fast::FixedState,
    /// Ids in order, for paged listings.
    ordered: RwLock<BTreeMap<Arc<str>, Arc<Entry>>>,
    groups: RwLock<BTreeMap<String, EnrollmentGroup>>,
    /// Serializes changes: each is read, checked (etag) and written as one step.
    writer: Mutex<()>,
    /// Disabled devices, kept as devices come and go (the gauge must not scan the fleet).
    disabled: AtomicUsize,
    feed: broadcast::Sender<Change>,
    metrics: ArcSwapOption<Metrics>,
}

/// Where the records live.
enum Backing {
    /// The store weir manages: every change is written to it first.
    Store(Store),
    /// Nowhere: the records were loaded once (from a snapshot, or from a store a batch
    /// run opened read-only) and every change is refused.
    ReadOnly,
}

/// Registries open in this process, by file: a redb file can be opened once per process,
/// and every user of one file must see the same devices.
static OPEN: Mutex<Vec<(PathBuf, Weak<Registry>)>> = Mutex::new(Vec::new());

impl Registry {
    /// The registry kept in `path`, opened now or shared with whoever opened it already.
    pub fn open(path: &Path) -> Result<Arc<Self>, StoreError> {
        let key = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let mut open = OPEN.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|(_, weak)| weak.strong_count() > 0);
        if let Some(registry) = open
            .iter()
            .find(|(p, _)| *p == key)
            .and_then(|(_, w)| w.upgrade())
        {
            return Ok(registry);
        }
        let registry = Arc::new(Self::load(&key)?);
        open.push((key, Arc::downgrade(&registry)));
        Ok(registry)
    }

    fn load(path: &Path) -> Result<Self, StoreError> {
        let store = Store::open(path)?;
        let (devices, groups) = store.load()?;
        let registry = Self::holding(path, Backing::Store(store), devices, groups);
        tracing::info!(path = %path.display(), devices = registry.len(), "device registry open");
        Ok(registry)
    }

    /// A read-only registry of what the store in `path` holds now, for a batch run: the
    /// store is read in one transaction and closed again, so a live weir that starts
    /// later can open it. A store a running weir holds is refused
    /// ([`StoreError::is_locked`]).
    pub fn read_store(path: &Path) -> Result<Arc<Self>, StoreError> {
        let (devices, groups) = store::read_only(path)?;
        let registry = Self::holding(path, Backing::ReadOnly, devices, groups);
        tracing::info!(path = %path.display(), devices = registry.len(), "device registry loaded read-only from its store");
        Ok(Arc::new(registry))
    }

    /// A registry of `devices` and `groups`, kept in `backing`.
    fn holding(
        path: &Path,
        backing: Backing,
        devices: Vec<Device>,
        groups: Vec<EnrollmentGroup>,
    ) -> Self {
        let registry = Self {
            path: path.to_path_buf(),
            backing,
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            hasher: foldhash::fast::FixedState::with_seed(0x5eed),
            ordered: RwLock::default(),
            groups: RwLock::new(groups.into_iter().map(|g| (g.id.clone(), g)).collect()),
            writer: Mutex::new(()),
            disabled: AtomicUsize::new(0),
            feed: broadcast::channel(feed::FEED_CAPACITY).0,
            metrics: ArcSwapOption::empty(),
        };
        for device in devices {
            registry.put(Entry::new(device));
        }
        registry
    }

    /// The store to write a change to; refused by a read-only registry.
    fn store(&self) -> Result<&Store, RegistryError> {
        match &self.backing {
            Backing::Store(store) => Ok(store),
            Backing::ReadOnly => Err(RegistryError::ReadOnly(self.path.clone())),
        }
    }

    /// Whether changes are refused (the registry of a batch run).
    pub fn is_read_only(&self) -> bool {
        matches!(self.backing, Backing::ReadOnly)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> usize {
        self.ordered.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard(&self, id: &str) -> &Shard {
        let hash = self.hasher.hash_one(id) as usize;
        &self.shards[hash % SHARDS]
    }

    /// The device `id`, from memory. This is the hot path of `enrich` and of every gate.
    #[inline]
    pub fn lookup(&self, id: &str) -> Option<Arc<Entry>> {
        self.shard(id)
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// The device with its last activity as known in memory.
    pub fn get(&self, id: &str) -> Option<Device> {
        self.lookup(id).map(|e| e.snapshot())
    }

    fn put(&self, entry: Arc<Entry>) {
        let id: Arc<str> = entry.device.id.as_str().into();
        self.shard(&id)
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(Arc::clone(&id), Arc::clone(&entry));
        let disabled = entry.device.status == Status::Disabled;
        let old = self
            .ordered
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, entry);
        self.uncount_disabled(old.as_deref());
        if disabled {
            self.disabled.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Takes a replaced or removed device out of the disabled count.
    fn uncount_disabled(&self, gone: Option<&Entry>) {
        if gone.is_some_and(|e| e.device.status == Status::Disabled) {
            self.disabled.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn remove(&self, id: &str) {
        self.shard(id)
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        let old = self
            .ordered
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        self.uncount_disabled(old.as_deref());
    }

    fn lock_writer(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes a changed device: to the store, then to memory, then to the change feed.
    /// Callers hold the writer lock.
    fn commit(&self, device: Device, kind: ChangeKind) -> Result<Device, RegistryError> {
        self.commit_desired(device, kind, None)
    }

    /// [`Self::commit`] of a change that may have touched the desired properties
    /// (`desired_patch`: what changed, for the feed).
    fn commit_desired(
        &self,
        device: Device,
        kind: ChangeKind,
        desired_patch: Option<Properties>,
    ) -> Result<Device, RegistryError> {
        self.store()?.write_devices(&[&device], &[])?;
        let entry = Entry::new(device.clone());
        self.put(Arc::clone(&entry));
        self.announce_desired(kind, entry, desired_patch);
        self.update_status_gauge();
        Ok(device)
    }
}

/// Refuses a change made against another version of the record (`If-Match`); `*` or no
/// etag matches any.
fn check_etag(current: &str, if_match: Option<&str>) -> Result<(), RegistryError> {
    match if_match.map(|e| e.trim().trim_matches('"')) {
        Some(wanted) if wanted != "*" && wanted != current => Err(RegistryError::EtagMismatch {
            current: current.to_owned(),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;
