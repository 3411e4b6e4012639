//! Disk buffers the pipeline no longer has a component for.
//!
//! A disk buffer holds events whose sources were told they are safe. When its component
//! leaves the pipeline (removed, renamed, or given a memory buffer) while the buffer still
//! holds some, a start or reload would strand them without a word. So both refuse, naming
//! the buffer and its count, unless the user discards it explicitly (`weir run
//! --discard-buffer ID`, `weir reload --discard-buffer ID`): then the directory is deleted
//! and the count logged. `validate` does no I/O and so cannot tell; this is the check that
//! sees `data_dir`. Empty leftovers are left alone (nothing to lose, and another process
//! might be using a directory by mistake).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::ReloadError;
use crate::buffers;
use crate::config::{ComponentId, TopologyConfig};

/// Disk buffers whose events the user agreed to lose, by component id.
pub type Discard = BTreeSet<ComponentId>;

/// A buffer directory the pipeline no longer has a component for.
pub struct Leftover {
    pub component: ComponentId,
    pub dir: PathBuf,
    /// Unacknowledged events it held when it was checked.
    pub events: u64,
}

/// Before a start: every buffer directory under `data_dir` that `config` has no
/// disk-buffered component for must be empty or discarded; discarded ones are deleted.
/// A discarded id that `config` does use is emptied too: the user asked for a fresh start.
pub async fn check_start(config: &TopologyConfig, discard: &Discard) -> Result<(), ReloadError> {
    let data_dir = &config.globals.data_dir;
    let kept = disk_buffered(config);
    let dirs = buffers::disk_dirs(data_dir).map_err(|err| unreadable(data_dir, err))?;
    for id in discard {
        if !dirs.iter().any(|(name, _)| name == id.as_str()) {
            tracing::info!(component_id = %id, "--discard-buffer: there is no disk buffer of this id; nothing to discard");
        }
    }
    let mut refused = Vec::new();
    for (name, dir) in dirs {
        let component = ComponentId::new(&name);
        if discard.contains(&component) {
            discard_now(&component, &dir, 0).await?;
            continue;
        }
        if kept.contains(&component) {
            continue;
        }
        let events = buffers::disk_pending(&dir).map_err(|err| unreadable(&dir, err))?;
        if events > 0 {
            refused.push(Leftover {
                component,
                dir,
                events,
            });
        }
    }
    refuse(refused)
}

/// Before a reload from `old` to `new`: the disk-buffered components `new` drops must have
/// empty buffers or be discarded. Returns the ones to discard once their instances stop.
pub fn check_reload(
    old: &TopologyConfig,
    new: &TopologyConfig,
    discard: &Discard,
) -> Result<Vec<Leftover>, ReloadError> {
    let data_dir = &old.globals.data_dir;
    let kept = disk_buffered(new);
    let mut refused = Vec::new();
    let mut discarding = Vec::new();
    for component in disk_buffered(old).difference(&kept) {
        let dir = buffers::disk_dir(data_dir, component.as_str());
        // Counted now: a stopped instance may have let go of what it held.
        let events = buffers::disk_pending(&dir).map_err(|err| unreadable(&dir, err))?;
        let leftover = Leftover {
            component: component.clone(),
            dir,
            events,
        };
        match discard.contains(component) {
            true => discarding.push(leftover),
            false if events > 0 => refused.push(leftover),
            false => {}
        }
    }
    if let Some(unknown) = discard
        .iter()
        .find(|id| !discarding.iter().any(|d| &d.component == *id))
    {
        return Err(ReloadError::NotReloadable(format!(
            "`--discard-buffer {unknown}`: this reload does not remove a disk-buffered component `{unknown}`; a buffer the pipeline keeps is never discarded by a reload"
        )));
    }
    refuse(refused)?;
    Ok(discarding)
}

/// Deletes the buffer of `component` (waiting until no instance holds it) and logs what
/// it held: `counted` before, or what was left in it, whichever is more.
pub async fn discard_now(
    component: &ComponentId,
    dir: &Path,
    counted: u64,
) -> Result<(), ReloadError> {
    let left = buffers::discard_disk(dir)
        .await
        .map_err(|err| unreadable(dir, err))?;
    tracing::warn!(
        component_id = %component,
        events = counted.max(left),
        dir = %dir.display(),
        "discarded the disk buffer as --discard-buffer asked; its events are lost"
    );
    Ok(())
}

fn disk_buffered(config: &TopologyConfig) -> BTreeSet<ComponentId> {
    config
        .components
        .values()
        .filter(|c| c.config.disk_buffer())
        .map(|c| c.id.clone())
        .collect()
}

fn refuse(refused: Vec<Leftover>) -> Result<(), ReloadError> {
    if refused.is_empty() {
        return Ok(());
    }
    let lines: Vec<String> = refused
        .iter()
        .map(|l| {
            format!(
                "the disk buffer of `{}` ({}) holds {} events not yet delivered, but the pipeline no longer has a disk-buffered component `{}`",
                l.component,
                l.dir.display(),
                l.events,
                l.component
            )
        })
        .collect();
    let ids: Vec<String> = refused
        .iter()
        .map(|l| format!("--discard-buffer {}", l.component))
        .collect();
    Err(ReloadError::BuffersNotEmpty(format!(
        "{}; put the component back to deliver them, or lose them with `{}`",
        lines.join("; "),
        ids.join(" ")
    )))
}

fn unreadable(path: &Path, err: std::io::Error) -> ReloadError {
    ReloadError::BuffersNotEmpty(format!(
        "cannot read the disk buffers in {}: {err}",
        path.display()
    ))
}
