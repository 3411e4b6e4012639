//! Acknowledgement: which records the sink has committed, the durable ack position, and
//! trimming what every record of which is acknowledged.
//!
//! Every chunk the reader hands out carries one buffer-local `Delivery`; the sink drops the
//! chunk's events after its own commit, and the delivery reports `Committed` (or `Failed`,
//! if any event of it was lost on the way). The [`AckTracker`] keeps the chunks not yet
//! committed by first sequence number; the ack position is the first of them (or the
//! reader's frontier when none is out), so a chunk that fails holds the position back
//! until its redelivery commits. The acknowledger task ([`run`]) waits for outcomes,
//! writes the position to `ack` (atomically: a temporary file, fsync, rename) at most every
//! [`PERSIST_EVERY`], and then deletes the segments entirely below it.

use std::collections::BTreeMap;
use std::future::{Future as _, poll_fn};
use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::format;
use super::segment;
use super::{ReadPos, Shared};
use crate::event::DeliveryStatus;
use crate::telemetry::InternalEvent;
use crate::telemetry::events::BufferIoFailed;

/// The ack position is written at most this often (and when the buffer closes).
pub const PERSIST_EVERY: Duration = Duration::from_millis(50);
const ACK_FILE: &str = "ack";
const ACK_MAGIC: &[u8; 8] = b"WEIRACK1";

/// A range of records handed to the sink and not yet committed.
pub struct Chunk {
    /// One past its last record.
    pub end: u64,
    /// Where its first record starts.
    pub from: ReadPos,
    /// Where the record after its last one starts (same segment).
    pub end_offset: u64,
    /// Failed deliveries of this range so far.
    pub attempt: u32,
    status: Status,
}

impl Chunk {
    fn new(end: u64, from: ReadPos, end_offset: u64, attempt: u32) -> Self {
        Self {
            end,
            from,
            end_offset,
            attempt,
            status: Status::Reading,
        }
    }

    fn with(self, status: Status) -> Self {
        Self { status, ..self }
    }
}

enum Status {
    InFlight(oneshot::Receiver<DeliveryStatus>),
    /// Failed; to be handed out again once the backoff has passed.
    Redeliver {
        not_before: Instant,
    },
    /// Being read again by the reader right now.
    Reading,
}

/// The chunks out with the sink, and the acknowledged position they leave.
pub struct AckTracker {
    /// The first record not handed out yet.
    frontier: u64,
    outstanding: BTreeMap<u64, Chunk>,
    /// What `ack` on disk says.
    pub persisted: u64,
}

/// What [`AckTracker::resolve`] found.
#[derive(Default)]
pub struct Resolved {
    /// Events of chunks that were committed.
    pub committed: u64,
    pub failed: bool,
}

impl AckTracker {
    pub fn new(position: u64) -> Self {
        Self {
            frontier: position,
            outstanding: BTreeMap::new(),
            persisted: position,
        }
    }

    pub fn frontier(&self) -> u64 {
        self.frontier
    }

    /// Records up to `seq` will never be handed out (skipped as corrupt, or a gap).
    pub fn skip_to(&mut self, seq: u64) {
        self.frontier = self.frontier.max(seq);
    }

    /// Everything below is acknowledged.
    pub fn position(&self) -> u64 {
        self.outstanding
            .keys()
            .next()
            .copied()
            .unwrap_or(self.frontier)
    }

    /// Records `start..end` (at `from`..`end_offset`) went to the sink with `outcome`.
    pub fn handed_out(
        &mut self,
        start: u64,
        end: u64,
        from: ReadPos,
        end_offset: u64,
        attempt: u32,
        outcome: oneshot::Receiver<DeliveryStatus>,
    ) {
        self.frontier = self.frontier.max(end);
        let chunk = Chunk::new(end, from, end_offset, attempt);
        self.outstanding
            .insert(start, chunk.with(Status::InFlight(outcome)));
    }

    /// The first failed range, once it is due for redelivery, marked as being read (the
    /// reader hands out a prefix and gives the rest back with [`AckTracker::give_back`]);
    /// else when it is due. Only the first: failed ranges go out again in log order, so a
    /// range that failed more often (a longer backoff) holds back the ones after it.
    pub fn take_redelivery(&mut self, now: Instant) -> Result<(u64, &Chunk), Option<Instant>> {
        let (&start, chunk) = self
            .outstanding
            .iter_mut()
            .find(|(_, chunk)| !matches!(chunk.status, Status::InFlight(_)))
            .ok_or(None)?;
        match chunk.status {
            Status::Redeliver { not_before } if not_before <= now => {
                chunk.status = Status::Reading;
                Ok((start, chunk))
            }
            Status::Redeliver { not_before } => Err(Some(not_before)),
            Status::InFlight(_) | Status::Reading => Err(None),
        }
    }

    /// The part `start..end` of a redelivered range not handed out this time; due now.
    pub fn give_back(
        &mut self,
        start: u64,
        end: u64,
        from: ReadPos,
        end_offset: u64,
        attempt: u32,
    ) {
        let chunk = Chunk::new(end, from, end_offset, attempt);
        let due = Status::Redeliver {
            not_before: Instant::now(),
        };
        self.outstanding.insert(start, chunk.with(due));
    }

    /// Drops a range the reader could not read again (corrupt); it is lost.
    pub fn forget(&mut self, start: u64) -> Option<Chunk> {
        self.outstanding.remove(&start)
    }

    /// Whether a chunk is still out with the sink (or its copies).
    pub fn in_flight(&self) -> bool {
        self.outstanding
            .values()
            .any(|c| matches!(c.status, Status::InFlight(_) | Status::Reading))
    }

    /// Whether a failed range waits for redelivery.
    pub fn redelivery_pending(&self) -> bool {
        self.outstanding
            .values()
            .any(|c| !matches!(c.status, Status::InFlight(_)))
    }

    /// Collects the outcomes that arrived (registering `cx` with those that did not).
    pub fn resolve(&mut self, mut cx: Option<&mut Context<'_>>) -> Resolved {
        let mut resolved = Resolved::default();
        let now = Instant::now();
        let mut committed = Vec::new();
        for (&start, chunk) in &mut self.outstanding {
            let Status::InFlight(outcome) = &mut chunk.status else {
                continue;
            };
            let status = match cx.as_deref_mut() {
                Some(cx) => match std::pin::Pin::new(outcome).poll(cx) {
                    Poll::Ready(status) => status.unwrap_or(DeliveryStatus::Failed),
                    Poll::Pending => continue,
                },
                None => match outcome.try_recv() {
                    Ok(status) => status,
                    Err(oneshot::error::TryRecvError::Empty) => continue,
                    Err(oneshot::error::TryRecvError::Closed) => DeliveryStatus::Failed,
                },
            };
            match status {
                DeliveryStatus::Committed => {
                    resolved.committed += chunk.end - start;
                    committed.push(start);
                }
                DeliveryStatus::Failed => {
                    resolved.failed = true;
                    chunk.attempt += 1;
                    chunk.status = Status::Redeliver {
                        not_before: now + backoff(chunk.attempt),
                    };
                }
            }
        }
        for start in committed {
            self.outstanding.remove(&start);
        }
        resolved
    }
}

/// How long a range that failed `attempt` times waits before it is handed out again.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << attempt.min(7))).min(Duration::from_secs(10))
}

/// The ack position `dir/ack` holds; 0 when there is none. `Err` when it is unreadable.
pub fn read_position(dir: &Path) -> std::io::Result<Result<Option<u64>, String>> {
    let bytes = match std::fs::read(dir.join(ACK_FILE)) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Ok(None)),
        Err(err) => return Err(err),
    };
    if bytes.len() != 20 || &bytes[..8] != ACK_MAGIC {
        return Ok(Err("the ack file is not one weir wrote".into()));
    }
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&bytes[16..20]);
    if format::checksum(&bytes[..16]) != u32::from_le_bytes(crc) {
        return Ok(Err("the ack file fails its checksum".into()));
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&bytes[8..16]);
    Ok(Ok(Some(u64::from_le_bytes(seq))))
}

/// Writes the ack position atomically and durably.
pub fn write_position(dir: &Path, position: u64) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut bytes = Vec::with_capacity(20);
    bytes.extend_from_slice(ACK_MAGIC);
    bytes.extend_from_slice(&position.to_le_bytes());
    bytes.extend_from_slice(&format::checksum(&bytes).to_le_bytes());
    let tmp = dir.join("ack.tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, dir.join(ACK_FILE))?;
    segment::sync_dir(dir)
}

/// Persists the ack position if it moved, then deletes the segments below it. Blocking.
pub fn persist_and_trim(shared: &Shared) {
    let _persisting = shared.persisting.lock().unwrap_or_else(|p| p.into_inner());
    let (position, doomed) = {
        let state = shared.lock();
        let position = state.acks.position();
        if position <= state.acks.persisted {
            return;
        }
        // Never the last segment: the writer appends to it.
        let keep_last = state.segments.len().saturating_sub(1);
        let doomed: Vec<u64> = state
            .segments
            .iter()
            .take(keep_last)
            .take_while(|s| s.end_seq <= position)
            .map(|s| s.first_seq)
            .collect();
        (position, doomed)
    };
    // Deleting acknowledged segments is safe even when the position could not be written
    // (a full disk): a start treats records missing below the first segment as
    // acknowledged. And on a full disk, deleting them is what makes room.
    let written = match write_position(&shared.dir, position) {
        Ok(()) => true,
        Err(err) => {
            BufferIoFailed {
                message: &format!("cannot write the ack position: {err}; trying again"),
            }
            .emit(&shared.telemetry);
            false
        }
    };
    let mut deleted = Vec::new();
    for first in doomed {
        match std::fs::remove_file(segment::path(&shared.dir, first)) {
            Ok(()) => deleted.push(first),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => deleted.push(first),
            Err(err) => {
                BufferIoFailed {
                    message: &format!("cannot delete an acknowledged segment: {err}"),
                }
                .emit(&shared.telemetry);
                break;
            }
        }
    }
    let mut state = shared.lock();
    if written {
        state.acks.persisted = state.acks.persisted.max(position);
    }
    for first in deleted {
        if state.segments.front().is_some_and(|s| s.first_seq == first)
            && let Some(gone) = state.segments.pop_front()
        {
            state.bytes -= gone.len;
        }
    }
    shared.metrics.byte_size.set(state.bytes as i64);
    drop(state);
    shared.freed.notify_one();
}

/// The acknowledger: collects outcomes, persists the position, trims; ends once the
/// buffer was dropped and nothing is out with the sink any more.
pub async fn run(shared: Arc<Shared>) {
    let mut last_persist = Instant::now() - PERSIST_EVERY;
    let mut due: Option<Instant> = None;
    loop {
        let woken = shared.acks.notified();
        tokio::select! {
            () = poll_fn(|cx| shared.poll_outcomes(cx)) => {}
            () = woken => {}
            () = super::sleep_until(due) => {}
        }
        let (moved, finished) = {
            let state = shared.lock();
            (
                state.acks.position() > state.acks.persisted,
                state.dropped && !state.acks.in_flight(),
            )
        };
        if moved && (finished || last_persist.elapsed() >= PERSIST_EVERY) {
            let work = Arc::clone(&shared);
            let _ = tokio::task::spawn_blocking(move || persist_and_trim(&work)).await;
            last_persist = Instant::now();
            due = None;
        } else if moved {
            due = Some(last_persist + PERSIST_EVERY);
        }
        if finished {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(offset: u64) -> ReadPos {
        ReadPos { segment: 0, offset }
    }

    #[test]
    fn the_position_waits_for_the_oldest_chunk() {
        let mut acks = AckTracker::new(0);
        let (tx_a, rx_a) = oneshot::channel();
        let (tx_b, rx_b) = oneshot::channel();
        acks.handed_out(0, 10, pos(0), 100, 0, rx_a);
        acks.handed_out(10, 20, pos(100), 200, 0, rx_b);
        assert_eq!(acks.position(), 0);
        tx_b.send(DeliveryStatus::Committed).unwrap();
        assert_eq!(acks.resolve(None).committed, 10);
        assert_eq!(acks.position(), 0, "the first chunk is still out");
        tx_a.send(DeliveryStatus::Committed).unwrap();
        acks.resolve(None);
        assert_eq!(acks.position(), 20);
        assert!(!acks.in_flight());
    }

    #[test]
    fn a_failed_chunk_comes_back_after_its_backoff() {
        let mut acks = AckTracker::new(0);
        let (tx, rx) = oneshot::channel();
        acks.handed_out(0, 10, pos(0), 100, 0, rx);
        tx.send(DeliveryStatus::Failed).unwrap();
        assert!(acks.resolve(None).failed);
        assert_eq!(acks.position(), 0);
        let now = Instant::now();
        let due = acks
            .take_redelivery(now)
            .err()
            .flatten()
            .expect("a due time");
        assert!(due > now);
        let (start, chunk) = acks.take_redelivery(due).expect("due now");
        assert_eq!((start, chunk.end, chunk.attempt), (0, 10, 1));
        assert!(acks.in_flight(), "being read counts as out");
    }

    #[test]
    fn failed_ranges_go_out_again_in_log_order() {
        let mut acks = AckTracker::new(0);
        let (tx_a, rx_a) = oneshot::channel();
        let (tx_b, rx_b) = oneshot::channel();
        // The first range has failed before: its backoff is longer than the second's.
        acks.handed_out(0, 10, pos(0), 100, 3, rx_a);
        acks.handed_out(10, 20, pos(100), 200, 0, rx_b);
        tx_a.send(DeliveryStatus::Failed).unwrap();
        tx_b.send(DeliveryStatus::Failed).unwrap();
        assert!(acks.resolve(None).failed);
        let second_due = Instant::now() + backoff(1);
        let first_due = acks
            .take_redelivery(second_due)
            .err()
            .flatten()
            .expect("the first range is not due yet");
        assert!(
            first_due > second_due,
            "the second range waits for the first"
        );
        let (start, _) = acks.take_redelivery(first_due).expect("due now");
        assert_eq!(start, 0);
    }

    #[test]
    fn a_lost_sender_counts_as_failed() {
        let mut acks = AckTracker::new(5);
        let (tx, rx) = oneshot::channel::<DeliveryStatus>();
        acks.handed_out(5, 6, pos(0), 1, 0, rx);
        drop(tx);
        assert!(acks.resolve(None).failed);
        assert_eq!(acks.position(), 5);
    }

    #[test]
    fn the_ack_file_round_trips_and_rejects_corruption() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_position(dir.path()).unwrap(), Ok(None));
        write_position(dir.path(), 1234).unwrap();
        assert_eq!(read_position(dir.path()).unwrap(), Ok(Some(1234)));
        let path = dir.path().join(ACK_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[9] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert!(read_position(dir.path()).unwrap().is_err());
    }
}
