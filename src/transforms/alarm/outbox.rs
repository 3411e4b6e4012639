//! The alarm's outbox: transitions the alarm recorded and has not yet handed to its
//! consumers, kept in its state file so a crash cannot lose them.
//!
//! A transition is recorded here, then the state file (keys and outbox) is written, and
//! only then does the transition leave, carrying a delivery of the alarm's own. It is
//! *handed* when that delivery reports `Committed`: every consumer took it for good (an
//! action's disk buffer made it durable; a memory-buffered action sent or dead-lettered
//! it). Then it leaves the outbox, and the reading that caused it is acknowledged to its
//! source, which therefore still waits for the notification's durability, not just for the
//! alarm's. A transition whose delivery failed (a consumer lost it) stays recorded and is
//! emitted again when the alarm next starts, as is everything recorded before a crash.
//! Each transition carries its alarm's sequence number (`alarm_seq`), so a repeat has the
//! same idempotency key as the original.
//!
//! The outbox holds at most [`MAX_PENDING`] transitions: one whose consumers keep losing
//! it (an output nobody reads) must not grow the state file without end. Past that the
//! oldest is given up, counted as an error and logged.
//!
//! Outcomes are polled, never awaited: the transform is synchronous, so each delivery's
//! receiver is polled with a waker that fires the alarm's wake signal, and the next
//! `on_wake` collects what was handed.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use indexmap::IndexMap;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, oneshot};

use crate::config::ComponentId;
use crate::event::{Delivery, DeliveryStatus, Event, EventMeta, Fields};

/// The most transitions kept waiting for their handover.
pub const MAX_PENDING: usize = 1000;

/// A transition as the state file keeps it until it is handed.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct PendingTransition {
    pub alarm_id: String,
    pub seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// The event time of the transition event.
    pub time: Timestamp,
    /// The transition event's fields (the reading's, plus `alarm`, `state`, ...).
    pub fields: Fields,
}

/// Which transition: its alarm and its sequence number in that alarm.
type TransitionId = (String, u64);

struct Entry {
    record: PendingTransition,
    /// Whether the consumers took it; `None` while it waits for the next start (restored
    /// from the file, or its handover failed).
    handover: Option<oneshot::Receiver<DeliveryStatus>>,
    /// The delivery of the reading that caused the transition: released once it is handed.
    source: Option<Arc<Delivery>>,
}

/// What [`Outbox::collect`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Collected {
    pub handed: usize,
    /// Transitions a consumer lost: kept, and emitted again at the next start.
    pub failed: Vec<(String, u64)>,
}

impl Collected {
    /// Whether the outbox changed (and the state file should be written).
    pub fn changed(&self) -> bool {
        self.handed > 0
    }
}

/// Transitions not yet handed, in the order they were recorded.
pub struct Outbox {
    entries: IndexMap<TransitionId, Entry>,
    /// Restored from the state file and not yet emitted in this run.
    restored: bool,
    component: ComponentId,
    waker: Waker,
}

/// Fires the alarm's wake signal when a handover resolves.
struct WakeAlarm(Arc<Notify>);

impl Wake for WakeAlarm {
    fn wake(self: Arc<Self>) {
        self.0.notify_one();
    }
}

impl Outbox {
    /// The outbox with what the state file held; `wake` is the alarm's wake signal, fired
    /// now if there is something to emit again.
    pub fn new(
        component: ComponentId,
        restored: Vec<PendingTransition>,
        wake: Arc<Notify>,
    ) -> Self {
        let entries: IndexMap<TransitionId, Entry> = restored
            .into_iter()
            .map(|record| {
                let id = (record.alarm_id.clone(), record.seq);
                let entry = Entry {
                    record,
                    handover: None,
                    source: None,
                };
                (id, entry)
            })
            .collect();
        let restored = !entries.is_empty();
        if restored {
            wake.notify_one();
        }
        Self {
            entries,
            restored,
            component,
            waker: Waker::from(Arc::new(WakeAlarm(wake))),
        }
    }

    /// Records the transition `event` (which carries `alarm_id` and `alarm_seq`) before
    /// the state file is written; returns the oldest transitions given up to make room.
    pub fn record(&mut self, event: &Event) -> Vec<PendingTransition> {
        let Some(id) = transition_id(event) else {
            return Vec::new();
        };
        let record = PendingTransition {
            alarm_id: id.0.clone(),
            seq: id.1,
            device_id: event.device_id.as_deref().map(str::to_owned),
            time: event.time,
            fields: event.fields().clone(),
        };
        let entry = Entry {
            record,
            handover: None,
            source: event.delivery().cloned(),
        };
        self.entries.insert(id, entry);
        let mut given_up = Vec::new();
        while self.entries.len() > MAX_PENDING {
            if let Some((_, entry)) = self.entries.shift_remove_index(0) {
                if let Some(source) = &entry.source {
                    source.fail();
                }
                given_up.push(entry.record);
            }
        }
        given_up
    }

    /// What the state file keeps.
    pub fn records(&self) -> Vec<&PendingTransition> {
        self.entries.values().map(|e| &e.record).collect()
    }

    /// The recorded transition `event`, now durable, leaving with a delivery of the alarm's.
    pub fn hand_over(&mut self, mut event: Event) -> Event {
        if let Some(entry) = transition_id(&event).and_then(|id| self.entries.get_mut(&id)) {
            entry.handover = Some(watch(&mut event, &self.waker));
        }
        event
    }

    /// Forgets the recorded transition `event` because the state file could not be
    /// written: it leaves with its reading's delivery, as if there were no outbox.
    pub fn abandon(&mut self, event: &Event) {
        if let Some(id) = transition_id(event) {
            self.entries.shift_remove(&id);
        }
    }

    /// Once per run: the transitions restored from the state file, to emit again (each with
    /// a delivery of the alarm's).
    pub fn take_restored(&mut self) -> Vec<Event> {
        if !std::mem::take(&mut self.restored) {
            return Vec::new();
        }
        let component = self.component.as_arc();
        let mut events = Vec::new();
        for entry in self.entries.values_mut() {
            if entry.handover.is_some() {
                continue;
            }
            let record = &entry.record;
            let mut event = Event::new(
                record.device_id.as_deref().map(Into::into),
                record.fields.clone(),
                Arc::new(EventMeta::received_by(Arc::clone(&component))),
            );
            event.time = record.time;
            entry.handover = Some(watch(&mut event, &self.waker));
            events.push(event);
        }
        events
    }

    /// Collects the handovers that resolved: handed transitions leave the outbox (and
    /// release their reading's delivery); lost ones stay for the next start.
    pub fn collect(&mut self) -> Collected {
        let mut collected = Collected::default();
        let mut cx = Context::from_waker(&self.waker);
        self.entries.retain(|id, entry| {
            let Some(handover) = &mut entry.handover else {
                return true;
            };
            let status = match Pin::new(handover).poll(&mut cx) {
                Poll::Pending => return true,
                Poll::Ready(Ok(status)) => status,
                // The delivery vanished without a word: count it as lost.
                Poll::Ready(Err(_)) => DeliveryStatus::Failed,
            };
            entry.handover = None;
            match status {
                DeliveryStatus::Committed => {
                    collected.handed += 1;
                    false
                }
                DeliveryStatus::Failed => {
                    if let Some(source) = entry.source.take() {
                        source.fail();
                    }
                    collected.failed.push(id.clone());
                    true
                }
            }
        });
        collected
    }
}

/// Gives `event` a delivery of the alarm's and the receiver of its outcome, polled once so
/// that `waker` fires when the outcome is known.
fn watch(event: &mut Event, waker: &Waker) -> oneshot::Receiver<DeliveryStatus> {
    let (delivery, mut outcome) = Delivery::new();
    event.attach(&delivery);
    // The event holds the delivery: the outcome cannot be known yet.
    let _ = Pin::new(&mut outcome).poll(&mut Context::from_waker(waker));
    outcome
}

fn transition_id(event: &Event) -> Option<TransitionId> {
    let alarm_id = event.get("alarm_id")?.as_str()?;
    let seq = event.get("alarm_seq")?.as_u64()?;
    Some((alarm_id.to_owned(), seq))
}
