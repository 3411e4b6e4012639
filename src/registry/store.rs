//! The registry on disk: one redb file in `data_dir`, records as JSON.
//!
//! Every change is one write transaction committed with redb's default (immediate)
//! durability, so a change the API acknowledged survives `kill -9`; a bulk import commits in
//! chunks, each all-or-nothing, so a crash leaves whole chunks and a re-run adds the rest.
//!
//! The `meta` table's `format` says which shape the records have ([`FORMAT`]); a store
//! of an older format is migrated in place when it is opened, in one transaction (a
//! store without `meta` is format 1: devices without twin versions).

use std::path::{Path, PathBuf};

use redb::{Database, DatabaseError, ReadableDatabase, ReadableTable, TableDefinition, TableError};

use super::device::{Device, EnrollmentGroup};

const DEVICES: TableDefinition<&str, &[u8]> = TableDefinition::new("devices");
const GROUPS: TableDefinition<&str, &[u8]> = TableDefinition::new("enrollment_groups");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The records' shape: 2 since devices carry `desired_version` and `reported_version`.
const FORMAT: u64 = 2;

/// What the store failed at, in words (the API answers 500 with it).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("registry store: {0}")]
    Failed(String),
    /// Another process has the file open (redb locks it): a running weir.
    #[error("registry store: {} is held by another process (a running weir locks its store)", .0.display())]
    Locked(PathBuf),
}

impl StoreError {
    pub fn is_locked(&self) -> bool {
        matches!(self, Self::Locked(_))
    }
}

fn err(context: &str) -> impl Fn(&dyn std::fmt::Display) -> StoreError + '_ {
    move |e| StoreError::Failed(format!("{context}: {e}"))
}

/// The error of opening `path`: [`StoreError::Locked`] when another process holds it.
fn open_error(path: &Path, how: &str, e: DatabaseError) -> StoreError {
    match e {
        DatabaseError::DatabaseAlreadyOpen => StoreError::Locked(path.to_path_buf()),
        e => StoreError::Failed(format!("cannot open {}{how}: {e}", path.display())),
    }
}

pub struct Store {
    db: Database,
}

impl Store {
    /// Opens (or creates) the database file, with its parent directory.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Failed(format!("cannot create {}: {e}", dir.display())))?;
        }
        let db = Database::create(path).map_err(|e| open_error(path, "", e))?;
        let txn = db.begin_write().map_err(|e| err("begin")(&e))?;
        txn.open_table(DEVICES)
            .map_err(|e| err("devices table")(&e))?;
        txn.open_table(GROUPS)
            .map_err(|e| err("groups table")(&e))?;
        migrate(&txn)?;
        txn.commit().map_err(|e| err("commit")(&e))?;
        Ok(Self { db })
    }

    /// Every stored device and group. A record that no longer parses is reported and left
    /// out, so one bad record does not keep the registry from starting.
    pub fn load(&self) -> Result<(Vec<Device>, Vec<EnrollmentGroup>), StoreError> {
        let txn = self.db.begin_read().map_err(|e| err("begin read")(&e))?;
        Ok((read_table(&txn, DEVICES)?, read_table(&txn, GROUPS)?))
    }

    /// Writes devices (all or none) and removes `deleted`, in one transaction.
    pub fn write_devices(&self, devices: &[&Device], deleted: &[&str]) -> Result<(), StoreError> {
        self.write(
            DEVICES,
            devices.iter().map(|d| (d.id.as_str(), *d)),
            deleted,
        )
    }

    pub fn write_group(&self, group: &EnrollmentGroup) -> Result<(), StoreError> {
        self.write(GROUPS, [(group.id.as_str(), group)], &[])
    }

    pub fn delete_group(&self, id: &str) -> Result<(), StoreError> {
        self.write::<EnrollmentGroup>(GROUPS, [], &[id])
    }

    fn write<'a, T: serde::Serialize + 'a>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        records: impl IntoIterator<Item = (&'a str, &'a T)>,
        deleted: &[&str],
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| err("begin write")(&e))?;
        {
            let mut table = txn.open_table(table).map_err(|e| err("open table")(&e))?;
            for (key, record) in records {
                let bytes = serde_json::to_vec(record).map_err(|e| err("encode")(&e))?;
                table
                    .insert(key, bytes.as_slice())
                    .map_err(|e| err("insert")(&e))?;
            }
            for key in deleted {
                table.remove(*key).map_err(|e| err("remove")(&e))?;
            }
        }
        txn.commit().map_err(|e| err("commit")(&e))
    }
}

fn newer(format: u64) -> StoreError {
    StoreError::Failed(format!(
        "the store has format {format}, written by a newer weir (this one knows {FORMAT})"
    ))
}

/// Every device and group of the store in `path`, read in one read-only transaction
/// without changing the file (an older format is read as it is: devices of format 1 lack
/// twin versions, which nothing read-only needs). The file is closed on return.
pub fn read_only(path: &Path) -> Result<(Vec<Device>, Vec<EnrollmentGroup>), StoreError> {
    let db = Database::builder()
        .open_read_only(path)
        .map_err(|e| open_error(path, " read-only", e))?;
    let txn = db.begin_read().map_err(|e| err("begin read")(&e))?;
    let format = match txn.open_table(META) {
        Ok(meta) => meta
            .get("format")
            .map_err(|e| err("meta table")(&e))?
            .map_or(1, |v| v.value()),
        Err(TableError::TableDoesNotExist(_)) => 1,
        Err(e) => return Err(err("meta table")(&e)),
    };
    if format > FORMAT {
        return Err(newer(format));
    }
    Ok((read_table(&txn, DEVICES)?, read_table(&txn, GROUPS)?))
}

/// The records of `table`, none if the store has no such table (yet).
fn read_table<T: serde::de::DeserializeOwned>(
    txn: &redb::ReadTransaction,
    table: TableDefinition<&str, &[u8]>,
) -> Result<Vec<T>, StoreError> {
    match txn.open_table(table) {
        Ok(table) => read_all(&table),
        Err(TableError::TableDoesNotExist(_)) => Ok(Vec::new()),
        Err(e) => Err(err("open table")(&e)),
    }
}

/// Brings the records of an older store to [`FORMAT`] within `txn` (a new store just
/// gets its format written). A store of a newer format than this weir knows is refused,
/// rather than rewritten into a shape it would lose fields of.
fn migrate(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    let mut meta = txn.open_table(META).map_err(|e| err("meta table")(&e))?;
    let format = meta
        .get("format")
        .map_err(|e| err("meta table")(&e))?
        .map_or(1, |v| v.value());
    if format > FORMAT {
        return Err(newer(format));
    }
    if format < 2 {
        let mut devices = txn.open_table(DEVICES).map_err(|e| err("devices")(&e))?;
        let mut migrated = Vec::new();
        for row in devices.iter().map_err(|e| err("scan")(&e))? {
            let (key, value) = row.map_err(|e| err("scan")(&e))?;
            // A record that does not parse is left as it is: `load` reports and skips it.
            if let Some(record) = with_twin_versions(value.value()) {
                migrated.push((key.value().to_owned(), record));
            }
        }
        for (key, record) in &migrated {
            devices
                .insert(key.as_str(), record.as_slice())
                .map_err(|e| err("migrate")(&e))?;
        }
        if !migrated.is_empty() {
            tracing::info!(
                devices = migrated.len(),
                "registry store migrated: device twins now have versions"
            );
        }
    }
    if format != FORMAT {
        meta.insert("format", FORMAT)
            .map_err(|e| err("meta table")(&e))?;
    }
    Ok(())
}

/// A format 1 device record with `desired_version` and `reported_version` 1 (their
/// first version), or `None` if it is not a JSON object.
fn with_twin_versions(record: &[u8]) -> Option<Vec<u8>> {
    let mut value: serde_json::Value = serde_json::from_slice(record).ok()?;
    let fields = value.as_object_mut()?;
    for name in ["desired_version", "reported_version"] {
        if fields
            .get(name)
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0)
            == 0
        {
            fields.insert(name.into(), 1.into());
        }
    }
    serde_json::to_vec(&value).ok()
}

fn read_all<T: serde::de::DeserializeOwned>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::new();
    for row in table.iter().map_err(|e| err("scan")(&e))? {
        let (key, value) = row.map_err(|e| err("scan")(&e))?;
        match serde_json::from_slice(value.value()) {
            Ok(record) => out.push(record),
            Err(e) => tracing::error!(
                key = key.value(),
                "registry record cannot be read and is skipped: {e}"
            ),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A device record as weir wrote it before twins had versions (format 1).
    const FORMAT_1_DEVICE: &str = r#"{"id":"old-1","status":"enabled","primary_key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","secondary_key":"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=","tags":{"site":"a"},"desired":{"fan":"on"},"reported":{"fw":"1.0"},"created_at":"2026-01-01T00:00:00Z","updated_at":"2026-01-01T00:00:00Z","etag":"00000000000000aa"}"#;

    /// A store as the code before format 2 made it: the two tables, no `meta`.
    fn format_1_store(path: &Path) {
        let db = Database::create(path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut devices = txn.open_table(DEVICES).unwrap();
            devices.insert("old-1", FORMAT_1_DEVICE.as_bytes()).unwrap();
            devices.insert("broken", b"not json".as_slice()).unwrap();
            txn.open_table(GROUPS).unwrap();
        }
        txn.commit().unwrap();
    }

    #[test]
    fn a_format_1_store_is_migrated_in_place_to_twin_versions_1() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.redb");
        format_1_store(&path);

        let store = Store::open(&path).unwrap();
        let (devices, _) = store.load().unwrap();
        assert_eq!(devices.len(), 1, "the unreadable record is still skipped");
        let device = &devices[0];
        assert_eq!((device.desired_version, device.reported_version), (1, 1));
        assert_eq!(device.desired["fan"], "on");
        assert_eq!(device.etag, "00000000000000aa", "nothing else changed");
        drop(store);

        // Written back: the raw record has the versions, and the format is recorded.
        let db = Database::create(&path).unwrap();
        let txn = db.begin_read().unwrap();
        let raw = txn
            .open_table(DEVICES)
            .unwrap()
            .get("old-1")
            .unwrap()
            .unwrap();
        let raw: serde_json::Value = serde_json::from_slice(raw.value()).unwrap();
        assert_eq!(raw["desired_version"], 1);
        assert_eq!(raw["reported_version"], 1);
        let format = txn
            .open_table(META)
            .unwrap()
            .get("format")
            .unwrap()
            .unwrap();
        assert_eq!(format.value(), FORMAT);
    }

    #[test]
    fn a_store_held_open_is_refused_as_locked_and_a_closed_one_is_read_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.redb");
        let store = Store::open(&path).unwrap();
        let device: Device = serde_json::from_str(FORMAT_1_DEVICE).unwrap();
        store.write_devices(&[&device], &[]).unwrap();
        let locked = read_only(&path).expect_err("refused while held");
        assert!(locked.is_locked(), "{locked}");
        assert!(
            locked.to_string().contains(&path.display().to_string()),
            "{locked}"
        );
        drop(store);
        let before = std::fs::read(&path).unwrap();
        let (devices, groups) = read_only(&path).unwrap();
        assert_eq!((devices.len(), groups.len()), (1, 0));
        assert_eq!(devices[0].tags["site"], "a");
        assert_eq!(std::fs::read(&path).unwrap(), before, "nothing written");
        drop(Store::open(&path).unwrap());
    }

    #[test]
    fn a_store_of_a_newer_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.redb");
        drop(Store::open(&path).unwrap());
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert("format", FORMAT + 1)
                .unwrap();
            txn.commit().unwrap();
        }
        let refused = Store::open(&path).err().expect("refused");
        assert!(refused.to_string().contains("newer weir"), "{refused}");
    }
}
