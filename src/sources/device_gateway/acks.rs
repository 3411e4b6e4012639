//! The QoS 1 publishes of one connection waiting for their PUBACK, in arrival order (MQTT
//! requires PUBACKs in that order). A publish's PUBACK may go once every sink on its
//! path has committed its readings; one that fails, or is not committed within
//! `ack_timeout` of its arrival, is never acknowledged: the session closes the
//! connection, and the device sends it (and what followed it) again.
//!
//! A queue the session polls, not a task of its own: an idle connection holds an empty
//! `VecDeque` (no allocation) rather than a task and a channel.

use std::collections::VecDeque;
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::dedupe::Remember;
use crate::event::DeliveryStatus;

/// A publish waiting for its PUBACK.
struct Pending {
    pkid: u16,
    /// The outcome of its readings, unless it needs no commit (it went to
    /// `<id>.errors`, was a duplicate, or was a `$iothub` request).
    outcome: Option<oneshot::Receiver<DeliveryStatus>>,
    /// Its `$.mid`, to remember once committed.
    remember: Option<Remember>,
    deadline: Instant,
}

/// The publish at the head was lost or not committed in time.
pub(super) struct NotCommitted;

pub(super) struct Acks {
    queue: VecDeque<Pending>,
    timeout: Duration,
    /// Publishes waiting for their commit, across the gateway.
    waiting: Gauge,
}

impl Acks {
    pub(super) fn new(timeout: Duration, waiting: Gauge) -> Self {
        Self {
            queue: VecDeque::new(),
            timeout,
            waiting,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.queue.len()
    }

    /// Queues publish `pkid`'s PUBACK behind those before it.
    pub(super) fn push(
        &mut self,
        pkid: u16,
        outcome: Option<oneshot::Receiver<DeliveryStatus>>,
        remember: Option<Remember>,
    ) {
        if outcome.is_some() {
            self.waiting.inc();
        }
        self.queue.push_back(Pending {
            pkid,
            outcome,
            remember,
            deadline: Instant::now() + self.timeout,
        });
    }

    /// The packet id of the next PUBACK to send, once its publish is committed. Never
    /// resolves while nothing waits. Cancel-safe: the head stays queued until settled.
    pub(super) async fn next(&mut self) -> Result<u16, NotCommitted> {
        let Some(head) = self.queue.front_mut() else {
            return std::future::pending().await;
        };
        let committed = match &mut head.outcome {
            None => true,
            Some(outcome) => matches!(
                tokio::time::timeout_at(head.deadline, outcome).await,
                Ok(Ok(DeliveryStatus::Committed))
            ),
        };
        self.settle_head(committed)
    }

    /// The packet id of the next PUBACK if its publish is committed already.
    pub(super) fn ready(&mut self) -> Option<u16> {
        let head = self.queue.front_mut()?;
        let committed = match &mut head.outcome {
            None => true,
            Some(outcome) => matches!(outcome.try_recv(), Ok(DeliveryStatus::Committed)),
        };
        // Not yet, or failed: `next` waits for it, or reports the failure.
        committed.then(|| self.settle_head(true).ok()).flatten()
    }

    fn settle_head(&mut self, committed: bool) -> Result<u16, NotCommitted> {
        let Some(head) = self.queue.pop_front() else {
            return Err(NotCommitted);
        };
        if head.outcome.is_some() {
            self.waiting.dec();
        }
        if !committed {
            return Err(NotCommitted);
        }
        if let Some(remember) = head.remember {
            remember.committed();
        }
        if self.queue.is_empty() {
            // Idle again: don't keep the ring a burst grew.
            self.queue = VecDeque::new();
        }
        Ok(head.pkid)
    }
}

impl Drop for Acks {
    /// What is still queued will not be acknowledged: lower the gauge for it.
    fn drop(&mut self) {
        let waiting = self.queue.iter().filter(|p| p.outcome.is_some()).count();
        self.waiting.dec_by(waiting as i64);
    }
}
