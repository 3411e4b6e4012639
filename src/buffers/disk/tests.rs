//! The disk buffer as a sink sees it: durable before acknowledged, restart recovery, torn
//! and corrupt records, redelivery, and `when_full`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;
use crate::buffers::tests::{batch, ids, telemetry};
use crate::event::{Delivery, DeliveryStatus, Event, EventBatch};
use crate::testing::Tmpfs;
use crate::topology::channel::{InputSender, input_channel};

struct Harness {
    tx: Option<InputSender>,
    buffer: DiskBuffer,
    metrics: SinkBufferMetrics,
}

fn start(dir: &Path, max_size: u64, drop_newest: bool) -> Harness {
    let t = telemetry();
    let (tx, rx) = input_channel(&t, 1);
    let metrics = t.sink_buffer("disk", crate::telemetry::BufferCapacity::Bytes(max_size));
    let buffer = DiskBuffer::new(
        rx,
        Options {
            dir: dir.to_path_buf(),
            max_size,
            drop_newest,
        },
        t,
    );
    Harness {
        tx: Some(tx),
        buffer,
        metrics,
    }
}

impl Harness {
    async fn send(&self, batch: EventBatch) {
        if let Some(tx) = &self.tx {
            tx.send_for_test(batch).await;
        }
    }

    /// Events `range`, with one source delivery; returns its outcome receiver.
    async fn send_acked(
        &self,
        range: std::ops::Range<i64>,
    ) -> tokio::sync::oneshot::Receiver<DeliveryStatus> {
        let mut events: Vec<Event> = batch(range).into_iter().collect();
        let outcome = Delivery::attach_all(&mut events);
        self.send(EventBatch::new(events)).await;
        outcome
    }

    fn close(&mut self) {
        self.tx = None;
    }

    async fn next(&mut self, max: usize) -> Option<Vec<Event>> {
        self.chunk(max).await.map(|chunk| chunk.events)
    }

    async fn chunk(&mut self, max: usize) -> Option<Chunk> {
        tokio::time::timeout(Duration::from_secs(5), self.buffer.next(max))
            .await
            .expect("next answered in time")
    }

    /// Everything until the input closed and the reader caught up, acknowledging it.
    async fn drain(&mut self) -> Vec<i64> {
        let mut seen = Vec::new();
        while let Some(events) = self.next(1000).await {
            seen.extend(ids(&events));
        }
        seen
    }
}

fn dir() -> (tempfile::TempDir, PathBuf) {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("buffers").join("s");
    (root, dir)
}

/// Waits until the previous buffer of `dir` has let go of it (its acknowledger finished).
async fn reopen(dir: &Path) -> Harness {
    start(dir, 1 << 30, false)
}

#[tokio::test]
async fn the_source_hears_committed_once_durable_and_the_sink_reads_it_all() {
    let (_root, dir) = dir();
    let mut h = start(&dir, 1 << 30, false);
    let outcome = h.send_acked(0..100).await;
    // Acknowledged by the buffer, though the sink has not read anything yet.
    let status = tokio::time::timeout(Duration::from_secs(5), outcome)
        .await
        .unwrap();
    assert_eq!(status, Ok(DeliveryStatus::Committed));
    assert!(dir.join("incarnation").exists());
    assert!(!segment::list(&dir).unwrap().is_empty());
    assert_eq!(h.metrics.received.get(), 100);
    h.send(batch(100..150)).await;
    h.close();
    assert_eq!(h.drain().await, (0..150).collect::<Vec<_>>());
    assert_eq!(h.metrics.sent.get(), 150);
}

#[tokio::test]
async fn a_restart_hands_back_exactly_what_was_not_acknowledged() {
    let (_root, dir) = dir();
    let mut h = start(&dir, 1 << 30, false);
    h.send(batch(0..10)).await;
    let committed = h.next(4).await.unwrap();
    assert_eq!(ids(&committed), vec![0, 1, 2, 3]);
    drop(committed);
    let lost = h.next(3).await.unwrap();
    assert_eq!(ids(&lost), vec![4, 5, 6]);
    for event in &lost {
        event.fail_delivery();
    }
    drop(lost);
    drop(h);
    let incarnation = std::fs::read_to_string(dir.join("incarnation")).unwrap();

    let mut again = reopen(&dir).await;
    again.close();
    assert_eq!(again.drain().await, (4..10).collect::<Vec<_>>());
    drop(again);
    assert_eq!(
        std::fs::read_to_string(dir.join("incarnation")).unwrap(),
        incarnation,
        "the incarnation is made once"
    );
    let mut last = reopen(&dir).await;
    last.close();
    assert_eq!(
        last.drain().await,
        Vec::<i64>::new(),
        "all acknowledged now"
    );
}

#[tokio::test]
async fn a_failed_chunk_is_delivered_again() {
    let (_root, dir) = dir();
    let mut h = start(&dir, 1 << 30, false);
    h.send(batch(0..5)).await;
    let first = h.next(100).await.unwrap();
    assert_eq!(ids(&first), vec![0, 1, 2, 3, 4]);
    first[2].fail_delivery();
    drop(first);
    let again = h.next(2).await.unwrap();
    assert_eq!(
        ids(&again),
        vec![0, 1],
        "the failed range comes back, in pieces if asked"
    );
    let rest = h.next(100).await.unwrap();
    assert_eq!(ids(&rest), vec![2, 3, 4]);
    drop((again, rest));
    h.close();
    assert_eq!(h.drain().await, Vec::<i64>::new());
    assert_eq!(h.metrics.sent.get(), 10);
}

#[tokio::test]
async fn chunks_say_where_they_sit_and_a_failed_one_goes_out_before_newer_records() {
    let (_root, dir) = dir();
    let mut h = start(&dir, 1 << 30, false);
    h.send(batch(0..5)).await;
    let first = h.chunk(3).await.unwrap();
    let incarnation = std::fs::read_to_string(dir.join("incarnation")).unwrap();
    let at = |chunk: &Chunk| {
        chunk
            .position
            .as_ref()
            .map(|p| (p.incarnation.to_string(), p.first_seq))
    };
    assert_eq!(at(&first), Some((incarnation.clone(), 0)));
    first.events[0].fail_delivery();
    drop(first);
    // Newer records are durable before the failed range is due again.
    h.send(batch(5..8)).await;
    let again = h.chunk(100).await.unwrap();
    assert_eq!(ids(&again.events), vec![0, 1, 2], "the failed range first");
    assert_eq!(at(&again), Some((incarnation.clone(), 0)));
    let rest = h.chunk(2).await.unwrap();
    assert_eq!(ids(&rest.events), vec![3, 4]);
    assert_eq!(at(&rest), Some((incarnation.clone(), 3)));
    drop((again, rest));
    drop(h);

    let mut reopened = reopen(&dir).await;
    let tail = reopened.chunk(100).await.unwrap();
    assert_eq!(ids(&tail.events), vec![5, 6, 7]);
    assert_eq!(
        at(&tail),
        Some((incarnation, 5)),
        "positions survive a restart"
    );
}

/// Appends bytes to the newest segment, as a crash mid-append would leave them.
fn damage_last_segment(dir: &Path, damage: impl FnOnce(&mut Vec<u8>)) {
    let (_, path) = segment::list(dir).unwrap().pop().unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    damage(&mut bytes);
    std::fs::write(&path, bytes).unwrap();
}

/// Flips a bit inside record `n` of the last segment, which holds the events `written`.
fn corrupt_record(dir: &Path, written: std::ops::Range<i64>, n: usize) {
    let mut frames = Vec::new();
    let mut starts = Vec::new();
    for event in batch(written) {
        starts.push(format::HEADER_LEN + frames.len());
        format::write_frame(&event, &mut frames);
    }
    damage_last_segment(dir, |bytes| {
        bytes[starts[n] + format::FRAME_LEN + 1] ^= 0x10
    });
}

async fn write_and_stop(dir: &Path, range: std::ops::Range<i64>) {
    let h = start(dir, 1 << 30, false);
    let outcome = h.send_acked(range).await;
    assert_eq!(outcome.await, Ok(DeliveryStatus::Committed));
    drop(h);
}

#[tokio::test]
async fn a_segment_torn_mid_record_recovers_and_counts_it() {
    let (_root, dir) = dir();
    write_and_stop(&dir, 0..5).await;
    let mut frame = Vec::new();
    format::write_frame(&batch(5..6).into_iter().next().unwrap(), &mut frame);
    damage_last_segment(&dir, |bytes| {
        bytes.extend_from_slice(&frame[..frame.len() / 2])
    });
    let mut h = reopen(&dir).await;
    h.close();
    assert_eq!(h.drain().await, vec![0, 1, 2, 3, 4]);
    assert_eq!(h.metrics.corrupted.get(), 1);
}

#[tokio::test]
async fn a_corrupt_record_is_detected_and_what_follows_it_cut() {
    let (_root, dir) = dir();
    write_and_stop(&dir, 0..5).await;
    corrupt_record(&dir, 0..5, 3);
    let mut h = reopen(&dir).await;
    h.close();
    assert_eq!(h.drain().await, vec![0, 1, 2]);
    assert_eq!(h.metrics.corrupted.get(), 1);
}

#[tokio::test]
async fn block_stops_intake_when_full_until_the_sink_acknowledges() {
    let (_root, dir) = dir();
    let mut h = start(&dir, 4096, false);
    let mut sent = 0;
    // Nobody reads: once 4 KiB are on disk the pump stops and the channel (1 batch) fills.
    let blocked = loop {
        let send = h.send(batch(sent..sent + 20));
        if tokio::time::timeout(Duration::from_millis(300), send)
            .await
            .is_err()
        {
            break true;
        }
        sent += 20;
        if sent > 2000 {
            break false;
        }
    };
    assert!(blocked, "intake stopped");
    assert!(
        h.metrics.byte_size.get() <= 4096 + 2048,
        "bounded by max_size (and a batch)"
    );
    assert_eq!(h.metrics.discarded.get(), 0);
    // The sink reads and commits: room again, everything arrives.
    let mut seen = Vec::new();
    while seen.len() < sent as usize {
        seen.extend(ids(&h.next(1000).await.unwrap()));
    }
    assert_eq!(seen, (0..sent).collect::<Vec<_>>());
}

#[tokio::test]
async fn drop_newest_drops_and_counts_what_does_not_fit() {
    let (_root, dir) = dir();
    let mut h = start(&dir, 4096, true);
    let mut outcomes = Vec::new();
    for i in 0..20 {
        outcomes.push(h.send_acked(i * 20..i * 20 + 20).await);
    }
    for outcome in outcomes {
        // Dropped by choice: acknowledged as handled, like the memory buffer does.
        assert_eq!(outcome.await, Ok(DeliveryStatus::Committed));
    }
    h.close();
    let kept = h.drain().await;
    let dropped = h.metrics.discarded.get();
    assert!(dropped > 0, "something was dropped");
    assert_eq!(kept.len() as u64 + dropped, 400);
    assert_eq!(
        kept,
        (0..kept.len() as i64).collect::<Vec<_>>(),
        "the oldest are kept"
    );
}

#[tokio::test]
async fn acknowledged_segments_are_deleted() {
    let (_root, dir) = dir();
    // 64 KiB segments (the smallest).
    let mut h = start(&dir, 1 << 20, false);
    for i in 0..50 {
        h.send(batch(i * 100..i * 100 + 100)).await;
    }
    let mut seen = 0;
    while seen < 5000 {
        seen += h.next(1000).await.unwrap().len();
    }
    assert!(
        crate::buffers::tests::eventually(|| segment::list(&dir).unwrap().len() == 1).await,
        "only the segment being written is left: {:?}",
        segment::list(&dir).unwrap()
    );
    assert!(
        crate::buffers::tests::eventually(|| h.metrics.events.get() == 0).await,
        "every event acknowledged: {}",
        h.metrics.events.get()
    );
}

#[tokio::test]
async fn a_full_disk_is_backpressure_and_loses_nothing() {
    let disk = Tmpfs::mount("256k");
    let dir = disk.dir.path().join("buffers").join("s");
    let mut h = start(&dir, 1 << 30, false);
    // Nobody reads: appends fill the disk until one fails; then intake stops.
    let mut sent = 0;
    let mut outcomes = Vec::new();
    loop {
        let mut events: Vec<Event> = batch(sent..sent + 100).into_iter().collect();
        let outcome = Delivery::attach_all(&mut events);
        let send = h.send(EventBatch::new(events));
        if tokio::time::timeout(Duration::from_millis(1000), send)
            .await
            .is_err()
        {
            break;
        }
        outcomes.push(outcome);
        sent += 100;
        assert!(sent < 100_000, "the disk never filled up");
    }
    let last = outcomes.last_mut().expect("something was sent");
    assert!(
        last.try_recv().is_err(),
        "what is not on disk is not acknowledged"
    );
    // The sink reads and commits what is on disk; the buffer makes room and appends the rest.
    let mut seen = Vec::new();
    while (seen.len() as i64) < sent {
        let events = tokio::time::timeout(Duration::from_secs(20), h.buffer.next(1000))
            .await
            .expect("the rest arrives once there is room")
            .expect("not closed");
        seen.extend(ids(&events.events));
    }
    assert_eq!(
        seen,
        (0..sent).collect::<Vec<_>>(),
        "nothing lost, nothing twice"
    );
    for outcome in outcomes {
        assert_eq!(outcome.await, Ok(DeliveryStatus::Committed));
    }
    assert_eq!(h.metrics.corrupted.get(), 0);
    drop(h);
    // Let the acknowledger finish before the disk goes away.
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(disk);
}

/// Damage recovery must throw records away for, after records 0..10 were written (and
/// the first `acknowledged` of them read and committed by the sink).
enum Damage {
    /// A bit flips inside record 3 of the last segment.
    CorruptRecord,
    /// The last segment's header is unreadable: the segment is moved aside.
    CorruptHeader,
}

/// The sequence number the first record appended after recovering from `damage` gets.
async fn first_seq_after(damage: Damage, acknowledged: usize) -> u64 {
    let (_root, dir) = dir();
    write_and_stop(&dir, 0..10).await;
    if acknowledged > 0 {
        let mut h = reopen(&dir).await;
        let committed = h.next(acknowledged).await.unwrap();
        assert_eq!(committed.len(), acknowledged);
        drop(committed);
        drop(h);
    }
    match damage {
        Damage::CorruptRecord => corrupt_record(&dir, 0..10, 3),
        Damage::CorruptHeader => damage_last_segment(&dir, |bytes| bytes[0] ^= 0x10),
    }
    let mut h = reopen(&dir).await;
    h.send(batch(100..105)).await;
    loop {
        let chunk = h.chunk(1000).await.expect("the new records arrive");
        if ids(&chunk.events).contains(&100) {
            assert_eq!(ids(&chunk.events), vec![100, 101, 102, 103, 104]);
            return chunk.position.expect("a disk buffer's chunk").first_seq;
        }
    }
}

#[tokio::test]
async fn records_cut_by_recovery_never_lend_their_sequence_numbers_to_new_ones() {
    // Records 3..10 were durable, so a sink may have committed them and recorded position
    // 10 (a Delta commit's `txn`): new records numbered from 3 would look committed to it
    // and be skipped.
    for (damage, acknowledged, what) in [
        (
            Damage::CorruptRecord,
            0,
            "a corrupt record ends the last segment",
        ),
        (
            Damage::CorruptRecord,
            5,
            "the cut leaves only acknowledged records: the segment is deleted",
        ),
        (Damage::CorruptHeader, 0, "the last segment is moved aside"),
    ] {
        let first = first_seq_after(damage, acknowledged).await;
        assert!(first >= 10, "{what}: new records start at {first}");
    }
}

#[tokio::test]
async fn the_mark_past_cut_records_survives_a_restart_without_appends() {
    let (_root, dir) = dir();
    write_and_stop(&dir, 0..10).await;
    corrupt_record(&dir, 0..10, 3);
    // Recovered (and cut) once, stopped before anything new was appended.
    let mut h = reopen(&dir).await;
    assert_eq!(ids(&h.next(1000).await.unwrap()), vec![0, 1, 2]);
    drop(h);
    let mut h = reopen(&dir).await;
    h.send(batch(100..101)).await;
    let chunk = h.chunk(1000).await.unwrap();
    assert_eq!(ids(&chunk.events), vec![100]);
    let first = chunk.position.unwrap().first_seq;
    assert!(
        first >= 10,
        "new records start at {first} after the second start"
    );
    assert_eq!(h.metrics.corrupted.get(), 0, "nothing is cut twice");
}
