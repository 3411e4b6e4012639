//! The per-sink buffer: how many events a sink holds while its destination is slow, and
//! what happens when it is full (`when_full`).
//!
//! A pump task moves batches from the sink's input channel into a bounded queue of events;
//! the sink takes events out in the batch sizes its destination likes. With `block` (the
//! default) a full queue stops the pump, the input channel fills, and backpressure reaches
//! the sources: nothing is lost. `drop_newest` and `drop_oldest` make the sink lossy by
//! choice: what they drop is counted (`buffer_discarded_events_total`) and acknowledged
//! upstream as handled, since the user asked for it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::config::FieldProblem;
use crate::event::Event;
use crate::telemetry::ComponentTelemetry;
use crate::telemetry::InternalEvent;
use crate::telemetry::events::BufferDiscarded;
use crate::topology::channel::InputReceiver;

/// How many events a sink may hold, and what to do when it holds that many.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BufferConfig {
    /// Events held in memory before `when_full` applies.
    #[serde(default = "default_max_events")]
    pub max_events: usize,
    #[serde(default)]
    pub when_full: WhenFull,
}

fn default_max_events() -> usize {
    10_000
}

impl Default for BufferConfig {
    fn default() -> Self {
        Self {
            max_events: default_max_events(),
            when_full: WhenFull::default(),
        }
    }
}

impl BufferConfig {
    pub fn check(&self) -> Vec<FieldProblem> {
        match self.max_events {
            0 => vec![FieldProblem::at(
                ["buffer", "max_events"],
                "expected at least one event",
            )],
            _ => Vec::new(),
        }
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
    /// Drop the oldest held events to make room (counted).
    DropOldest,
}

struct Shared {
    queue: Mutex<Queue>,
    /// Signalled when events arrive or the input closes.
    filled: Notify,
    /// Signalled when the sink took events out.
    drained: Notify,
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

/// The sink's end of its buffer.
pub struct SinkBuffer {
    shared: Arc<Shared>,
    pump: tokio::task::JoinHandle<()>,
}

impl SinkBuffer {
    /// Starts pumping `input` into a buffer shaped by `config`.
    pub fn new(input: InputReceiver, config: BufferConfig, telemetry: ComponentTelemetry) -> Self {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                events: VecDeque::new(),
                closed: false,
            }),
            filled: Notify::new(),
            drained: Notify::new(),
        });
        let pump = tokio::spawn(pump(input, config, Arc::clone(&shared), telemetry));
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

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for SinkBuffer {
    fn drop(&mut self) {
        // A sink that stops early loses what it holds: the pump's input receiver then
        // fails what is still queued in the channel, and these fail with the queue.
        self.pump.abort();
        let mut queue = self.shared.lock();
        for event in queue.events.drain(..) {
            event.fail_delivery();
        }
    }
}

async fn pump(
    mut input: InputReceiver,
    config: BufferConfig,
    shared: Arc<Shared>,
    telemetry: ComponentTelemetry,
) {
    while let Some(batch) = input.recv().await {
        let mut incoming: Vec<Event> = batch.into_iter().collect();
        loop {
            let drained = shared.drained.notified();
            let Some(dropped) = admit(&shared, &config, &mut incoming) else {
                drained.await;
                continue;
            };
            shared.filled.notify_one();
            BufferDiscarded { count: dropped }.emit(&telemetry);
            break;
        }
    }
    shared.lock().closed = true;
    shared.filled.notify_one();
}

/// Moves `incoming` into the queue as `when_full` says; returns how many events were
/// dropped, or `None` when the queue is full and the policy is to wait.
fn admit(shared: &Shared, config: &BufferConfig, incoming: &mut Vec<Event>) -> Option<usize> {
    let mut queue = shared.lock();
    let room = config.max_events.saturating_sub(queue.events.len());
    let dropped = match config.when_full {
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
            let excess = queue.events.len().saturating_sub(config.max_events);
            queue.events.drain(..excess);
            excess
        }
    };
    Some(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ComponentId, ComponentKind};
    use crate::event::{EventBatch, EventMeta, Fields};
    use crate::telemetry::Telemetry;
    use crate::topology::channel::input_channel;

    fn telemetry() -> ComponentTelemetry {
        Telemetry::new().component(&ComponentId::new("s"), ComponentKind::Sink, "test")
    }

    fn batch(range: std::ops::Range<i64>) -> EventBatch {
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

    fn ids(events: &[Event]) -> Vec<i64> {
        events
            .iter()
            .filter_map(|e| e.get("i").and_then(|v| v.as_i64()))
            .collect()
    }

    async fn run(when_full: WhenFull) -> Vec<i64> {
        let t = telemetry();
        let (tx, rx) = input_channel(&t, 8);
        let mut buffer = SinkBuffer::new(
            rx,
            BufferConfig {
                max_events: 4,
                when_full,
            },
            t,
        );
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
