//! The built-in device registry: identities, keys, tags and properties of devices, and the
//! enrollment groups that let devices register themselves.
//!
//! One [`Registry`] per database file lives for the whole process (see [`Registry::open`]):
//! the daemon's API, the sources that authenticate or gate devices, `enrich` and the
//! `device_registry` source all share it, so it outlives reloads and a change made through
//! the API is visible to every component at once. Reads are served from memory (a sharded
//! hash table of [`Entry`]s, updated in the same call that commits a change to disk);
//! writes go to the redb file first ([`store`]), then to memory, then to the change feed.

pub mod cli;
pub mod device;
pub mod keys;
pub mod sas;
mod service;
mod store;

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

use arc_swap::ArcSwapOption;
use jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

pub use device::{
    Device, DevicePatch, DeviceSpec, EnrollmentGroup, GroupPatch, GroupSpec, Properties, Status,
};
pub use sas::{SasError, SasToken};
pub use service::{SERVICE, used_by};
pub use store::StoreError;

use crate::telemetry::Metrics;

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

/// How many lifecycle events a slow `device_registry` source may fall behind before it
/// misses some (it counts what it missed).
const FEED_CAPACITY: usize = 1 << 16;
/// Lookup shards: writers lock one shard, readers never wait for a writer of another.
const SHARDS: usize = 64;

/// A device as the lookup table holds it (see [`device::Entry`]), plus its last activity.
pub use device::Entry;

/// What happened to a device, for the change feed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Created,
    Updated,
    Deleted,
    Enabled,
    Disabled,
    KeyRotated,
}

impl ChangeKind {
    pub const ALL: [ChangeKind; 6] = [
        Self::Created,
        Self::Updated,
        Self::Deleted,
        Self::Enabled,
        Self::Disabled,
        Self::KeyRotated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Updated => "updated",
            Self::Deleted => "deleted",
            Self::Enabled => "enabled",
            Self::Disabled => "disabled",
            Self::KeyRotated => "key_rotated",
        }
    }
}

/// One lifecycle event: the device as it is after the change (as it was, for `deleted`).
#[derive(Clone, Debug)]
pub struct Change {
    pub kind: ChangeKind,
    pub device: Arc<Entry>,
    pub at: Timestamp,
}

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
}

/// Why a device was refused at a source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(transparent)]
    Token(#[from] SasError),
    #[error("device `{0}` is not registered")]
    UnknownDevice(String),
    #[error("device `{0}` is disabled")]
    Disabled(String),
    #[error("device `{0}` could not be registered: {1}")]
    Registration(String, String),
}

impl AuthError {
    /// The `reason` label of `registry_auth_failures_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Token(e) => e.reason(),
            Self::UnknownDevice(_) => "unknown_device",
            Self::Disabled(_) => "disabled",
            Self::Registration(..) => "registration_failed",
        }
    }

    /// Disabled devices are forbidden (403); everything else is unauthenticated (401).
    pub fn is_forbidden(&self) -> bool {
        matches!(self, Self::Disabled(_))
    }
}

/// One page of a device listing.
#[derive(Debug, Serialize)]
pub struct Page {
    pub devices: Vec<serde_json::Value>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// What became of one row of a bulk import.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ImportOutcome {
    Created,
    /// A device with this id exists already (a re-run after a crash skips what it had done).
    Exists,
    Failed {
        error: String,
    },
}

type Shard = RwLock<HashMap<Arc<str>, Arc<Entry>, foldhash::fast::FixedState>>;

/// The registry: see the module documentation.
pub struct Registry {
    path: PathBuf,
    store: Store,
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

use store::Store;

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
        let registry = Self {
            path: path.to_path_buf(),
            store,
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            hasher: foldhash::fast::FixedState::with_seed(0x5eed),
            ordered: RwLock::default(),
            groups: RwLock::new(groups.into_iter().map(|g| (g.id.clone(), g)).collect()),
            writer: Mutex::new(()),
            disabled: AtomicUsize::new(0),
            feed: broadcast::channel(FEED_CAPACITY).0,
            metrics: ArcSwapOption::empty(),
        };
        for device in devices {
            registry.put(Entry::new(device));
        }
        tracing::info!(path = %path.display(), devices = registry.len(), "device registry open");
        Ok(registry)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reports into `metrics` from now on (devices by status, auth failures, lookups).
    pub fn attach_metrics(&self, metrics: &Metrics) {
        self.metrics.store(Some(Arc::new(metrics.clone())));
        self.update_status_gauge();
    }

    /// Lifecycle events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.feed.subscribe()
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

    /// Counts `n` lookups (callers count per batch, to keep the hot path free of shared
    /// counters).
    pub fn count_lookups(&self, n: u64) {
        if let Some(m) = &*self.metrics.load() {
            m.registry_lookups.inc_by(n);
        }
    }

    fn count_auth_failure(&self, reason: &str) {
        if let Some(m) = &*self.metrics.load() {
            m.registry_auth_failures
                .get_or_create(&crate::telemetry::ReasonLabels {
                    reason: reason.to_owned(),
                })
                .inc();
        }
    }

    fn update_status_gauge(&self) {
        let Some(m) = &*self.metrics.load() else {
            return;
        };
        let disabled = self.disabled.load(Ordering::Relaxed);
        for (status, count) in [
            (Status::Enabled, self.len().saturating_sub(disabled)),
            (Status::Disabled, disabled),
        ] {
            m.registry_devices
                .get_or_create(&crate::telemetry::DeviceStatusLabels {
                    status: status.as_str().to_owned(),
                })
                .set(count as i64);
        }
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

    fn announce(&self, kind: ChangeKind, device: Arc<Entry>) {
        // No subscriber is fine: lifecycle events are for pipelines that ask for them.
        let _ = self.feed.send(Change {
            kind,
            device,
            at: Timestamp::now(),
        });
    }

    fn lock_writer(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The device with its last activity as known in memory.
    pub fn get(&self, id: &str) -> Option<Device> {
        self.lookup(id).map(|e| e.snapshot())
    }

    /// Registers a device; its missing keys are generated.
    pub fn create(&self, spec: DeviceSpec) -> Result<Device, RegistryError> {
        spec.check().map_err(RegistryError::Invalid)?;
        let _writer = self.lock_writer();
        if self.lookup(&spec.id).is_some() {
            return Err(RegistryError::Exists(format!("device `{}`", spec.id)));
        }
        let device = Device::new(spec, Timestamp::now());
        self.commit(device, ChangeKind::Created)
    }

    fn commit(&self, device: Device, kind: ChangeKind) -> Result<Device, RegistryError> {
        self.store.write_devices(&[&device], &[])?;
        let entry = Entry::new(device.clone());
        self.put(Arc::clone(&entry));
        self.announce(kind, entry);
        self.update_status_gauge();
        Ok(device)
    }

    /// Changes a device. With `if_match`, refuses when the stored etag differs.
    pub fn update(
        &self,
        id: &str,
        patch: DevicePatch,
        if_match: Option<&str>,
    ) -> Result<Device, RegistryError> {
        patch.check().map_err(RegistryError::Invalid)?;
        self.modify(id, if_match, |device| {
            let before = device.status;
            patch.apply(device);
            match (before, device.status) {
                (Status::Enabled, Status::Disabled) => ChangeKind::Disabled,
                (Status::Disabled, Status::Enabled) => ChangeKind::Enabled,
                _ => ChangeKind::Updated,
            }
        })
    }

    /// Enables or disables a device.
    pub fn set_status(
        &self,
        id: &str,
        status: Status,
        if_match: Option<&str>,
    ) -> Result<Device, RegistryError> {
        let patch = DevicePatch {
            status: Some(status),
            ..DevicePatch::default()
        };
        self.update(id, patch, if_match)
    }

    /// Rotates a device's keys: the secondary key becomes the primary (devices already
    /// using it keep working) and a fresh secondary is generated; the old primary stops
    /// working.
    pub fn rotate_key(&self, id: &str, if_match: Option<&str>) -> Result<Device, RegistryError> {
        self.modify(id, if_match, |device| {
            device.primary_key = std::mem::replace(&mut device.secondary_key, keys::generate());
            ChangeKind::KeyRotated
        })
    }

    fn modify(
        &self,
        id: &str,
        if_match: Option<&str>,
        change: impl FnOnce(&mut Device) -> ChangeKind,
    ) -> Result<Device, RegistryError> {
        let _writer = self.lock_writer();
        let entry = self
            .lookup(id)
            .ok_or_else(|| RegistryError::NotFound(format!("device `{id}`")))?;
        check_etag(&entry.device.etag, if_match)?;
        let mut device = entry.snapshot();
        let kind = change(&mut device);
        device.updated_at = Timestamp::now();
        device.etag = device::new_etag();
        self.commit(device, kind)
    }

    /// Removes a device. With `if_match`, refuses when the stored etag differs.
    pub fn delete(&self, id: &str, if_match: Option<&str>) -> Result<(), RegistryError> {
        let _writer = self.lock_writer();
        let entry = self
            .lookup(id)
            .ok_or_else(|| RegistryError::NotFound(format!("device `{id}`")))?;
        check_etag(&entry.device.etag, if_match)?;
        self.store.write_devices(&[], &[id])?;
        self.remove(id);
        self.announce(ChangeKind::Deleted, entry);
        self.update_status_gauge();
        Ok(())
    }

    /// A page of devices in id order, after `after`, with every `tag=value` of `tags`;
    /// keys are left out.
    pub fn list(&self, after: Option<&str>, limit: usize, tags: &[(String, String)]) -> Page {
        let ordered = self.ordered.read().unwrap_or_else(|p| p.into_inner());
        let start = match after {
            Some(after) => std::ops::Bound::Excluded(after),
            None => std::ops::Bound::Unbounded,
        };
        let mut devices = Vec::new();
        let mut next = None;
        for (id, entry) in ordered.range::<str, _>((start, std::ops::Bound::Unbounded)) {
            if !entry.device.has_tags(tags) {
                continue;
            }
            if devices.len() == limit {
                break;
            }
            devices.push(entry.snapshot().without_keys());
            next = Some(id.to_string());
        }
        if devices.len() < limit {
            next = None;
        }
        Page { devices, next }
    }

    /// Creates many devices, one transaction for all of them; rows that fail are reported
    /// and skipped, rows whose id exists already are reported as such.
    pub fn import(&self, specs: Vec<DeviceSpec>) -> Result<Vec<ImportOutcome>, RegistryError> {
        let _writer = self.lock_writer();
        let now = Timestamp::now();
        let mut outcomes = Vec::with_capacity(specs.len());
        let mut fresh: Vec<Device> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for spec in specs {
            if let Err(error) = spec.check() {
                outcomes.push(ImportOutcome::Failed { error });
                continue;
            }
            if self.lookup(&spec.id).is_some() {
                outcomes.push(ImportOutcome::Exists);
                continue;
            }
            if !seen.insert(spec.id.clone()) {
                outcomes.push(ImportOutcome::Failed {
                    error: format!("id `{}` appears twice in the import", spec.id),
                });
                continue;
            }
            outcomes.push(ImportOutcome::Created);
            fresh.push(Device::new(spec, now));
        }
        self.store
            .write_devices(&fresh.iter().collect::<Vec<_>>(), &[])?;
        for device in fresh {
            let entry = Entry::new(device);
            self.put(Arc::clone(&entry));
            self.announce(ChangeKind::Created, entry);
        }
        self.update_status_gauge();
        Ok(outcomes)
    }

    /// Writes the last activity of every device seen since the previous flush (activity is
    /// kept in memory on the hot path); returns how many were written. Not a change: no
    /// new etag, no lifecycle event.
    pub fn flush_activity(&self) -> Result<usize, RegistryError> {
        let _writer = self.lock_writer();
        let seen: Vec<(Arc<Entry>, i64)> = {
            let ordered = self.ordered.read().unwrap_or_else(|p| p.into_inner());
            ordered
                .values()
                .filter_map(|e| {
                    let seen = e.last_seen.load(Ordering::Relaxed);
                    (seen > e.stored_seen.load(Ordering::Relaxed)).then(|| (Arc::clone(e), seen))
                })
                .collect()
        };
        let records: Vec<Device> = seen.iter().map(|(e, _)| e.snapshot()).collect();
        self.store
            .write_devices(&records.iter().collect::<Vec<_>>(), &[])?;
        for (entry, at) in &seen {
            entry.stored_seen.store(*at, Ordering::Relaxed);
        }
        Ok(seen.len())
    }

    /// Flushes activity every `period` until `stop`, and once more at the end.
    pub async fn keep_activity(
        self: Arc<Self>,
        period: std::time::Duration,
        stop: tokio_util::sync::CancellationToken,
    ) {
        loop {
            let stopping = tokio::select! {
                _ = tokio::time::sleep(period) => false,
                _ = stop.cancelled() => true,
            };
            let registry = Arc::clone(&self);
            match tokio::task::spawn_blocking(move || registry.flush_activity()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::error!("cannot write device activity: {e}"),
                Err(e) => tracing::error!("device activity flush failed: {e}"),
            }
            if stopping {
                return;
            }
        }
    }

    /// Enrollment groups, in id order.
    pub fn groups(&self) -> Vec<EnrollmentGroup> {
        let groups = self.groups.read().unwrap_or_else(|p| p.into_inner());
        groups.values().cloned().collect()
    }

    pub fn group(&self, id: &str) -> Option<EnrollmentGroup> {
        let groups = self.groups.read().unwrap_or_else(|p| p.into_inner());
        groups.get(id).cloned()
    }

    pub fn create_group(&self, spec: GroupSpec) -> Result<EnrollmentGroup, RegistryError> {
        spec.check().map_err(RegistryError::Invalid)?;
        let _writer = self.lock_writer();
        if self.group(&spec.id).is_some() {
            return Err(RegistryError::Exists(format!(
                "enrollment group `{}`",
                spec.id
            )));
        }
        let group = spec.into_group(Timestamp::now());
        self.store.write_group(&group)?;
        let mut groups = self.groups.write().unwrap_or_else(|p| p.into_inner());
        groups.insert(group.id.clone(), group.clone());
        Ok(group)
    }

    pub fn update_group(
        &self,
        id: &str,
        patch: GroupPatch,
        if_match: Option<&str>,
    ) -> Result<EnrollmentGroup, RegistryError> {
        patch.check().map_err(RegistryError::Invalid)?;
        let _writer = self.lock_writer();
        let mut group = self
            .group(id)
            .ok_or_else(|| RegistryError::NotFound(format!("enrollment group `{id}`")))?;
        check_etag(&group.etag, if_match)?;
        patch.apply(&mut group);
        group.updated_at = Timestamp::now();
        group.etag = device::new_etag();
        self.store.write_group(&group)?;
        let mut groups = self.groups.write().unwrap_or_else(|p| p.into_inner());
        groups.insert(group.id.clone(), group.clone());
        Ok(group)
    }

    pub fn delete_group(&self, id: &str, if_match: Option<&str>) -> Result<(), RegistryError> {
        let _writer = self.lock_writer();
        let group = self
            .group(id)
            .ok_or_else(|| RegistryError::NotFound(format!("enrollment group `{id}`")))?;
        check_etag(&group.etag, if_match)?;
        self.store.delete_group(id)?;
        let mut groups = self.groups.write().unwrap_or_else(|p| p.into_inner());
        groups.remove(id);
        Ok(())
    }

    /// Authenticates `device_id` by the `Authorization` header it sent: a SAS token signed
    /// with one of its keys, or — for a device not registered yet — with the key an
    /// auto-registering enrollment group derives for it, in which case the device is
    /// registered now with the group's tags. Failures are counted by reason.
    pub fn authenticate(
        &self,
        device_id: &str,
        authorization: Option<&str>,
    ) -> Result<Arc<Entry>, AuthError> {
        let result = self.check_token(device_id, authorization);
        match &result {
            Ok(entry) => entry.touch(),
            Err(e) => self.count_auth_failure(e.reason()),
        }
        result
    }

    fn check_token(
        &self,
        device_id: &str,
        authorization: Option<&str>,
    ) -> Result<Arc<Entry>, AuthError> {
        let token = sas::parse(authorization.ok_or(SasError::Missing)?)?;
        let now = Timestamp::now().as_second().max(0) as u64;
        match self.lookup(device_id) {
            Some(entry) => {
                token.verify(device_id, &entry.primary, &entry.secondary, now)?;
                match entry.device.status {
                    Status::Enabled => Ok(entry),
                    Status::Disabled => Err(AuthError::Disabled(device_id.to_owned())),
                }
            }
            None => self.register_from_group(device_id, &token, now),
        }
    }

    /// First contact of a device holding a group-derived key.
    fn register_from_group(
        &self,
        device_id: &str,
        token: &SasToken,
        now: u64,
    ) -> Result<Arc<Entry>, AuthError> {
        let unknown = || AuthError::UnknownDevice(device_id.to_owned());
        token.check_resource(device_id).map_err(|_| unknown())?;
        token.check_expiry(now)?;
        let group = self
            .groups()
            .into_iter()
            .filter(|g| g.auto_register && g.status == Status::Enabled)
            .find_map(|group| {
                let derived = keys::derive(&keys::decode(&group.key)?, device_id);
                let key = keys::decode(&derived)?;
                token.check_signature(&key, &key).ok()?;
                Some((group, derived))
            });
        let Some((group, derived)) = group else {
            return Err(unknown());
        };
        if device::check_id(device_id).is_err() {
            return Err(unknown());
        }
        let spec = DeviceSpec {
            id: device_id.to_owned(),
            fields: DevicePatch {
                primary_key: Some(derived),
                tags: Some(group.tags.clone()),
                ..DevicePatch::default()
            },
        };
        let _writer = self.lock_writer();
        // Another request of the same device may have registered it meanwhile.
        if let Some(entry) = self.lookup(device_id) {
            return Ok(entry);
        }
        let mut device = Device::new(spec, Timestamp::now());
        device.enrollment_group = Some(group.id.clone());
        self.commit(device, ChangeKind::Created)
            .map_err(|e| AuthError::Registration(device_id.to_owned(), e.to_string()))?;
        tracing::info!(device_id, group = %group.id, "device registered itself through its enrollment group");
        self.lookup(device_id).ok_or_else(unknown)
    }

    /// The gate of sources without tokens (brokers, `auth: none`): disabled devices are
    /// refused, and unknown ones too when `refuse_unknown`. Failures are counted by reason.
    pub fn admit(&self, device_id: &str, refuse_unknown: bool) -> Result<(), AuthError> {
        let result = match self.lookup(device_id) {
            Some(entry) if entry.device.status == Status::Disabled => {
                Err(AuthError::Disabled(device_id.to_owned()))
            }
            Some(entry) => {
                entry.touch();
                Ok(())
            }
            None if refuse_unknown => Err(AuthError::UnknownDevice(device_id.to_owned())),
            None => Ok(()),
        };
        if let Err(e) = &result {
            self.count_auth_failure(e.reason());
        }
        result
    }
}

fn check_etag(current: &str, if_match: Option<&str>) -> Result<(), RegistryError> {
    match if_match.map(|e| e.trim().trim_matches('"')) {
        Some(wanted) if wanted != "*" && wanted != current => Err(RegistryError::EtagMismatch {
            current: current.to_owned(),
        }),
        _ => Ok(()),
    }
}

/// Unix milliseconds now, for activity stamps.
fn now_millis() -> i64 {
    Timestamp::now().as_millisecond()
}

impl Entry {
    /// The record with its last activity as known in memory.
    pub fn snapshot(&self) -> Device {
        let mut device = self.device.clone();
        let seen = self.last_seen.load(Ordering::Relaxed);
        if seen > 0 {
            device.last_activity = Timestamp::from_millisecond(seen).ok();
        }
        device
    }

    /// Records that the device was just seen (in memory; written with its next change).
    pub fn touch(&self) {
        self.last_seen.store(now_millis(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests;
