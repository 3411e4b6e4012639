//! A registry loaded from a file of devices (`registry: { snapshot: FILE }`, a file
//! `weir devices export` wrote; see [`super::rows`]): held in memory, never written,
//! for a batch run that must not open the live daemon's store.
//!
//! The file must be whole: a row that is not a device, or an id given twice, fails the
//! load with the file and line, rather than leaving devices out of what `enrich` sees.
//! A row without keys gets random ones (as an import does), so a device of a snapshot
//! can never authenticate with an empty key.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use jiff::Timestamp;

use super::rows::{self, Format};
use super::{Backing, Device, DeviceSpec, Registry};

/// Why a snapshot could not be loaded, naming the file (and the line).
#[derive(Debug, thiserror::Error)]
#[error("registry snapshot {0}")]
pub struct SnapshotError(String);

impl Registry {
    /// The read-only registry of the devices in `file` (NDJSON, or CSV when its name
    /// ends in `.csv`).
    pub fn from_snapshot(file: &Path) -> Result<Arc<Self>, SnapshotError> {
        let devices = load(file)?;
        let registry = Self::holding(file, Backing::ReadOnly, devices, Vec::new());
        tracing::info!(path = %file.display(), devices = registry.len(), "device registry loaded from a snapshot (read-only)");
        Ok(Arc::new(registry))
    }
}

fn load(file: &Path) -> Result<Vec<Device>, SnapshotError> {
    let rows = rows::read(file, Format::of(file)).map_err(SnapshotError)?;
    let at =
        |line: usize, reason: String| SnapshotError(format!("{}:{line}: {reason}", file.display()));
    let now = Timestamp::now();
    let mut lines: HashMap<String, usize> = HashMap::with_capacity(rows.len());
    let mut devices = Vec::with_capacity(rows.len());
    for (line, row) in rows {
        let spec: DeviceSpec = row
            .and_then(|value| serde_json::from_value(value).map_err(|e| e.to_string()))
            .map_err(|reason| at(line, reason))?;
        spec.check().map_err(|reason| at(line, reason))?;
        if let Some(first) = lines.insert(spec.id.clone(), line) {
            return Err(at(
                line,
                format!("device `{}` is also on line {first}", spec.id),
            ));
        }
        devices.push(Device::new(spec, now));
    }
    Ok(devices)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{RegistryError, Status};
    use std::path::PathBuf;

    fn snapshot(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(name);
        std::fs::write(&file, text).unwrap();
        (dir, file)
    }

    fn refused(name: &str, text: &str) -> (String, PathBuf) {
        let (_dir, file) = snapshot(name, text);
        let error = Registry::from_snapshot(&file).err().expect("refused");
        (error.to_string(), file)
    }

    #[test]
    fn a_snapshot_holds_its_devices_with_their_tags_status_and_twins() {
        let (_dir, file) = snapshot(
            "fleet.ndjson",
            "{\"id\":\"pump-1\",\"status\":\"disabled\",\"tags\":{\"site\":\"north\",\"max_temp\":95},\"desired\":{\"fan\":\"on\"}}\n\n{\"id\":\"pump-2\"}\n",
        );
        let registry = Registry::from_snapshot(&file).unwrap();
        assert_eq!(registry.len(), 2);
        let pump = registry.lookup("pump-1").unwrap();
        assert_eq!(pump.device.status, Status::Disabled);
        assert_eq!(pump.enrichment["site"], "north");
        assert_eq!(pump.enrichment["max_temp"], 95);
        assert_eq!(pump.enrichment["desired"]["fan"], "on");
        assert_eq!(pump.primary.len(), 32, "a random key, never an empty one");
        assert!(registry.is_read_only());
    }

    #[test]
    fn a_csv_snapshot_is_read_as_an_import_reads_it() {
        let (_dir, file) = snapshot(
            "fleet.csv",
            "id,status,tags\npump-1,enabled,\"{\"\"site\"\":\"\"north\"\"}\"\n",
        );
        let registry = Registry::from_snapshot(&file).unwrap();
        assert_eq!(
            registry.lookup("pump-1").unwrap().enrichment["site"],
            "north"
        );
    }

    #[test]
    fn every_change_to_a_snapshot_is_refused_naming_the_file() {
        let (_dir, file) = snapshot("fleet.ndjson", "{\"id\":\"pump-1\"}\n");
        let registry = Registry::from_snapshot(&file).unwrap();
        let refusals = [
            registry.set_status("pump-1", Status::Disabled, None).err(),
            registry.delete("pump-1", None).err(),
            registry
                .patch_twin(
                    "pump-1",
                    crate::registry::twin::Side::Desired,
                    serde_json::from_str("{\"fan\":\"off\"}").unwrap(),
                    None,
                )
                .err(),
            registry
                .create(serde_json::from_str("{\"id\":\"pump-2\"}").unwrap())
                .err(),
            registry
                .import(vec![serde_json::from_str("{\"id\":\"pump-3\"}").unwrap()])
                .err(),
            registry
                .create_group(serde_json::from_str("{\"id\":\"pumps\"}").unwrap())
                .err(),
        ];
        for refusal in refusals {
            let refusal = refusal.expect("refused");
            assert!(matches!(refusal, RegistryError::ReadOnly(_)), "{refusal}");
            assert!(refusal.to_string().contains("fleet.ndjson"), "{refusal}");
        }
        // Nothing changed in memory either.
        assert_eq!(registry.len(), 1);
        assert_eq!(
            registry.lookup("pump-1").unwrap().device.status,
            Status::Enabled
        );
        assert!(registry.groups().is_empty());
        // Activity seen at a gate is kept in memory; there is nothing to write it to.
        registry.admit("pump-1", false).unwrap();
        assert!(registry.flush_activity().is_err());
    }

    #[test]
    fn a_bad_line_fails_the_load_naming_the_file_and_the_line() {
        let (error, file) = refused("fleet.ndjson", "{\"id\":\"a\"}\n{\"id\":\"b\",\n");
        assert!(
            error.contains(&format!("{}:2: not JSON", file.display())),
            "{error}"
        );
        let (error, _) = refused("fleet.ndjson", "{\"id\":\"a\"}\n\n[1,2]\n");
        assert!(error.contains(":3: expected a JSON object"), "{error}");
        let (error, _) = refused("fleet.ndjson", "{\"id\":\"a\",\"etag\":\"x\"}\n");
        assert!(error.contains(":1: unknown field `etag`"), "{error}");
        let (error, _) = refused("fleet.ndjson", "{\"tags\":{}}\n");
        assert!(error.contains(":1: missing field `id`"), "{error}");
        let (error, _) = refused("fleet.ndjson", "{\"id\":\"a b\"}\n");
        assert!(error.contains(":1: id `a b`"), "{error}");
        let (error, _) = refused("fleet.ndjson", "{\"id\":\"a\",\"primary_key\":\"short\"}\n");
        assert!(
            error.contains(":1: `primary_key` must be Base64"),
            "{error}"
        );
        let (error, _) = refused(
            "fleet.ndjson",
            "{\"id\":\"a\"}\n{\"id\":\"b\"}\n{\"id\":\"a\"}\n",
        );
        assert!(
            error.contains(":3: device `a` is also on line 1"),
            "{error}"
        );
        let (error, _) = refused("fleet.csv", "id,tags\na,{}\nb,not json\n");
        assert!(
            error.contains("fleet.csv:3: `tags` is not a JSON object"),
            "{error}"
        );
        let (error, _) = refused("fleet.csv", "name,site\na,x\n");
        assert!(
            error.contains("fleet.csv:1: the CSV header has no `id` column"),
            "{error}"
        );
    }

    #[test]
    fn a_missing_snapshot_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gone.ndjson");
        let error = Registry::from_snapshot(&file)
            .err()
            .expect("refused")
            .to_string();
        assert!(
            error.contains(&format!("cannot read {}", file.display())),
            "{error}"
        );
    }
}
