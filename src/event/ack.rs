//! End-to-end acknowledgement: a source learns when everything it accepted is safe.
//!
//! A source that must answer for what it received (an HTTP request, a broker delivery)
//! attaches one [`Delivery`] to every event of it. Each event, and each copy a fan-out
//! makes, holds a reference; an event lets go of it when its journey ends — a sink has
//! committed it, a filter dropped it on purpose, a window folded it. When the last
//! reference goes, the source hears the outcome: [`DeliveryStatus::Committed`], or
//! [`DeliveryStatus::Failed`] if any copy was lost on the way (an output nobody reads, a
//! component that failed). Counting references instead of acknowledging explicitly means a
//! component cannot forget to acknowledge: dropping an event is the acknowledgement, and
//! the one place that drops events without handling them marks them failed first.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::oneshot;

/// The outcome of a delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryStatus {
    /// Every event reached a sink that committed it, or was intentionally dropped.
    Committed,
    /// At least one event (or copy of one) was lost.
    Failed,
}

/// The shared state of one delivery; its last reference reports the outcome.
#[derive(Debug)]
pub struct Delivery {
    failed: AtomicBool,
    report: Mutex<Option<oneshot::Sender<DeliveryStatus>>>,
}

impl Delivery {
    /// A new delivery and the receiver of its outcome.
    pub fn new() -> (std::sync::Arc<Delivery>, oneshot::Receiver<DeliveryStatus>) {
        let (tx, rx) = oneshot::channel();
        let delivery = Delivery {
            failed: AtomicBool::new(false),
            report: Mutex::new(Some(tx)),
        };
        (std::sync::Arc::new(delivery), rx)
    }

    /// Makes `events` one delivery; the receiver hears its outcome.
    pub fn attach_all(events: &mut [super::Event]) -> oneshot::Receiver<DeliveryStatus> {
        let (delivery, outcome) = Self::new();
        for event in events {
            event.attach(&delivery);
        }
        outcome
    }

    /// Records that an event of this delivery was lost.
    pub fn fail(&self) {
        self.failed.store(true, Ordering::Release);
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        let status = match self.failed.load(Ordering::Acquire) {
            true => DeliveryStatus::Failed,
            false => DeliveryStatus::Committed,
        };
        let report = self
            .report
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(report) = report {
            // The source may have stopped waiting (it timed out); nothing to tell then.
            let _ = report.send(status);
        }
    }
}

/// Deliveries a component holds while it works on their events, failed if it is dropped
/// before [`Unsettled::settle`]: a task stopped mid-way (a stop out of time, an aborted
/// sink) must not let its sources take what it was working on as committed.
#[derive(Debug, Default)]
pub struct Unsettled(Vec<std::sync::Arc<Delivery>>);

impl Unsettled {
    /// Holds the deliveries of `events`, each once (consecutive events mostly share one).
    pub fn of(events: &[super::Event]) -> Self {
        let mut held: Vec<std::sync::Arc<Delivery>> = Vec::new();
        for delivery in events.iter().filter_map(super::Event::delivery) {
            if held
                .last()
                .is_none_or(|last| !std::sync::Arc::ptr_eq(last, delivery))
            {
                held.push(std::sync::Arc::clone(delivery));
            }
        }
        Self(held)
    }

    /// Adds `other`'s deliveries to these.
    pub fn extend(&mut self, mut other: Unsettled) {
        self.0.append(&mut other.0);
    }

    /// The work is done: let go without failing anything.
    pub fn settle(mut self) {
        self.0.clear();
    }

    /// The work is lost: fail every delivery now.
    pub fn fail(mut self) {
        for delivery in self.0.drain(..) {
            delivery.fail();
        }
    }
}

impl Drop for Unsettled {
    fn drop(&mut self) {
        for delivery in self.0.drain(..) {
            delivery.fail();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unsettled_deliveries_fail_unless_settled() {
        let event = |delivery: &std::sync::Arc<Delivery>| {
            let mut event = crate::event::Event::new(
                None,
                crate::event::Fields::new(),
                std::sync::Arc::new(crate::event::EventMeta::received_by("t".into())),
            );
            event.attach(delivery);
            event
        };
        let (settled, settled_outcome) = Delivery::new();
        let held = Unsettled::of(&[event(&settled), event(&settled)]);
        drop(settled);
        held.settle();
        assert_eq!(settled_outcome.await.unwrap(), DeliveryStatus::Committed);

        let (dropped, dropped_outcome) = Delivery::new();
        let held = Unsettled::of(&[event(&dropped)]);
        drop(dropped);
        drop(held);
        assert_eq!(dropped_outcome.await.unwrap(), DeliveryStatus::Failed);
    }

    #[test]
    fn the_last_reference_reports_once() {
        let (delivery, mut outcome) = Delivery::new();
        let copy = std::sync::Arc::clone(&delivery);
        drop(delivery);
        assert!(outcome.try_recv().is_err(), "a copy is still travelling");
        drop(copy);
        assert_eq!(outcome.try_recv(), Ok(DeliveryStatus::Committed));
    }

    #[test]
    fn one_lost_copy_fails_the_delivery() {
        let (delivery, mut outcome) = Delivery::new();
        let copy = std::sync::Arc::clone(&delivery);
        copy.fail();
        drop(copy);
        drop(delivery);
        assert_eq!(outcome.try_recv(), Ok(DeliveryStatus::Failed));
    }
}
