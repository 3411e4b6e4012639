//! Appending: the pump that moves the sink's input into the log, with group commit.
//!
//! The pump encodes each incoming batch into frames and gathers them into the next group
//! while the previous group's append and `fdatasync` run on a blocking thread; when that
//! fsync returns, the whole next group goes in one write and one fsync. One fsync thus
//! covers everything that arrived during the last one (a few milliseconds on this kind of
//! disk), so latency stays one fsync and throughput grows with load. Only after its fsync
//! does the pump drop a group's events, which releases their deliveries: the source's
//! acknowledgement means "durable in the buffer".
//!
//! A full buffer (`max_size`) stops the pump reading its input (`block`: backpressure) or
//! drops the incoming events, counted (`drop_newest`). A failed write (a full disk, an I/O
//! error) keeps the group, logs, and tries again with backoff: the sources feel
//! backpressure, nothing is lost.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use super::format::{Encoder, HEADER_LEN};
use super::lock::DirLock;
use super::{SegmentInfo, Shared, segment};
use crate::event::{Event, EventBatch};
use crate::telemetry::InternalEvent;
use crate::telemetry::events::{BufferDiscarded, BufferIoFailed};
use crate::topology::channel::InputReceiver;

/// The next group stops growing (and the pump stops reading) at this many bytes while the
/// previous one is being written.
const GROUP_MAX: usize = 8 << 20;

/// The blocking side: the segment being appended to.
pub struct Writer {
    dir: PathBuf,
    file: Option<File>,
    /// First sequence number of the open segment.
    segment: u64,
    /// Its durable length.
    len: u64,
    next_seq: u64,
    segment_size: u64,
    _lock: Arc<DirLock>,
}

/// What one append made durable.
#[derive(Debug, Clone, Copy)]
pub struct Appended {
    pub segment: u64,
    pub new_segment: bool,
    /// The segment's durable length now.
    pub len: u64,
    pub end_seq: u64,
    /// Bytes the files grew by.
    pub added: u64,
}

impl Writer {
    /// A writer that starts a new segment at `next_seq` with its first append.
    pub fn new(dir: PathBuf, next_seq: u64, segment_size: u64, lock: Arc<DirLock>) -> Self {
        Self {
            dir,
            file: None,
            segment: next_seq,
            len: 0,
            next_seq,
            segment_size,
            _lock: lock,
        }
    }

    /// Deletes the segment `first_seq`, every record of which the caller knows is
    /// acknowledged; if it is the one being appended to, the next append starts a new one.
    /// After a failed append on a full disk that is what makes room: the acknowledger
    /// never deletes the last segment, which the writer may be appending to.
    pub fn discard(&mut self, first_seq: u64) -> std::io::Result<u64> {
        if self.segment == first_seq {
            self.file = None;
            self.len = 0;
        }
        match std::fs::remove_file(segment::path(&self.dir, first_seq)) {
            Ok(()) => Ok(first_seq),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(first_seq),
            Err(err) => Err(err),
        }
    }

    /// Appends `records` frames and makes them durable (one write, one fdatasync).
    pub fn append(&mut self, bytes: &[u8], records: u64) -> std::io::Result<Appended> {
        let mut added = 0;
        let mut new_segment = false;
        let header = HEADER_LEN as u64;
        if self.file.is_none()
            || (self.len > header && self.len + bytes.len() as u64 > self.segment_size)
        {
            self.file = None;
            self.file = Some(segment::create(&self.dir, self.next_seq)?);
            self.segment = self.next_seq;
            self.len = header;
            added += header;
            new_segment = true;
        }
        let Some(file) = self.file.as_mut() else {
            return Err(std::io::Error::other("no open segment"));
        };
        if let Err(err) = file.write_all(bytes).and_then(|()| file.sync_data()) {
            // Cut back what may have reached the file; the retry starts a new segment, so
            // nothing is appended after pages whose fsync failed.
            let _ = file.set_len(self.len);
            self.file = None;
            return Err(err);
        }
        self.len += bytes.len() as u64;
        self.next_seq += records;
        Ok(Appended {
            segment: self.segment,
            new_segment,
            len: self.len,
            end_seq: self.next_seq,
            added: added + bytes.len() as u64,
        })
    }
}

/// Encoded frames and the events they hold; a group not marked durable fails its events'
/// deliveries when dropped (the pump was stopped, the write task died), so no source hears
/// "committed" for what is not on disk.
#[derive(Default)]
struct Group {
    bytes: Vec<u8>,
    events: Vec<Event>,
    durable: bool,
}

impl Group {
    fn records(&self) -> u64 {
        self.events.len() as u64
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if !self.durable {
            for event in &self.events {
                event.fail_delivery();
            }
        }
    }
}

/// One batch, encoded: its frames and where each ends.
struct Encoded {
    group: Group,
    ends: Vec<usize>,
}

/// Bytes reserved per event before encoding a batch (a reading of a few fields is ~90).
const FRAME_GUESS: usize = 128;

fn encode(encoder: &mut Encoder, batch: EventBatch) -> Encoded {
    let mut group = Group::default();
    let mut ends = Vec::with_capacity(batch.len());
    group.bytes.reserve(batch.len() * FRAME_GUESS);
    group.events.reserve(batch.len());
    for event in batch {
        encoder.frame(&event, &mut group.bytes);
        ends.push(group.bytes.len());
        group.events.push(event);
    }
    Encoded { group, ends }
}

/// An append running on a blocking thread: the writer and group back, the segment it
/// discarded first (if told to), and the outcome.
type Append = JoinHandle<(Writer, Group, Option<u64>, std::io::Result<Appended>)>;

/// Reads `input` into the log until it closes and everything is durable.
pub async fn pump(
    mut input: InputReceiver,
    shared: Arc<Shared>,
    writer: Writer,
    max_size: u64,
    drop_newest: bool,
) {
    let mut writer = Some(writer);
    let mut encoder = Encoder::default();
    let mut next = Group::default();
    let mut failed: Option<Group> = None;
    let mut in_flight: Option<Append> = None;
    let mut in_flight_bytes = 0usize;
    let mut held: Option<Encoded> = None;
    let mut input_open = true;
    let mut retry_at: Option<Instant> = None;
    let mut failures = 0u32;
    loop {
        if in_flight.is_none() && retry_at.is_none() {
            let group = failed
                .take()
                .or_else(|| (!next.events.is_empty()).then(|| std::mem::take(&mut next)));
            match (group, writer.take()) {
                (Some(group), Some(mut w)) => {
                    in_flight_bytes = group.bytes.len();
                    // After a failure (a full disk?), drop a fully acknowledged segment.
                    let discard = match failures {
                        0 => None,
                        _ => {
                            let state = shared.lock();
                            let last = state.segments.back().map(|s| s.first_seq);
                            last.filter(|_| state.acks.position() >= state.durable_seq)
                        }
                    };
                    in_flight = Some(tokio::task::spawn_blocking(move || {
                        let discarded = discard.map(|first| w.discard(first)).transpose();
                        let (discarded, result) = match discarded {
                            Ok(discarded) => (discarded, w.append(&group.bytes, group.records())),
                            Err(err) => (None, Err(err)),
                        };
                        (w, group, discarded, result)
                    }));
                }
                (group, w) => {
                    failed = group;
                    writer = w;
                }
            }
        }
        if !input_open
            && in_flight.is_none()
            && failed.is_none()
            && next.events.is_empty()
            && held.is_none()
        {
            break;
        }
        let pending =
            in_flight_bytes + failed.as_ref().map_or(0, |g| g.bytes.len()) + next.bytes.len();
        let freed = shared.freed.notified();
        tokio::select! {
            joined = join(&mut in_flight) => {
                in_flight = None;
                in_flight_bytes = 0;
                if let Ok((_, _, Some(segment), _)) = &joined {
                    forget_segment(&shared, *segment);
                }
                match joined {
                    Ok((w, mut group, _, Ok(appended))) => {
                        writer = Some(w);
                        failures = 0;
                        publish(&shared, appended, group.records());
                        group.durable = true;
                    }
                    Ok((w, group, _, Err(err))) => {
                        writer = Some(w);
                        failures += 1;
                        let delay = Duration::from_millis(100 << failures.min(6)).min(Duration::from_secs(5));
                        BufferIoFailed {
                            message: &format!(
                                "cannot append {} events to {}: {err}; holding them (the sources wait) and trying again in {delay:?}",
                                group.records(),
                                shared.dir.display()
                            ),
                        }
                        .emit(&shared.telemetry);
                        failed = Some(group);
                        retry_at = Some(Instant::now() + delay);
                    }
                    Err(err) => {
                        // The group died with the task and failed its events on the way.
                        BufferIoFailed { message: &format!("the writer stopped: {err}") }.emit(&shared.telemetry);
                        break;
                    }
                }
            }
            () = super::sleep_until(retry_at), if retry_at.is_some() => retry_at = None,
            () = freed, if held.is_some() => {
                if let Some(encoded) = held.take() {
                    held = admit(&shared, encoded, pending, max_size, drop_newest, &mut next);
                }
            }
            // Not while appends fail: the sources wait (backpressure) instead of weir
            // holding ever more in memory.
            batch = input.recv(), if input_open && held.is_none() && failures == 0 && next.bytes.len() < GROUP_MAX => {
                match batch {
                    None => input_open = false,
                    Some(batch) => held = admit(&shared, encode(&mut encoder, batch), pending, max_size, drop_newest, &mut next),
                }
            }
        }
    }
    shared.lock().input_done = true;
    shared.filled.notify_one();
}

async fn join(
    in_flight: &mut Option<Append>,
) -> Result<(Writer, Group, Option<u64>, std::io::Result<Appended>), tokio::task::JoinError> {
    match in_flight {
        Some(handle) => handle.await,
        None => std::future::pending().await,
    }
}

/// Moves `encoded` into the next group if the buffer has room; returns it when it must
/// wait (`block`). `pending`: bytes of groups not yet appended.
fn admit(
    shared: &Shared,
    mut encoded: Encoded,
    pending: usize,
    max_size: u64,
    drop_newest: bool,
    next: &mut Group,
) -> Option<Encoded> {
    let on_disk = {
        let state = shared.lock();
        // Everything on disk acknowledged: it goes as soon as the writer moves on to a new
        // segment, so it does not count (or a full last segment could never be trimmed).
        match state.acks.position() >= state.durable_seq {
            true => 0,
            false => state.bytes,
        }
    };
    let used = on_disk + pending as u64;
    let incoming = encoded.group.bytes.len() as u64;
    if used == 0 || used + incoming <= max_size {
        next.bytes.append(&mut encoded.group.bytes);
        next.events.append(&mut encoded.group.events);
        return None;
    }
    if !drop_newest {
        return Some(encoded);
    }
    let room = max_size.saturating_sub(used) as usize;
    let kept = encoded.ends.partition_point(|&end| end <= room);
    let cut = kept.checked_sub(1).map_or(0, |i| encoded.ends[i]);
    next.bytes.extend_from_slice(&encoded.group.bytes[..cut]);
    let dropped = encoded.group.events.split_off(kept);
    next.events.append(&mut encoded.group.events);
    BufferDiscarded {
        count: dropped.len(),
        buffer: &shared.metrics,
    }
    .emit(&shared.telemetry);
    // Dropped by the user's choice: their deliveries are released as handled.
    drop(dropped);
    None
}

/// Removes a segment the writer deleted from what the buffer knows.
fn forget_segment(shared: &Shared, first_seq: u64) {
    let mut state = shared.lock();
    if let Some(i) = state.segments.iter().position(|s| s.first_seq == first_seq)
        && let Some(gone) = state.segments.remove(i)
    {
        state.bytes -= gone.len;
        shared.metrics.byte_size.set(state.bytes as i64);
    }
}

/// Makes an append visible to the reader.
fn publish(shared: &Shared, appended: Appended, records: u64) {
    let mut state = shared.lock();
    if appended.new_segment {
        if state
            .segments
            .back()
            .is_some_and(|s| s.first_seq == appended.segment)
        {
            // A segment left empty by a crash or a failed append was created again.
            if let Some(old) = state.segments.pop_back() {
                state.bytes -= old.len;
            }
        }
        state.segments.push_back(SegmentInfo {
            first_seq: appended.segment,
            end_seq: appended.segment,
            len: 0,
        });
    }
    if let Some(last) = state.segments.back_mut() {
        last.end_seq = appended.end_seq;
        last.len = appended.len;
    }
    state.bytes += appended.added;
    state.durable_seq = appended.end_seq;
    shared.metrics.byte_size.set(state.bytes as i64);
    drop(state);
    shared.metrics.events.inc_by(records as i64);
    shared.metrics.received.inc_by(records);
    shared.filled.notify_one();
}
