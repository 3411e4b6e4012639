//! The buffer in front of a sink: where its events wait while the destination is slow, and
//! what happens when it is full (`when_full`). Part of the engine, so every component that
//! consumes events at its own pace (sinks, and actions) reads through the same one.
//!
//! `buffer: { type: memory }` is a bounded queue of events ([`memory`]); `buffer: { type:
//! disk }` is a log of segment files in `data_dir/buffers/<id>/` ([`disk`]) that
//! acknowledges events upstream once they are durably appended, so a source's
//! acknowledgement no longer waits for the sink's batching. Which one a sink gets when its
//! `buffer:` names no type is the sink type's choice (`delta_lake`: disk; the others:
//! memory). Both sit behind [`Buffer`], so a sink reads the same way from either; a disk
//! buffer also says where each [`Chunk`] sits in its log ([`Position`]), so a sink can
//! record that in its destination and skip what it already holds after a crash.

mod chunk;
mod disk;
mod memory;

pub use chunk::{Chunk, Incarnation, Position};

use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::{ByteSize, FieldProblem};
use crate::telemetry::ComponentTelemetry;
use crate::topology::channel::InputReceiver;

/// Where the disk buffer of the component `id` lives: `data_dir/buffers/<id>/`.
pub fn disk_dir(data_dir: &Path, id: &str) -> PathBuf {
    data_dir.join("buffers").join(id)
}

/// The disk buffer directories under `data_dir`, by the id of the component they belong
/// (or belonged) to.
pub fn disk_dirs(data_dir: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let root = data_dir.join("buffers");
    let entries = match std::fs::read_dir(&root) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    let mut dirs = Vec::new();
    for entry in entries {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        // `<id>.new` is a directory being created; `<id>.lock` is a lock file.
        if entry.file_type()?.is_dir() && !name.ends_with(".new") {
            dirs.push((name, entry.path()));
        }
    }
    dirs.sort();
    Ok(dirs)
}

/// Events a disk buffer directory holds that its consumer has not acknowledged (see
/// [`disk::leftover`]).
pub fn disk_pending(dir: &Path) -> std::io::Result<u64> {
    disk::leftover::pending(dir)
}

/// Deletes a disk buffer directory once no buffer holds it; returns the events it held.
pub async fn discard_disk(dir: &Path) -> std::io::Result<u64> {
    disk::leftover::discard(dir).await
}

/// Where a sink's events wait, how much of them, and what to do when it is full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BufferConfig {
    /// `memory` (lost on a crash; the source waits for the sink's commit) or `disk`
    /// (segment files in `data_dir/buffers/<id>/`; the source waits only for the
    /// group-committed append, a few milliseconds). Default: `disk` for `delta_lake`
    /// sinks and for actions (their outbox), `memory` for the other sinks.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<BufferType>,
    /// Memory buffers: events held before `when_full` applies (default 10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_events: Option<usize>,
    /// Disk buffers: bytes on disk before `when_full` applies (default 1GiB: about seven
    /// million readings of ~150 bytes, minutes of a busy site or hours of a quiet one while
    /// the destination is down, and small next to a gateway's disk).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size: Option<ByteSize>,
    #[serde(default)]
    pub when_full: WhenFull,
}

/// Which buffer a sink has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BufferType {
    /// A bounded queue in memory.
    Memory,
    /// A write-ahead log on disk, group-committed.
    Disk,
}

const DEFAULT_MAX_EVENTS: usize = 10_000;
const DEFAULT_MAX_SIZE: ByteSize = ByteSize::mib(1024);
/// Smaller than this, segments would be tiny and trimming coarse.
const MIN_MAX_SIZE: ByteSize = ByteSize::mib(1);

impl BufferConfig {
    /// The type written, else the sink type's `default`.
    pub fn kind_or(&self, default: BufferType) -> BufferType {
        self.kind.unwrap_or(default)
    }

    /// Problems of the options, for a sink whose buffer is `default` unless a type is written.
    pub fn check(&self, default: BufferType) -> Vec<FieldProblem> {
        let mut problems = Vec::new();
        match self.kind_or(default) {
            BufferType::Memory => {
                if self.max_events == Some(0) {
                    problems.push(FieldProblem::at(
                        ["buffer", "max_events"],
                        "expected at least one event",
                    ));
                }
                if self.max_size.is_some() {
                    problems.push(FieldProblem::at(
                        ["buffer", "max_size"],
                        "only a disk buffer has `max_size`; a memory buffer is bounded by `max_events`",
                    ));
                }
            }
            BufferType::Disk => {
                if self.max_events.is_some() {
                    problems.push(FieldProblem::at(
                        ["buffer", "max_events"],
                        "only a memory buffer has `max_events`; a disk buffer is bounded by `max_size`",
                    ));
                }
                if self.max_size.is_some_and(|size| size < MIN_MAX_SIZE) {
                    problems.push(FieldProblem::at(
                        ["buffer", "max_size"],
                        format!("expected at least {MIN_MAX_SIZE}"),
                    ));
                }
                if self.when_full == WhenFull::DropOldest {
                    problems.push(FieldProblem::at(
                        ["buffer", "when_full"],
                        "`drop_oldest` is for memory buffers; a disk buffer supports `block` or `drop_newest`",
                    ));
                }
            }
        }
        problems
    }

    /// Whether events wait on disk (and are acknowledged upstream once appended there).
    pub fn is_disk(&self, default: BufferType) -> bool {
        self.kind_or(default) == BufferType::Disk
    }
}

/// What a full buffer does with the next events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Stop reading: backpressure reaches the sources, nothing is lost.
    #[default]
    Block,
    /// Drop the incoming events (counted).
    DropNewest,
    /// Drop the oldest held events to make room (counted; memory buffers only).
    DropOldest,
}

/// The consuming end of a buffer: what a sink (or action) reads its input from.
pub struct Buffer {
    inner: Inner,
}

enum Inner {
    Memory(memory::MemoryBuffer),
    Disk(disk::DiskBuffer),
}

impl Buffer {
    /// Starts pumping `input` into a buffer shaped by `config` (of type `default` unless
    /// it names one); a disk buffer lives in `dir` (`SinkContext::buffer_dir`).
    pub fn new(
        input: InputReceiver,
        config: BufferConfig,
        default: BufferType,
        telemetry: ComponentTelemetry,
        dir: PathBuf,
    ) -> Self {
        let inner = match config.kind_or(default) {
            BufferType::Memory => Inner::Memory(memory::MemoryBuffer::new(
                input,
                config.max_events.unwrap_or(DEFAULT_MAX_EVENTS),
                config.when_full,
                telemetry,
            )),
            BufferType::Disk => Inner::Disk(disk::DiskBuffer::new(
                input,
                disk::Options {
                    dir,
                    max_size: config.max_size.unwrap_or(DEFAULT_MAX_SIZE).get(),
                    drop_newest: config.when_full == WhenFull::DropNewest,
                },
                telemetry,
            )),
        };
        Self { inner }
    }

    /// Up to `max` events, waiting until there is at least one; `None` once the input has
    /// closed and everything was handed out. Cancel-safe: events are only taken when
    /// returned. Dropping the events acknowledges them (a disk buffer then trims them).
    ///
    /// A disk buffer hands records out in the order of its log, and a chunk that failed
    /// (a delivery reported `Failed`) again before any record after it, so a consumer that
    /// commits what it was handed in order covers a gapless run of sequence numbers.
    pub async fn next(&mut self, max: usize) -> Option<Chunk> {
        match &mut self.inner {
            Inner::Memory(buffer) => buffer.next(max).await.map(|events| Chunk {
                events,
                position: None,
            }),
            Inner::Disk(buffer) => buffer.next(max).await,
        }
    }

    /// Events held right now (a disk buffer: appended and not yet acknowledged).
    pub fn len(&self) -> usize {
        match &self.inner {
            Inner::Memory(buffer) => buffer.len(),
            Inner::Disk(buffer) => buffer.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::{ComponentId, ComponentKind};
    use crate::event::{Event, EventBatch, EventMeta, Fields};
    use crate::telemetry::Telemetry;

    pub fn telemetry() -> ComponentTelemetry {
        Telemetry::new().component(&ComponentId::new("s"), ComponentKind::Sink, "test")
    }

    pub fn batch(range: std::ops::Range<i64>) -> EventBatch {
        EventBatch::new(
            range
                .map(|i| {
                    let mut fields = Fields::new();
                    fields.insert("i".into(), serde_json::json!(i));
                    Event::new(None, fields, Arc::new(EventMeta::received_by("t".into())))
                })
                .collect(),
        )
    }

    pub fn ids(events: &[Event]) -> Vec<i64> {
        events
            .iter()
            .filter_map(|e| e.get("i").and_then(|v| v.as_i64()))
            .collect()
    }

    /// Polls `check` every 20 ms for up to 5 s.
    pub async fn eventually(mut check: impl FnMut() -> bool) -> bool {
        for _ in 0..250 {
            if check() {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        check()
    }

    fn parse(yaml: &str) -> BufferConfig {
        serde_json::from_value(serde_json::from_str(yaml).unwrap()).unwrap()
    }

    #[test]
    fn without_a_type_the_sink_types_default_applies() {
        let config = parse("{}");
        assert_eq!(config, BufferConfig::default());
        assert!(!config.is_disk(BufferType::Memory));
        assert!(config.is_disk(BufferType::Disk));
        assert!(config.check(BufferType::Memory).is_empty());
        let sized = parse(r#"{"max_size":"8GiB"}"#);
        assert!(sized.check(BufferType::Disk).is_empty());
        assert_eq!(sized.check(BufferType::Memory).len(), 1);
        let memory = parse(r#"{"type":"memory"}"#);
        assert!(!memory.is_disk(BufferType::Disk), "a written type wins");
    }

    #[test]
    fn options_of_the_other_type_are_named() {
        let paths = |json: &str| -> Vec<String> {
            parse(json)
                .check(BufferType::Memory)
                .into_iter()
                .map(|p| format!("{:?}", p.path))
                .collect()
        };
        assert_eq!(
            paths(r#"{"type":"disk","max_events":5,"when_full":"drop_oldest"}"#),
            vec![
                format!("{:?}", FieldProblem::at(["buffer", "max_events"], "").path),
                format!("{:?}", FieldProblem::at(["buffer", "when_full"], "").path),
            ]
        );
        assert_eq!(
            paths(r#"{"max_size":"1GiB"}"#),
            vec![format!(
                "{:?}",
                FieldProblem::at(["buffer", "max_size"], "").path
            )]
        );
        assert_eq!(paths(r#"{"type":"disk","max_size":"10KiB"}"#).len(), 1);
        assert!(paths(r#"{"type":"disk","max_size":"8GiB","when_full":"drop_newest"}"#).is_empty());
        assert_eq!(paths(r#"{"max_events":0}"#).len(), 1);
    }
}
