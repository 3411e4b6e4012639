//! Reading: the sink's `next(n)` served from the durable part of the log.
//!
//! The reader hands out chunks of records that are already fsynced: a failed range again
//! once its backoff has passed, and new records from where it left off only while no failed
//! range waits, so records reach the sink in the order of the log (a sink that records
//! how far its destination got, like `delta_lake`, relies on that). Every chunk gets one
//! buffer-local `Delivery` whose outcome the acknowledger collects (see [`super::ack`]).
//! Reading never waits once it has decided what to read, so `next` is cancel-safe: the
//! reader's position moves only when a chunk is returned.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::format::{self, Decoder, FRAME_LEN, FormatError, HEADER_LEN};
use super::{ReadPos, Shared, State, segment};
use crate::buffers::{Chunk, Position};
use crate::event::{Delivery, Event};
use crate::telemetry::InternalEvent;
use crate::telemetry::events::{BufferIoFailed, BufferRecordsCorrupted};

/// Bytes read from a segment at once.
const READ_AHEAD: u64 = 1 << 20;

pub struct Reader {
    shared: Arc<Shared>,
    /// Where new records continue; set from the recovered start once the buffer is open.
    pos: Option<ReadPos>,
    buf: Vec<u8>,
    /// Segment and file offset of `buf[0]`.
    buf_at: (u64, u64),
    decoder: Decoder,
    /// A read failed: wait a moment before the next try.
    pending_io_error: bool,
}

/// What to read next, decided under the lock.
enum Plan {
    Wait(Option<Instant>),
    Done,
    Read(Read),
}

struct Read {
    start: u64,
    /// Records available from `start` (a redelivered range, or up to the durable end).
    available: u64,
    from: ReadPos,
    limit: u64,
    /// `Some(attempt)`: a redelivery.
    redelivery: Option<u32>,
}

enum ReadError {
    Io(std::io::Error),
    Corrupt(FormatError),
}

impl Reader {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            pos: None,
            buf: Vec::new(),
            buf_at: (0, 0),
            decoder: Decoder::default(),
            pending_io_error: false,
        }
    }

    pub async fn next(&mut self, max: usize) -> Option<Chunk> {
        let max = max.max(1) as u64;
        let shared = Arc::clone(&self.shared);
        loop {
            let filled = shared.filled.notified();
            let plan = {
                let mut state = shared.lock();
                self.plan(&mut state)
            };
            let read = match plan {
                Plan::Done => return None,
                Plan::Wait(until) => {
                    tokio::select! {
                        () = filled => {}
                        () = super::sleep_until(until) => {}
                    }
                    continue;
                }
                Plan::Read(read) => read,
            };
            let wanted = read.available.min(max);
            let (events, end_offset, error) = self.read(read.from, read.limit, wanted);
            if let Some(chunk) = self.hand_out(&read, events, end_offset, error) {
                return Some(chunk);
            }
            if self.pending_io_error {
                self.pending_io_error = false;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }

    fn plan(&mut self, state: &mut State) -> Plan {
        if state.incarnation.is_none() {
            return Plan::Wait(None);
        }
        // Outcomes the acknowledger has not collected yet: a chunk the sink failed a moment
        // ago must be known before anything after it goes out.
        let resolved = state.acks.resolve(None);
        if self.shared.note(&resolved).is_ready() {
            self.shared.acks.notify_one();
        }
        let due = match state.acks.take_redelivery(Instant::now()) {
            Ok((start, chunk)) => {
                return Plan::Read(Read {
                    start,
                    available: chunk.end - start,
                    from: chunk.from,
                    limit: chunk.end_offset,
                    redelivery: Some(chunk.attempt),
                });
            }
            Err(due) => due,
        };
        if state.acks.redelivery_pending() {
            // A failed range waits for its backoff: nothing after it goes out before it.
            return Plan::Wait(due);
        }
        let mut pos = *self.pos.get_or_insert(state.start);
        loop {
            let here = state.segments.iter().find(|s| s.first_seq == pos.segment);
            match here {
                Some(info) if pos.offset < info.len => {
                    let start = state.acks.frontier();
                    self.pos = Some(pos);
                    return Plan::Read(Read {
                        start,
                        available: info.end_seq.saturating_sub(start).max(1),
                        from: pos,
                        limit: info.len,
                        redelivery: None,
                    });
                }
                _ => {
                    // At the end of this segment (or it is gone): move on to the next one.
                    match state.segments.iter().find(|s| s.first_seq > pos.segment) {
                        Some(next) => {
                            pos = ReadPos {
                                segment: next.first_seq,
                                offset: HEADER_LEN as u64,
                            };
                            state.acks.skip_to(next.first_seq);
                        }
                        None => break,
                    }
                }
            }
        }
        self.pos = Some(pos);
        match state.input_done && !state.acks.redelivery_pending() {
            true => Plan::Done,
            false => Plan::Wait(due),
        }
    }

    /// Reads up to `wanted` records from `from` (not past `limit`): the events, where the
    /// next record starts, and the error that stopped it early, if one did.
    fn read(
        &mut self,
        from: ReadPos,
        limit: u64,
        wanted: u64,
    ) -> (Vec<Event>, u64, Option<ReadError>) {
        let mut events = Vec::with_capacity(wanted.min(65_536) as usize);
        let mut offset = from.offset;
        while (events.len() as u64) < wanted && offset < limit {
            match self.record(from.segment, offset, limit) {
                Ok((event, n)) => {
                    events.push(event);
                    offset += n as u64;
                }
                Err(err) => return (events, offset, Some(err)),
            }
        }
        (events, offset, None)
    }

    /// The record of `segment` at `offset`, checked and decoded, with its frame's length.
    fn record(
        &mut self,
        segment: u64,
        offset: u64,
        limit: u64,
    ) -> Result<(Event, usize), ReadError> {
        let head = self.bytes(segment, offset, FRAME_LEN as u64, limit)?;
        let len = u64::from(u32::from_le_bytes([head[0], head[1], head[2], head[3]]));
        self.bytes(segment, offset, FRAME_LEN as u64 + len, limit)?;
        let start = (offset - self.buf_at.1) as usize;
        let frame = &self.buf[start..start + FRAME_LEN + len as usize];
        let (payload, n) = format::read_frame(frame).map_err(ReadError::Corrupt)?;
        let event = self.decoder.decode(payload).map_err(ReadError::Corrupt)?;
        Ok((event, n))
    }

    /// `len` bytes of `segment` at `offset`, from the read-ahead buffer.
    fn bytes(
        &mut self,
        segment: u64,
        offset: u64,
        len: u64,
        limit: u64,
    ) -> Result<&[u8], ReadError> {
        if offset + len > limit {
            return Err(ReadError::Corrupt(FormatError::Length(len as usize)));
        }
        let (buf_segment, buf_offset) = self.buf_at;
        let cached = buf_segment == segment
            && offset >= buf_offset
            && offset + len <= buf_offset + self.buf.len() as u64;
        if !cached {
            // Opened for each refill, not kept: a segment deleted while the reader is idle
            // (trimmed, or discarded on a full disk) must not stay allocated by its handle.
            let file =
                File::open(segment::path(&self.shared.dir, segment)).map_err(ReadError::Io)?;
            let size = len.max(READ_AHEAD.min(limit - offset));
            self.buf.resize(size as usize, 0);
            file.read_exact_at(&mut self.buf, offset)
                .map_err(ReadError::Io)?;
            self.buf_at = (segment, offset);
        }
        let start = (offset - self.buf_at.1) as usize;
        Ok(&self.buf[start..start + len as usize])
    }

    /// Registers what was read as one chunk and returns its events; deals with an error
    /// that cut the read short. `None`: nothing to hand out this time.
    fn hand_out(
        &mut self,
        read: &Read,
        mut events: Vec<Event>,
        end_offset: u64,
        error: Option<ReadError>,
    ) -> Option<Chunk> {
        let count = events.len() as u64;
        let mut state = self.shared.lock();
        let incarnation = state.incarnation.clone();
        let end = read.start + count;
        match &error {
            Some(ReadError::Io(err)) => {
                BufferIoFailed {
                    message: &format!(
                        "cannot read segment {}: {err}; trying again",
                        read.from.segment
                    ),
                }
                .emit(&self.shared.telemetry);
                self.pending_io_error = true;
            }
            Some(ReadError::Corrupt(err)) => {
                // The rest of the range (a redelivery) or of the segment's durable part is
                // unreadable: lost, counted, and skipped.
                let segment_end = state
                    .segments
                    .iter()
                    .find(|s| s.first_seq == read.from.segment)
                    .map_or(end, |s| s.end_seq);
                let lost_to = match read.redelivery {
                    Some(_) => read.start + read.available,
                    None => segment_end,
                };
                let lost = lost_to.saturating_sub(end);
                self.shared.metrics.events.dec_by(lost as i64);
                BufferRecordsCorrupted {
                    records: lost,
                    buffer: &self.shared.metrics,
                    message: &format!(
                        "record {end} in segment {} is unreadable ({err}); skipping {lost} records",
                        read.from.segment
                    ),
                }
                .emit(&self.shared.telemetry);
            }
            None => {}
        }
        let corrupt = matches!(error, Some(ReadError::Corrupt(_)));
        match read.redelivery {
            Some(attempt) => {
                state.acks.forget(read.start);
                let rest = read.start + read.available;
                if end < rest && !corrupt {
                    let resume = ReadPos {
                        segment: read.from.segment,
                        offset: end_offset,
                    };
                    state.acks.give_back(end, rest, resume, read.limit, attempt);
                }
                if count > 0 {
                    self.register(&mut state, read, &mut events, end_offset, attempt);
                }
            }
            None => {
                if corrupt {
                    let info = state
                        .segments
                        .iter()
                        .find(|s| s.first_seq == read.from.segment);
                    let (end_seq, len) = info.map_or((end, end_offset), |s| (s.end_seq, s.len));
                    self.pos = Some(ReadPos {
                        segment: read.from.segment,
                        offset: len,
                    });
                    if count > 0 {
                        self.register(&mut state, read, &mut events, end_offset, 0);
                    }
                    state.acks.skip_to(end_seq);
                } else if count > 0 {
                    self.pos = Some(ReadPos {
                        segment: read.from.segment,
                        offset: end_offset,
                    });
                    self.register(&mut state, read, &mut events, end_offset, 0);
                }
            }
        }
        drop(state);
        self.shared.acks.notify_one();
        (count > 0).then(|| Chunk {
            events,
            position: incarnation.map(|incarnation| Position {
                incarnation,
                first_seq: read.start,
            }),
        })
    }

    fn register(
        &self,
        state: &mut State,
        read: &Read,
        events: &mut [Event],
        end_offset: u64,
        attempt: u32,
    ) {
        let (delivery, outcome) = Delivery::new();
        for event in events.iter_mut() {
            event.attach(&delivery);
        }
        let end = read.start + events.len() as u64;
        state
            .acks
            .handed_out(read.start, end, read.from, end_offset, attempt, outcome);
        self.shared.metrics.sent.inc_by(events.len() as u64);
    }
}
