//! The wires between components: bounded channels of [`EventBatch`]es.
//!
//! Each consuming component owns one bounded channel; every upstream output that feeds it
//! holds a sender (fan-in). An output with several consumers sends to each in turn (fan-out),
//! waiting for room in every one, so a slow consumer slows its producers instead of losing
//! events: backpressure travels up the graph to the sources.
//!
//! An output's consumers are a [`Targets`] list that the topology can swap while the
//! producer runs: that is how a reload wires a new sink to a running source without
//! stopping it.

use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;

use crate::event::{Event, EventBatch};
use crate::telemetry::events::{EventsDiscarded, EventsReceived};
use crate::telemetry::{BufferMetrics, ComponentTelemetry, InternalEvent};

/// Input buffers hold this many batches by default.
pub const DEFAULT_BUFFER_BATCHES: usize = 32;

/// The producing end of a consumer's input channel.
#[derive(Clone)]
pub struct InputSender {
    tx: mpsc::Sender<EventBatch>,
    buffer: BufferMetrics,
}

impl InputSender {
    /// Sends one batch straight into the channel, as an upstream output would.
    #[cfg(test)]
    pub(crate) async fn send_for_test(&self, batch: EventBatch) {
        self.buffer.events.inc_by(batch.len() as i64);
        let _ = self.tx.send(batch).await;
    }

    /// A handle that does not keep the channel open: a channel closes when its last
    /// producer is gone, which is how a finished source drains the graph.
    pub fn downgrade(&self) -> WeakInputSender {
        WeakInputSender {
            tx: self.tx.downgrade(),
            buffer: self.buffer.clone(),
        }
    }
}

/// An [`InputSender`] that does not keep its channel open.
#[derive(Clone)]
pub struct WeakInputSender {
    tx: mpsc::WeakSender<EventBatch>,
    buffer: BufferMetrics,
}

impl WeakInputSender {
    /// The sender, unless every producer has gone and the channel closed.
    pub fn upgrade(&self) -> Option<InputSender> {
        Some(InputSender {
            tx: self.tx.upgrade()?,
            buffer: self.buffer.clone(),
        })
    }
}

/// The consuming end of a component's input channel; counts what it hands out.
pub struct InputReceiver {
    rx: mpsc::Receiver<EventBatch>,
    buffer: BufferMetrics,
    telemetry: ComponentTelemetry,
}

/// A bounded input channel for `consumer`, instrumented with its buffer gauges.
pub fn input_channel(
    telemetry: &ComponentTelemetry,
    capacity: usize,
) -> (InputSender, InputReceiver) {
    let (tx, rx) = mpsc::channel(capacity);
    let buffer = telemetry.buffer(capacity);
    (
        InputSender {
            tx,
            buffer: buffer.clone(),
        },
        InputReceiver {
            rx,
            buffer,
            telemetry: telemetry.clone(),
        },
    )
}

impl InputReceiver {
    /// The next batch, or `None` once every upstream has finished.
    pub async fn recv(&mut self) -> Option<EventBatch> {
        let batch = self.rx.recv().await?;
        self.buffer.events.dec_by(batch.len() as i64);
        self.buffer
            .utilization
            .set(self.rx.len() as f64 / self.rx.max_capacity() as f64);
        EventsReceived {
            count: batch.len(),
            bytes: 0,
        }
        .emit(&self.telemetry);
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
        while let Ok(batch) = self.rx.try_recv() {
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
}

impl Fanout {
    pub fn new(name: &str, targets: Targets, telemetry: &ComponentTelemetry) -> Self {
        Self {
            name: name.to_owned(),
            sent: telemetry.sent_events(name),
            targets,
            telemetry: telemetry.clone(),
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
    pub async fn send(&self, batch: EventBatch) {
        let count = batch.len();
        if count == 0 {
            return;
        }
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
        target.buffer.events.inc_by(count as i64);
        if let Err(unsent) = target.tx.send(batch).await {
            // The consumer has stopped (it failed); its failure is reported by the topology.
            unsent.0.fail_deliveries();
            target.buffer.events.dec_by(count as i64);
            EventsDiscarded {
                count,
                intentional: false,
            }
            .emit(&self.telemetry);
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
