//! The wires between components: channels of [`EventBatch`]es, bounded in events.
//!
//! Each consuming component owns one channel; every upstream output that feeds it holds a
//! sender (fan-in). An output with several consumers sends to each in turn (fan-out),
//! waiting for room in every one, so a slow consumer slows its producers instead of losing
//! events: backpressure travels up the graph to the sources.
//!
//! The bound counts events, not batches, since one batch can be a whole request: a batch
//! takes a permit per event from the channel's semaphore and gives them back when the
//! consumer takes it. A batch larger than the whole capacity takes every permit, so it
//! waits until the channel is empty and then travels alone: it is slowed, never stuck.
//!
//! An output's consumers are a [`Targets`] list that the topology can swap while the
//! producer runs: that is how a reload wires a new sink to a running source without
//! stopping it.

use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::tap::TapPoint;
use crate::event::{Event, EventBatch};
use crate::telemetry::events::{EventsDiscarded, EventsReceived};
use crate::telemetry::trace::Hops;
use crate::telemetry::{BufferMetrics, ComponentTelemetry, InternalEvent};

/// Events a component's input channel holds unless `channel_max_events` says otherwise.
pub const DEFAULT_CHANNEL_EVENTS: std::num::NonZeroUsize =
    std::num::NonZeroUsize::new(8192).unwrap();

/// A batch in a channel, with the permits it holds there.
type Queued = (EventBatch, OwnedSemaphorePermit);

/// The room of one channel, in events.
#[derive(Clone)]
struct Room {
    permits: Arc<Semaphore>,
    capacity: usize,
    buffer: BufferMetrics,
}

impl Room {
    /// Waits until the channel has room for `events` (all of it, for a batch larger than
    /// the capacity); `None` once the consumer has stopped.
    async fn take(&self, events: usize) -> Option<OwnedSemaphorePermit> {
        let wanted = events.clamp(1, self.capacity);
        // At most the capacity, which fits a u32 (checked when the channel was made).
        let permit = Arc::clone(&self.permits)
            .acquire_many_owned(wanted as u32)
            .await
            .ok()?;
        self.buffer.events.inc_by(events as i64);
        Some(permit)
    }

    fn update_utilization(&self) {
        let held = self.capacity - self.permits.available_permits();
        self.buffer
            .utilization
            .set(held as f64 / self.capacity as f64);
    }
}

/// The producing end of a consumer's input channel.
#[derive(Clone)]
pub struct InputSender {
    tx: mpsc::UnboundedSender<Queued>,
    room: Room,
}

impl InputSender {
    /// Sends one batch into the channel as an upstream output would, waiting for room.
    #[cfg(test)]
    pub(crate) async fn send_for_test(&self, batch: EventBatch) {
        if let Some(permit) = self.room.take(batch.len()).await {
            let _ = self.tx.send((batch, permit));
        }
    }

    /// A handle that does not keep the channel open: a channel closes when its last
    /// producer is gone, which is how a finished source drains the graph.
    pub fn downgrade(&self) -> WeakInputSender {
        WeakInputSender {
            tx: self.tx.downgrade(),
            room: self.room.clone(),
        }
    }

    /// Sends `batch` once there is room; gives it back if the consumer has stopped.
    async fn send(&self, batch: EventBatch) -> Result<(), EventBatch> {
        let count = batch.len();
        let Some(permit) = self.room.take(count).await else {
            return Err(batch);
        };
        self.room.update_utilization();
        self.tx.send((batch, permit)).map_err(|unsent| {
            self.room.buffer.events.dec_by(count as i64);
            unsent.0.0
        })
    }
}

/// An [`InputSender`] that does not keep its channel open.
#[derive(Clone)]
pub struct WeakInputSender {
    tx: mpsc::WeakUnboundedSender<Queued>,
    room: Room,
}

impl WeakInputSender {
    /// The sender, unless every producer has gone and the channel closed.
    pub fn upgrade(&self) -> Option<InputSender> {
        Some(InputSender {
            tx: self.tx.upgrade()?,
            room: self.room.clone(),
        })
    }
}

/// The consuming end of a component's input channel; counts what it hands out.
pub struct InputReceiver {
    rx: mpsc::UnboundedReceiver<Queued>,
    room: Room,
    telemetry: ComponentTelemetry,
    /// `weir tap --inputs-of`.
    tap: Arc<TapPoint>,
    /// A sink's or action's hops of sampled readings (others record theirs at their outputs).
    hops: Option<Hops>,
}

/// An input channel holding at most `capacity` events (at least 1), instrumented with its
/// buffer gauges.
pub fn input_channel(
    telemetry: &ComponentTelemetry,
    capacity: usize,
) -> (InputSender, InputReceiver) {
    let capacity = capacity.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
    let (tx, rx) = mpsc::unbounded_channel();
    let room = Room {
        permits: Arc::new(Semaphore::new(capacity)),
        capacity,
        buffer: telemetry.buffer(capacity),
    };
    (
        InputSender {
            tx,
            room: room.clone(),
        },
        InputReceiver {
            rx,
            room,
            tap: TapPoint::unreachable(telemetry.component_id()),
            telemetry: telemetry.clone(),
            hops: None,
        },
    )
}

impl InputReceiver {
    /// The receiver, offering what it hands out to the taps of `point`.
    pub(crate) fn with_tap(mut self, point: Arc<TapPoint>) -> Self {
        self.tap = point;
        self
    }

    /// The receiver, recording the hop of every sampled reading it hands out (the last
    /// hop of a reading: its sink or action).
    pub(crate) fn recording_hops(mut self) -> Self {
        self.hops = Some(self.telemetry.hops(None));
        self
    }

    /// The next batch, or `None` once every upstream has finished.
    pub async fn recv(&mut self) -> Option<EventBatch> {
        let (batch, permit) = self.rx.recv().await?;
        // Taken: its room is free for the producers again.
        drop(permit);
        self.room.buffer.events.dec_by(batch.len() as i64);
        self.room.update_utilization();
        EventsReceived {
            count: batch.len(),
            bytes: 0,
        }
        .emit(&self.telemetry);
        self.tap.offer(&batch);
        if let Some(hops) = &self.hops {
            hops.record(&batch.events);
        }
        Some(batch)
    }
}

/// The consumers of one output; swapped as a whole when the topology is rewired.
pub type Targets = Arc<ArcSwap<Vec<InputSender>>>;

/// A target list holding `senders`.
pub fn targets(senders: Vec<InputSender>) -> Targets {
    Arc::new(ArcSwap::from_pointee(senders))
}

impl Drop for InputReceiver {
    /// A component that stops before its input is drained (it failed) loses what is
    /// queued: say so to the sources waiting for those events.
    fn drop(&mut self) {
        self.rx.close();
        // Producers waiting for room give up instead of waiting forever.
        self.room.permits.close();
        while let Ok((batch, _permit)) = self.rx.try_recv() {
            batch.fail_deliveries();
        }
    }
}

/// One output of a component and the consumers wired to it.
#[derive(Clone)]
pub struct Fanout {
    name: String,
    targets: Targets,
    sent: Counter,
    telemetry: ComponentTelemetry,
    /// `weir tap --outputs-of`.
    tap: Arc<TapPoint>,
    hops: Hops,
    /// A source's `trace.sample`: the share of readings it samples (0: none).
    sample: f64,
}

impl Fanout {
    pub fn new(name: &str, targets: Targets, telemetry: &ComponentTelemetry) -> Self {
        Self {
            name: name.to_owned(),
            sent: telemetry.sent_events(name),
            targets,
            tap: TapPoint::unreachable(telemetry.component_id()),
            hops: telemetry.hops(Some(name)),
            telemetry: telemetry.clone(),
            sample: 0.0,
        }
    }

    /// The output, offering what it sends to the taps of `point`.
    pub(crate) fn with_tap(mut self, point: Arc<TapPoint>) -> Self {
        self.tap = point;
        self
    }

    /// The output of a source that samples `share` of its readings for tracing.
    pub(crate) fn sampling(self, share: f64) -> Self {
        Self {
            sample: share,
            ..self
        }
    }

    /// The output's name: `default` or a named output such as `errors`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether any component reads this output.
    pub fn is_connected(&self) -> bool {
        !self.targets.load().is_empty()
    }

    /// Sends a batch to every consumer, waiting for room in each.
    ///
    /// Events sent to an output nobody reads are counted as discarded (not intentional), so
    /// even an unwired `.errors` output never loses an event silently.
    pub async fn send(&self, mut batch: EventBatch) {
        let count = batch.len();
        if count == 0 {
            return;
        }
        if self.sample > 0.0 {
            sample(&mut batch, self.sample);
        }
        self.tap.offer(&batch);
        self.hops.record(&batch.events);
        // The list current when the send starts; a reload swapping it meanwhile affects the
        // next batch.
        let targets = self.targets.load_full();
        let Some((last, rest)) = targets.split_last() else {
            batch.fail_deliveries();
            EventsDiscarded {
                count,
                intentional: false,
            }
            .emit(&self.telemetry);
            return;
        };
        for target in rest {
            self.send_to(target, batch.clone()).await;
        }
        self.send_to(last, batch).await;
        self.sent.inc_by(count as u64);
    }

    async fn send_to(&self, target: &InputSender, batch: EventBatch) {
        let count = batch.len();
        if let Err(unsent) = target.send(batch).await {
            // The consumer has stopped (it failed); its failure is reported by the topology.
            unsent.fail_deliveries();
            EventsDiscarded {
                count,
                intentional: false,
            }
            .emit(&self.telemetry);
        }
    }
}

/// Samples `share` of the readings of `batch` for tracing.
#[cold]
fn sample(batch: &mut EventBatch, share: f64) {
    for event in &mut batch.events {
        if !event.meta().is_sampled() && rand::random::<f64>() < share {
            event.meta_mut().sample();
        }
    }
}

/// All outputs of one component: the default one and the named ones.
#[derive(Clone)]
pub struct Outputs {
    default: Option<Fanout>,
    named: Vec<Fanout>,
}

impl Outputs {
    pub fn new(default: Option<Fanout>, named: Vec<Fanout>) -> Self {
        Self { default, named }
    }

    /// Sends to the default output.
    pub async fn send(&self, batch: EventBatch) {
        match &self.default {
            Some(default) => default.send(batch).await,
            None => {
                debug_assert!(false, "component sent to a default output it does not have");
                batch.fail_deliveries();
            }
        }
    }

    /// Whether any component reads the named output `name`.
    pub fn named_connected(&self, name: &str) -> bool {
        self.named
            .iter()
            .any(|f| f.name == name && f.is_connected())
    }

    /// Sends to a named output (`errors`, a route). Sending to an undeclared output is a
    /// programming error in the component; the events are counted as discarded.
    pub async fn send_named(&self, name: &str, batch: EventBatch) {
        match self.named.iter().find(|f| f.name == name) {
            Some(fanout) => fanout.send(batch).await,
            None => {
                debug_assert!(false, "component sent to undeclared output `{name}`");
                batch.fail_deliveries();
                if let Some(default) = &self.default {
                    EventsDiscarded {
                        count: batch.len(),
                        intentional: false,
                    }
                    .emit(&default.telemetry);
                }
            }
        }
    }

    /// Sends each non-empty buffer of `buffered` to its output.
    pub(crate) async fn flush(&self, buffered: &mut PortBuffers) {
        if !buffered.default.is_empty() {
            self.send(EventBatch::new(std::mem::take(&mut buffered.default)))
                .await;
        }
        for (name, events) in &mut buffered.named {
            if !events.is_empty() {
                self.send_named(name, EventBatch::new(std::mem::take(events)))
                    .await;
            }
        }
    }
}

/// Events a component produced for each of its outputs while handling one batch.
#[derive(Default)]
pub(crate) struct PortBuffers {
    pub default: Vec<Event>,
    pub named: Vec<(String, Vec<Event>)>,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::buffers::tests::{batch, telemetry};

    /// Whether `out` sends `events` while nobody reads (a send with room takes
    /// microseconds; 5 s leaves a loaded machine its margin).
    async fn sends(out: &Fanout, events: EventBatch) -> bool {
        tokio::time::timeout(Duration::from_secs(5), out.send(events))
            .await
            .is_ok()
    }

    /// Whether sending `events` waits for room (still waiting after 200 ms).
    async fn waits(out: &Fanout, events: EventBatch) -> bool {
        tokio::time::timeout(Duration::from_millis(200), out.send(events))
            .await
            .is_err()
    }

    fn channel(capacity: usize) -> (Fanout, InputReceiver) {
        let t = telemetry();
        let (tx, rx) = input_channel(&t, capacity);
        (Fanout::new("default", targets(vec![tx]), &t), rx)
    }

    #[tokio::test]
    async fn a_producer_waits_for_room_counted_in_events_not_batches() {
        let (out, mut rx) = channel(10);
        assert!(sends(&out, batch(0..4)).await);
        assert!(sends(&out, batch(4..8)).await);
        // Two batches, 8 of 10 events: a third batch of 4 waits, one of 2 fits.
        assert!(waits(&out, batch(8..12)).await);
        assert!(sends(&out, batch(8..10)).await);
        assert!(waits(&out, batch(10..11)).await);
        assert_eq!(rx.room.buffer.events.get(), 10);
        assert_eq!(rx.room.buffer.utilization.get(), 1.0);
        // Taking a batch gives its events' room back.
        assert_eq!(rx.recv().await.map(|b| b.len()), Some(4));
        assert!(sends(&out, batch(10..14)).await);
        assert!(waits(&out, batch(14..15)).await);
    }

    #[tokio::test]
    async fn a_batch_larger_than_the_channel_travels_alone() {
        let (out, mut rx) = channel(10);
        assert!(sends(&out, batch(0..1)).await);
        assert!(
            waits(&out, batch(1..26)).await,
            "it waits for an empty channel"
        );
        assert_eq!(rx.recv().await.map(|b| b.len()), Some(1));
        assert!(sends(&out, batch(1..26)).await, "then it passes");
        assert!(waits(&out, batch(26..27)).await, "and nothing joins it");
        assert_eq!(rx.recv().await.map(|b| b.len()), Some(25));
        assert!(sends(&out, batch(26..27)).await);
    }

    #[tokio::test]
    async fn a_producer_waiting_for_room_gives_up_when_the_consumer_stops() {
        let (out, rx) = channel(2);
        assert!(sends(&out, batch(0..2)).await);
        let waiting = tokio::spawn(async move { out.send(batch(2..4)).await });
        tokio::task::yield_now().await;
        drop(rx);
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("the send returns")
            .expect("without a panic");
    }
}
