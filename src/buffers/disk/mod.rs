//! The disk buffer: a write-ahead log of a sink's events in `data_dir/buffers/<id>/`.
//!
//! Three tasks share one [`State`]: the pump ([`writer`]) appends what arrives and
//! group-commits it, then releases the incoming events (their sources hear "committed");
//! the sink's `next` ([`reader`]) hands out durable records with a buffer-local delivery
//! per chunk, and says where the chunk sits (the incarnation and its first sequence
//! number); the acknowledger ([`ack`]) collects those deliveries' outcomes, persists the
//! ack position and deletes segments every record of which is acknowledged. A failed chunk
//! is handed out again, before any record after it. A start ([`recover`]) hands the sink
//! everything not acknowledged.
//!
//! ```text
//! data_dir/buffers/<id>/incarnation              made with the directory, never changed
//!                       ack                      the ack position (atomic rewrite)
//!                       00000000000000000000.seg segments (see format/)
//! data_dir/buffers/<id>.lock                     held while a buffer runs (lock.rs)
//! ```

mod ack;
mod format;
pub mod leftover;
mod lock;
mod reader;
mod recover;
mod segment;
mod writer;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::Notify;

use super::{Chunk, Incarnation};
use crate::telemetry::events::BufferIoFailed;
use crate::telemetry::{BufferCapacity, ComponentTelemetry, InternalEvent, SinkBufferMetrics};
use crate::topology::channel::InputReceiver;

/// How a disk buffer is shaped.
pub struct Options {
    pub dir: PathBuf,
    pub max_size: u64,
    pub drop_newest: bool,
}

/// A place in the log: a segment (by its first sequence number) and a byte offset in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadPos {
    pub segment: u64,
    pub offset: u64,
}

/// One segment as the running buffer knows it: its durable records and bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    pub first_seq: u64,
    pub end_seq: u64,
    pub len: u64,
}

/// What the pump, the reader and the acknowledger share.
pub struct Shared {
    state: Mutex<State>,
    /// To the reader: records became durable, a chunk failed, or the input closed.
    filled: Notify,
    /// To the pump: segments were deleted.
    freed: Notify,
    /// To the acknowledger: a chunk was handed out, or the buffer was dropped.
    acks: Notify,
    /// Held while the ack file is written (by the acknowledger or the final drop).
    persisting: Mutex<()>,
    dir: PathBuf,
    metrics: SinkBufferMetrics,
    telemetry: ComponentTelemetry,
}

pub struct State {
    /// Recovery has finished: the directory's incarnation.
    incarnation: Option<Incarnation>,
    segments: VecDeque<SegmentInfo>,
    /// One past the last durable record.
    durable_seq: u64,
    /// Bytes of all segments.
    bytes: u64,
    /// Where the reader starts.
    start: ReadPos,
    acks: ack::AckTracker,
    /// The input closed and everything it brought is durable.
    input_done: bool,
    /// The sink dropped its buffer.
    dropped: bool,
    /// The directory, held until the pump, the reader and the acknowledger are all gone.
    _lock: Option<Arc<lock::DirLock>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Collects chunk outcomes; ready once at least one arrived.
    fn poll_outcomes(&self, cx: &mut Context<'_>) -> Poll<()> {
        let resolved = self.lock().acks.resolve(Some(cx));
        self.note(&resolved)
    }

    fn note(&self, resolved: &ack::Resolved) -> Poll<()> {
        self.metrics.events.dec_by(resolved.committed as i64);
        if resolved.failed {
            self.filled.notify_one();
        }
        match resolved.committed > 0 || resolved.failed {
            true => Poll::Ready(()),
            false => Poll::Pending,
        }
    }
}

/// The sink's end of its disk buffer.
pub struct DiskBuffer {
    shared: Arc<Shared>,
    reader: reader::Reader,
    pump: tokio::task::JoinHandle<()>,
}

impl DiskBuffer {
    /// Opens (or creates) the buffer in `options.dir` once no one else holds it, and starts
    /// pumping `input` into it.
    pub fn new(input: InputReceiver, options: Options, telemetry: ComponentTelemetry) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                incarnation: None,
                segments: VecDeque::new(),
                durable_seq: 0,
                bytes: 0,
                start: ReadPos {
                    segment: 0,
                    offset: 0,
                },
                acks: ack::AckTracker::new(0),
                input_done: false,
                dropped: false,
                _lock: None,
            }),
            filled: Notify::new(),
            freed: Notify::new(),
            acks: Notify::new(),
            persisting: Mutex::new(()),
            dir: options.dir.clone(),
            metrics: telemetry.sink_buffer("disk", BufferCapacity::Bytes(options.max_size)),
            telemetry,
        });
        let pump = tokio::spawn({
            let shared = Arc::clone(&shared);
            async move {
                let Some(writer) = open(&shared, &options).await else {
                    return;
                };
                tokio::spawn(ack::run(Arc::clone(&shared)));
                writer::pump(input, shared, writer, options.max_size, options.drop_newest).await;
            }
        });
        Self {
            reader: reader::Reader::new(Arc::clone(&shared)),
            shared,
            pump,
        }
    }

    pub async fn next(&mut self, max: usize) -> Option<Chunk> {
        self.reader.next(max).await
    }

    /// Records appended and not yet acknowledged.
    pub fn len(&self) -> usize {
        self.shared.metrics.events.get().max(0) as usize
    }
}

impl Drop for DiskBuffer {
    fn drop(&mut self) {
        // Normally the pump has finished (the input closed); a sink that stops early stops
        // it, and what it had not made durable fails its deliveries.
        self.pump.abort();
        let resolved = {
            let mut state = self.shared.lock();
            state.dropped = true;
            state.acks.resolve(None)
        };
        let _ = self.shared.note(&resolved);
        // Record what the sink committed before it let go, even if the runtime is about to
        // stop the acknowledger; it finishes the rest (copies still travelling) and exits.
        ack::persist_and_trim(&self.shared);
        self.shared.acks.notify_one();
    }
}

/// Sleeps until `at`; forever without one.
async fn sleep_until(at: Option<std::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Waits for the directory, recovers it, and publishes what it holds; `None` if the buffer
/// was dropped meanwhile. Retries (with an error log) while the disk refuses.
async fn open(shared: &Arc<Shared>, options: &Options) -> Option<writer::Writer> {
    let lock = loop {
        let busy = |message: &str| BufferIoFailed { message }.emit(&shared.telemetry);
        match lock::acquire(&options.dir, busy).await {
            Ok(lock) => break Arc::new(lock),
            Err(err) => {
                BufferIoFailed {
                    message: &format!("cannot lock {}: {err}; trying again", options.dir.display()),
                }
                .emit(&shared.telemetry);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let recovered = loop {
        let (dir, metrics, telemetry) = (
            options.dir.clone(),
            shared.metrics.clone(),
            shared.telemetry.clone(),
        );
        // The recovery holds the directory too: if the buffer is dropped meanwhile, the
        // next holder must not start before this has finished.
        let held = Arc::clone(&lock);
        let recover = move || {
            let recovered = recover::open(&dir, &metrics, &telemetry);
            drop(held);
            recovered
        };
        match tokio::task::spawn_blocking(recover).await {
            Ok(Ok(recovered)) => break recovered,
            Ok(Err(err)) => {
                BufferIoFailed {
                    message: &format!("cannot open {}: {err}; trying again", options.dir.display()),
                }
                .emit(&shared.telemetry);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(_) => return None,
        }
    };
    tracing::info!(
        component_id = shared.telemetry.component_id(),
        incarnation = recovered.incarnation,
        events = recovered.events,
        bytes = recovered.bytes,
        "disk buffer open; handing the sink what it had not acknowledged"
    );
    let segment_size = (options.max_size / 8).clamp(64 << 10, 64 << 20);
    let writer = writer::Writer::new(
        options.dir.clone(),
        recovered.next_seq,
        segment_size,
        Arc::clone(&lock),
    );
    let mut state = shared.lock();
    state._lock = Some(lock);
    state.segments = recovered.segments;
    state.bytes = recovered.bytes;
    state.durable_seq = recovered.next_seq;
    state.start = recovered.start;
    state.acks = ack::AckTracker::new(recovered.position);
    state.acks.skip_to(recovered.start_seq);
    state.incarnation = Some(Incarnation::new(&recovered.incarnation));
    shared.metrics.events.set(recovered.events as i64);
    shared.metrics.byte_size.set(state.bytes as i64);
    drop(state);
    shared.filled.notify_one();
    Some(writer)
}
