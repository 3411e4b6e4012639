//! The audit log: one JSON line for every change made through the API (and through
//! `weir tokens` on a stopped weir's data_dir), in `data_dir/audit/`.
//!
//! Each line is written and fsync'd before the answer leaves, so a change a caller was
//! told about is on disk. `audit.jsonl` is the current file; past [`ROTATE_BYTES`] it is
//! renamed `audit-<unix-ms>.jsonl` and a new one is started; the newest [`KEEP_FILES`]
//! rotated files are kept. Lines never hold request bodies, keys or token values.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// The size past which the current file is rotated.
pub const ROTATE_BYTES: u64 = 16 * 1024 * 1024;
/// Rotated files kept besides the current one.
pub const KEEP_FILES: usize = 10;
const CURRENT: &str = "audit.jsonl";

/// One change: who, as which role, on which route and target, how it ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditEvent {
    #[schema(value_type = String, format = DateTime)]
    pub time: Timestamp,
    /// The token's name (or `local:<user>` for `weir tokens` on a data_dir, and
    /// `control-socket` for `weir reload`).
    pub who: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// `METHOD /pattern`, e.g. `PATCH /v1/devices/{id}`.
    pub route: String,
    /// The device, group, alarm or token changed, when the route names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The HTTP status of the answer.
    pub status: u16,
    /// `ok` (2xx), `refused` (403) or `failed` (anything else).
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag_before: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag_after: Option<String>,
    /// The caller's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
}

impl AuditEvent {
    pub fn outcome_of(status: u16) -> &'static str {
        match status {
            200..=299 => "ok",
            403 => "refused",
            _ => "failed",
        }
    }
}

/// The audit files of one data_dir.
pub struct AuditLog {
    dir: PathBuf,
    current: Mutex<Option<File>>,
}

fn io(what: &str, path: &Path, e: std::io::Error) -> String {
    format!("cannot {what} {} (audit log): {e}", path.display())
}

impl AuditLog {
    pub fn new(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join("audit"),
            current: Mutex::new(None),
        }
    }

    /// Appends `event` and fsyncs it; rotates first when the file is full.
    pub fn append(&self, event: &AuditEvent) -> Result<(), String> {
        let mut line = serde_json::to_vec(event).map_err(|e| e.to_string())?;
        line.push(b'\n');
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let path = self.dir.join(CURRENT);
        let full = current
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .is_some_and(|m| m.len() + line.len() as u64 > ROTATE_BYTES);
        if full {
            *current = None;
            self.rotate(&path)?;
        }
        if current.is_none() {
            std::fs::create_dir_all(&self.dir).map_err(|e| io("create", &self.dir, e))?;
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| io("open", &path, e))?;
            if let Some(data_dir) = self.dir.parent() {
                for made in [&self.dir, &path] {
                    crate::tokens::give_to_owner_of(data_dir, made).map_err(|e| e.to_string())?;
                }
            }
            *current = Some(file);
        }
        let file = current.as_mut().ok_or("the audit log is not open")?;
        file.write_all(&line)
            .and_then(|()| file.sync_data())
            .map_err(|e| io("write", &path, e))
    }

    fn rotate(&self, path: &Path) -> Result<(), String> {
        let rotated = self
            .dir
            .join(format!("audit-{}.jsonl", Timestamp::now().as_millisecond()));
        std::fs::rename(path, &rotated).map_err(|e| io("rotate", path, e))?;
        let mut old = self.rotated()?;
        while old.len() > KEEP_FILES {
            let oldest = old.remove(0);
            std::fs::remove_file(&oldest).map_err(|e| io("remove", &oldest, e))?;
        }
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("sync", &self.dir, e))
    }

    /// The rotated files, oldest first.
    fn rotated(&self) -> Result<Vec<PathBuf>, String> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io("list", &self.dir, e)),
        };
        let mut files: Vec<(i64, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                let ms = name.strip_prefix("audit-")?.strip_suffix(".jsonl")?;
                Some((ms.parse().ok()?, entry.path()))
            })
            .collect();
        files.sort();
        Ok(files.into_iter().map(|(_, path)| path).collect())
    }

    /// Events at or after `since`, oldest first, at most `limit`.
    pub fn read_since(&self, since: Timestamp, limit: usize) -> Result<Vec<AuditEvent>, String> {
        let mut files = self.rotated()?;
        files.push(self.dir.join(CURRENT));
        let mut events = Vec::new();
        for file in files {
            let text = match std::fs::read_to_string(&file) {
                Ok(text) => text,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io("read", &file, e)),
            };
            for line in text.lines() {
                // A line a crash cut short is skipped, not fatal.
                if let Ok(event) = serde_json::from_str::<AuditEvent>(line)
                    && event.time >= since
                {
                    events.push(event);
                    if events.len() >= limit {
                        return Ok(events);
                    }
                }
            }
        }
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(who: &str) -> AuditEvent {
        AuditEvent {
            time: Timestamp::now(),
            who: who.into(),
            role: Some("admin".into()),
            route: "POST /v1/devices".into(),
            target: Some("pump-1".into()),
            status: 201,
            outcome: "ok".into(),
            etag_before: None,
            etag_after: Some("e1".into()),
            client: Some("127.0.0.1".into()),
        }
    }

    #[test]
    fn events_are_appended_read_back_since_a_time_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::new(dir.path());
        log.append(&event("a")).unwrap();
        let middle = Timestamp::now();
        log.append(&event("b")).unwrap();
        let log = AuditLog::new(dir.path());
        log.append(&event("c")).unwrap();
        let all = log.read_since(Timestamp::UNIX_EPOCH, 100).unwrap();
        let who: Vec<&str> = all.iter().map(|e| e.who.as_str()).collect();
        assert_eq!(who, ["a", "b", "c"]);
        let later = log.read_since(middle, 100).unwrap();
        assert_eq!(later.len(), 2);
        assert_eq!(log.read_since(Timestamp::UNIX_EPOCH, 1).unwrap().len(), 1);
    }

    #[test]
    fn a_full_file_is_rotated_and_old_files_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::new(dir.path());
        log.append(&event("first")).unwrap();
        // Make the current file look full.
        let current = dir.path().join("audit").join(CURRENT);
        let file = OpenOptions::new().append(true).open(&current).unwrap();
        file.set_len(ROTATE_BYTES).unwrap();
        log.append(&event("second")).unwrap();
        let rotated = log.rotated().unwrap();
        assert_eq!(rotated.len(), 1);
        let text = std::fs::read_to_string(&current).unwrap();
        assert_eq!(text.lines().count(), 1, "the new file holds the new line");
        for n in 0..KEEP_FILES + 2 {
            std::fs::write(dir.path().join(format!("audit/audit-{n}.jsonl")), "").unwrap();
        }
        let file = OpenOptions::new().append(true).open(&current).unwrap();
        file.set_len(ROTATE_BYTES).unwrap();
        log.append(&event("third")).unwrap();
        assert_eq!(log.rotated().unwrap().len(), KEEP_FILES);
    }
}
