//! Checkpoint files: writing them atomically, and reading them back at a start.
//!
//! A checkpoint holds the open groups of one window definition, which only an engine of
//! that definition can read (another window type has another group layout). So that a
//! start under a changed definition does not have to drop those windows, each checkpoint
//! also holds what closing all of them early would emit: their results, marked
//! `partial: true`, in a form any engine can hand on.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::WindowEngine;
use crate::aggregators::window::{GroupKey, timestamp};
use crate::event::{Event, EventMeta, Fields};
use crate::telemetry::events::{StateFileCorrupt, WindowsClosedEarly};
use crate::telemetry::{ComponentTelemetry, InternalEvent};

#[derive(Serialize, Deserialize)]
#[serde(bound(serialize = "G: Serialize", deserialize = "G: DeserializeOwned"))]
pub(super) struct Checkpoint<G> {
    pub definition: String,
    pub groups: Vec<(GroupKey, G)>,
    /// The results of `groups` closed early (see the module's comment).
    #[serde(default)]
    pub closing: Vec<Closed>,
}

/// What a start reads first: enough to tell whether this engine can take the groups, and
/// what to emit if it cannot. `closing` is absent from checkpoints of older versions.
#[derive(Deserialize)]
struct Header {
    definition: String,
    closing: Option<Vec<Closed>>,
}

/// A window result closed early, as a checkpoint keeps it.
#[derive(Serialize, Deserialize)]
pub(super) struct Closed {
    device_id: Option<String>,
    /// Event time (the window's end), in milliseconds since the epoch.
    time: i64,
    fields: Fields,
}

impl Closed {
    pub fn of(event: &Event) -> Self {
        Self {
            device_id: event.device_id.as_deref().map(str::to_owned),
            time: event.time.as_millisecond(),
            fields: event.fields().clone(),
        }
    }

    fn into_event(self, component: &Arc<str>) -> Event {
        let meta = Arc::new(EventMeta::received_by(Arc::clone(component)));
        let mut event = Event::new(self.device_id.map(Arc::from), self.fields, meta);
        event.time = timestamp(self.time);
        event
    }
}

/// The periodic checkpoint file of shard `n`: `<id>.json.shard-<n>`.
pub(super) fn shard_path(path: &Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".shard-{n}"));
    PathBuf::from(name)
}

/// Writes a checkpoint atomically: a temp file, fsync, rename.
pub(super) async fn write_checkpoint<G: Serialize>(
    path: &Path,
    checkpoint: &Checkpoint<G>,
) -> anyhow::Result<()> {
    let bytes = serde_json::to_vec(checkpoint)?;
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent).await?;
    }
    // Next to the target, with a name of its own (shards write their files concurrently).
    let mut temp = path.as_os_str().to_owned();
    temp.push(".tmp");
    let temp = PathBuf::from(temp);
    tokio::fs::write(&temp, &bytes).await?;
    tokio::fs::File::open(&temp).await?.sync_all().await?;
    tokio::fs::rename(&temp, path).await?;
    Ok(())
}

/// What a start found in the checkpoint files that its engines could not take.
#[derive(Default)]
pub(super) struct Superseded {
    /// The windows of another definition, closed early: to be emitted.
    pub closed: Vec<Event>,
    /// Their files, removed once `closed` is on its way.
    pub files: Vec<PathBuf>,
}

/// The checkpoint files of `path`: after a graceful stop there is one; after a crash, the
/// periodic files of each shard.
fn files_of(path: &Path) -> Vec<PathBuf> {
    let mut files = vec![path.to_path_buf()];
    if let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) {
        let prefix = format!("{name}.shard-");
        if let Ok(entries) = std::fs::read_dir(dir) {
            files.extend(
                entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| {
                        p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with(&prefix) && !n.ends_with(".tmp"))
                    }),
            );
        }
    }
    files
}

/// Spreads the checkpointed groups over the shards, then removes the files so a crash
/// later cannot replay them twice. The windows of a checkpoint made under another
/// definition come back closed early, with their files, for the caller to emit and then
/// remove.
pub(super) fn restore<E: WindowEngine>(
    engines: &mut [E],
    path: &Path,
    telemetry: &ComponentTelemetry,
) -> anyhow::Result<Superseded> {
    let id = telemetry.component_id();
    let component: Arc<str> = Arc::from(id);
    let definition = engines[0].definition();
    let shards = engines.len();
    let mut parts: Vec<Vec<(GroupKey, E::Group)>> = (0..shards).map(|_| Vec::new()).collect();
    let mut restored = 0;
    let mut superseded = Superseded::default();
    for file in files_of(path) {
        let bytes = match std::fs::read(&file) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => anyhow::bail!("cannot read checkpoint {}: {err}", file.display()),
        };
        let read = serde_json::from_slice::<Header>(&bytes).and_then(|header| {
            if header.definition == definition {
                serde_json::from_slice::<Checkpoint<E::Group>>(&bytes).map(Ok)
            } else {
                Ok(Err(header))
            }
        });
        match read {
            Ok(Ok(checkpoint)) => {
                restored += checkpoint.groups.len();
                for (key, group) in checkpoint.groups {
                    parts[super::shard_of(&key, shards)].push((key, group));
                }
                std::fs::remove_file(&file)?;
            }
            Ok(Err(Header {
                closing: Some(closing),
                ..
            })) => {
                superseded
                    .closed
                    .extend(closing.into_iter().map(|c| c.into_event(&component)));
                superseded.files.push(file);
            }
            Ok(Err(Header { closing: None, .. })) => {
                // Written by a version that did not keep the closed results: nothing here
                // can read its windows, so it is kept for whoever can.
                let why = "made under another window definition by an older version, which did not keep the windows' results";
                move_aside(&file, "superseded", why, telemetry)?;
            }
            Err(err) => move_aside(&file, "corrupt", &err.to_string(), telemetry)?,
        }
    }
    for (engine, part) in engines.iter_mut().zip(parts) {
        engine.import(part);
    }
    if restored > 0 {
        tracing::info!(component_id = %id, groups = restored, "resumed open windows from the checkpoint");
    }
    if !superseded.files.is_empty() {
        WindowsClosedEarly {
            count: superseded.closed.len(),
            why: "the window definition changed since the checkpoint this start resumes",
        }
        .emit(telemetry);
    }
    Ok(superseded)
}

/// Moves a checkpoint this start cannot use to `<file>.<suffix>`, out of the next start's
/// way, and reports it as corrupt state.
fn move_aside(
    file: &Path,
    suffix: &str,
    error: &str,
    telemetry: &ComponentTelemetry,
) -> anyhow::Result<()> {
    let mut aside = file.as_os_str().to_owned();
    aside.push(format!(".{suffix}"));
    let aside = PathBuf::from(aside);
    std::fs::rename(file, &aside)?;
    StateFileCorrupt {
        file,
        moved_to: &aside,
        error,
        consequence: "starting without its open windows",
    }
    .emit(telemetry);
    Ok(())
}
