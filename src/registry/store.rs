//! The registry on disk: one redb file in `data_dir`, records as JSON.
//!
//! Every change is one write transaction committed with redb's default (immediate)
//! durability, so a change the API acknowledged survives `kill -9`; a bulk import commits in
//! chunks, each all-or-nothing, so a crash leaves whole chunks and a re-run adds the rest.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::device::{Device, EnrollmentGroup};

const DEVICES: TableDefinition<&str, &[u8]> = TableDefinition::new("devices");
const GROUPS: TableDefinition<&str, &[u8]> = TableDefinition::new("enrollment_groups");

/// What the store failed at, in words (the API answers 500 with it).
#[derive(Debug, thiserror::Error)]
#[error("registry store: {0}")]
pub struct StoreError(String);

fn err(context: &str) -> impl Fn(&dyn std::fmt::Display) -> StoreError + '_ {
    move |e| StoreError(format!("{context}: {e}"))
}

pub struct Store {
    db: Database,
}

impl Store {
    /// Opens (or creates) the database file, with its parent directory.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError(format!("cannot create {}: {e}", dir.display())))?;
        }
        let db = Database::create(path)
            .map_err(|e| StoreError(format!("cannot open {}: {e}", path.display())))?;
        let txn = db.begin_write().map_err(|e| err("begin")(&e))?;
        txn.open_table(DEVICES)
            .map_err(|e| err("devices table")(&e))?;
        txn.open_table(GROUPS)
            .map_err(|e| err("groups table")(&e))?;
        txn.commit().map_err(|e| err("commit")(&e))?;
        Ok(Self { db })
    }

    /// Every stored device and group. A record that no longer parses is reported and left
    /// out, so one bad record does not keep the registry from starting.
    pub fn load(&self) -> Result<(Vec<Device>, Vec<EnrollmentGroup>), StoreError> {
        let txn = self.db.begin_read().map_err(|e| err("begin read")(&e))?;
        let devices = read_all(&txn.open_table(DEVICES).map_err(|e| err("devices")(&e))?)?;
        let groups = read_all(&txn.open_table(GROUPS).map_err(|e| err("groups")(&e))?)?;
        Ok((devices, groups))
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
