//! The memory buffer: a bounded queue of events between a sink's input channel and the
//! sink, shaped by `max_events` and `when_full`.
//!
//! A pump task moves batches from the sink's input channel into the queue; the sink takes
//! events out in the batch sizes its destination likes. With `block` (the default) a full
//! queue stops the pump, the input channel fills, and backpressure reaches the sources:
//! nothing is lost. `drop_newest` and `drop_oldest` make the sink lossy by choice: what
//! they drop is counted (`buffer_discarded_events_total`) and acknowledged upstream as
//! handled, since the user asked for it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use super::WhenFull;
use crate::event::Event;
use crate::telemetry::events::BufferDiscarded;
use crate::telemetry::{BufferCapacity, ComponentTelemetry, InternalEvent, SinkBufferMetrics};
use crate::topology::channel::InputReceiver;

struct Shared {
    queue: Mutex<Queue>,
    /// Signalled when events arrive or the input closes.
    filled: Notify,
    /// Signalled when the sink took events out.
    drained: Notify,
    metrics: SinkBufferMetrics,
}

struct Queue {
    events: VecDeque<Event>,
    closed: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The sink's end of its memory buffer.
pub struct MemoryBuffer {
    shared: Arc<Shared>,
    pump: tokio::task::JoinHandle<()>,
}

impl MemoryBuffer {
    /// Starts pumping `input` into a queue of at most `max_events`.
    pub fn new(
        input: InputReceiver,
        max_events: usize,
        when_full: WhenFull,
        telemetry: ComponentTelemetry,
    ) -> Self {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                events: VecDeque::new(),
                closed: false,
            }),
            filled: Notify::new(),
            drained: Notify::new(),
            metrics: telemetry.sink_buffer("memory", BufferCapacity::Events(max_events)),
        });
        let pump = tokio::spawn(pump(
            input,
            max_events,
            when_full,
            Arc::clone(&shared),
            telemetry,
        ));
        Self { shared, pump }
    }

    /// Up to `max` events, waiting until there is at least one; `None` once the input has
    /// closed and everything was taken. Cancel-safe: events are only removed when returned.
    pub async fn next(&mut self, max: usize) -> Option<Vec<Event>> {
        loop {
            let filled = self.shared.filled.notified();
            {
                let mut queue = self.shared.lock();
                if !queue.events.is_empty() {
                    let take = queue.events.len().min(max.max(1));
                    let events: Vec<Event> = queue.events.drain(..take).collect();
                    drop(queue);
                    self.shared.metrics.events.dec_by(take as i64);
                    self.shared.metrics.sent.inc_by(take as u64);
                    self.shared.drained.notify_one();
                    return Some(events);
                }
                if queue.closed {
                    return None;
                }
            }
            filled.await;
        }
    }

    /// Events held right now.
    pub fn len(&self) -> usize {
        self.shared.lock().events.len()
    }
}

impl Drop for MemoryBuffer {
    fn drop(&mut self) {
        // A sink that stops early loses what it holds: the pump's input receiver then
        // fails what is still queued in the channel, and these fail with the queue.
        self.pump.abort();
        let mut queue = self.shared.lock();
        self.shared.metrics.events.dec_by(queue.events.len() as i64);
        for event in queue.events.drain(..) {
            event.fail_delivery();
        }
    }
}

async fn pump(
    mut input: InputReceiver,
    max_events: usize,
    when_full: WhenFull,
    shared: Arc<Shared>,
    telemetry: ComponentTelemetry,
) {
    while let Some(batch) = input.recv().await {
        let mut incoming: Vec<Event> = batch.into_iter().collect();
        loop {
            let drained = shared.drained.notified();
            let Some(dropped) = admit(&shared, max_events, when_full, &mut incoming) else {
                drained.await;
                continue;
            };
            shared.filled.notify_one();
            BufferDiscarded {
                count: dropped,
                buffer: &shared.metrics,
            }
            .emit(&telemetry);
            break;
        }
    }
    shared.lock().closed = true;
    shared.filled.notify_one();
}

/// Moves `incoming` into the queue as `when_full` says; returns how many events were
/// dropped, or `None` when the queue is full and the policy is to wait.
fn admit(
    shared: &Shared,
    max_events: usize,
    when_full: WhenFull,
    incoming: &mut Vec<Event>,
) -> Option<usize> {
    let mut queue = shared.lock();
    let before = queue.events.len();
    let offered = incoming.len();
    let room = max_events.saturating_sub(before);
    let dropped = match when_full {
        WhenFull::Block if room == 0 => return None,
        // Overshoot by up to one batch rather than split it: the bound stays a bound.
        WhenFull::Block => {
            queue.events.extend(incoming.drain(..));
            0
        }
        WhenFull::DropNewest => {
            let kept = incoming.len().min(room);
            let dropped = incoming.len() - kept;
            queue.events.extend(incoming.drain(..kept));
            incoming.clear();
            dropped
        }
        WhenFull::DropOldest => {
            queue.events.extend(incoming.drain(..));
            let excess = queue.events.len().saturating_sub(max_events);
            queue.events.drain(..excess);
            excess
        }
    };
    let after = queue.events.len();
    drop(queue);
    shared.metrics.received.inc_by((offered - dropped) as u64);
    shared.metrics.events.inc_by(after as i64 - before as i64);
    Some(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffers::tests::{batch, ids, telemetry};
    use crate::topology::channel::input_channel;

    async fn run(when_full: WhenFull) -> Vec<i64> {
        let t = telemetry();
        let (tx, rx) = input_channel(&t, 8);
        let mut buffer = MemoryBuffer::new(rx, 4, when_full, t);
        tx.send_for_test(batch(0..3)).await;
        tx.send_for_test(batch(3..6)).await;
        drop(tx);
        // Let the pump take both batches before the sink reads anything.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let mut seen = Vec::new();
        while let Some(events) = buffer.next(100).await {
            seen.extend(ids(&events));
        }
        seen
    }

    #[tokio::test]
    async fn block_keeps_everything() {
        assert_eq!(run(WhenFull::Block).await, vec![0, 1, 2, 3, 4, 5]);
    }

    #[tokio::test]
    async fn drop_newest_keeps_the_first() {
        assert_eq!(run(WhenFull::DropNewest).await, vec![0, 1, 2, 3]);
    }

    #[tokio::test]
    async fn drop_oldest_keeps_the_last() {
        assert_eq!(run(WhenFull::DropOldest).await, vec![2, 3, 4, 5]);
    }
}
