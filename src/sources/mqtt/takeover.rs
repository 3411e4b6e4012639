//! Telling a take-over loop from other disconnects.
//!
//! A broker keeps one connection per client id: when a second client connects with the
//! id, the broker closes the first one. Two weirs (or a weir and anything else) with the
//! same `client_id` then kick each other off in a loop, each reconnecting at once, and
//! split the session's messages between them. Retrying cannot fix that, so after
//! [`LIMIT`] take-overs within [`WINDOW`] the source fails with the reason.
//!
//! What counts as a take-over: under MQTT 5 the broker says so (DISCONNECT with reason
//! 0x8E, Session taken over). A 3.1.1 broker just closes the connection, so there a
//! connection the broker accepted and then closed within [`QUICK`] counts: the CONNACK
//! just before shows the network and the broker are fine. Failures to connect, timeouts
//! and errors weir raises itself never count.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::session::FailureKind;

/// Take-overs within [`WINDOW`] that fail the source.
pub(super) const LIMIT: usize = 5;
/// How far back take-overs are counted.
pub(super) const WINDOW: Duration = Duration::from_secs(60);
/// MQTT 3.1.1: a connection the broker closes this soon after accepting it counts.
pub(super) const QUICK: Duration = Duration::from_secs(10);

/// Recent take-overs of one source's connection.
#[derive(Default)]
pub(super) struct TakeOvers {
    /// When each counted take-over happened, oldest first, within [`WINDOW`].
    seen: VecDeque<Instant>,
    /// When the broker accepted the current connection; `None` between connections.
    accepted: Option<Instant>,
}

impl TakeOvers {
    /// The broker accepted a connection (CONNACK).
    pub fn accepted(&mut self, now: Instant) {
        self.accepted = Some(now);
    }

    /// The connection failed with `kind`; true once take-overs reached [`LIMIT`] within
    /// [`WINDOW`]. A connection counts once at most.
    pub fn failed(&mut self, kind: FailureKind, now: Instant) -> bool {
        let accepted = self.accepted.take();
        let taken_over = match kind {
            FailureKind::TakenOver => true,
            FailureKind::ClosedByBroker => {
                accepted.is_some_and(|at| now.saturating_duration_since(at) < QUICK)
            }
            FailureKind::Unauthorized | FailureKind::Other => false,
        };
        if taken_over {
            self.seen.push_back(now);
        }
        while self
            .seen
            .front()
            .is_some_and(|&at| now.saturating_duration_since(at) >= WINDOW)
        {
            self.seen.pop_front();
        }
        self.seen.len() >= LIMIT
    }

    /// Take-overs counted within [`WINDOW`].
    #[cfg(test)]
    pub fn count(&self) -> usize {
        self.seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cycle(t: &mut TakeOvers, kind: FailureKind, at: Instant, lasted: Duration) -> bool {
        t.accepted(at);
        t.failed(kind, at + lasted)
    }

    #[test]
    fn five_quick_closes_after_a_connack_within_a_minute_fail() {
        let start = Instant::now();
        let mut t = TakeOvers::default();
        let quick = Duration::from_millis(200);
        for i in 0..LIMIT - 1 {
            let at = start + Duration::from_secs(i as u64);
            assert!(!cycle(&mut t, FailureKind::ClosedByBroker, at, quick));
        }
        assert!(cycle(
            &mut t,
            FailureKind::ClosedByBroker,
            start + Duration::from_secs(10),
            quick
        ));
    }

    #[test]
    fn what_is_not_a_take_over_never_counts() {
        let start = Instant::now();
        let mut t = TakeOvers::default();
        for i in 0..20u64 {
            let at = start + Duration::from_secs(i);
            // Refused, timed out, or failing before any CONNACK.
            assert!(!cycle(&mut t, FailureKind::Other, at, Duration::ZERO));
            assert!(!t.failed(FailureKind::ClosedByBroker, at));
            // A connection that lived long and was then closed by the broker.
            assert!(!cycle(&mut t, FailureKind::ClosedByBroker, at, QUICK));
        }
        assert_eq!(t.count(), 0);
    }

    #[test]
    fn take_overs_spread_over_more_than_a_minute_do_not_fail() {
        let start = Instant::now();
        let mut t = TakeOvers::default();
        for i in 0..20u64 {
            let at = start + Duration::from_secs(i * 16);
            assert!(!cycle(
                &mut t,
                FailureKind::TakenOver,
                at,
                Duration::from_secs(1)
            ));
        }
        assert!(t.count() < LIMIT);
    }
}
