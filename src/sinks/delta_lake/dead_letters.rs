//! Dead letters: readings that do not fit the table go to the sink's `errors` output, with
//! the promise rows have, as far as another output can keep it: never lost, crashes
//! included, and sent at least once.
//!
//! A dead letter keeps its chunk's delivery (from a disk buffer, the chunk's buffer-local
//! one), so a chunk is acknowledged only once its rows are committed *and* its dead
//! letters were committed wherever `errors` leads; until then the buffer keeps its records.
//! Three rules make that hold across failures:
//!
//! - **Sent once the commit of the chunk's rows landed.** A chunk's dead letters wait with
//!   the open window ([`DeadLetters::hold`]) and go out after its commit. If the window is
//!   given up, they fail with its rows without having been sent, so the chunk's redelivery
//!   sends them once, not once per attempt. A chunk with no row in the window sends them
//!   at once: nothing it waits for can be given up. A window holding many dead letters
//!   commits early, so they do not pile up in memory.
//! - **Determined again when skipped.** Records the table already holds (below the buffer
//!   position of its last commit) come back after a crash, or when their dead letters
//!   failed downstream; the sink checks them against its columns again
//!   ([`Columns::misfits`], the same answer as when they were written) and sends the
//!   misfits again before it drops the rest.
//! - **Failed, never dropped, while not sent.** A sink that stops holding dead letters
//!   fails their deliveries, so their chunk (or request) is delivered again.
//!
//! So a dead letter is sent again only when its chunk comes back after it was sent: a
//! crash before the buffer persisted the chunk's acknowledgement, or a failure downstream
//! of `errors`; a receiver that must see each once can use the event's content as a key.
//! With `errors` wired to nothing, a disk buffer's dead letters are counted as discarded
//! instead of failing their chunk, which would otherwise come back for ever and hold back
//! every record after it.
//!
//! [`Columns::misfits`]: super::columns::Columns::misfits

use std::sync::Arc;

use crate::config::OutputName;
use crate::event::{Event, EventBatch};
use crate::telemetry::events::{ComponentError, ErrorType, EventsDiscarded, Stage};
use crate::telemetry::{ComponentTelemetry, InternalEvent};
use crate::topology::channel::Outputs;

const ERRORS: &str = OutputName::ERRORS;

/// The dead letters of the open window's chunks, and those whose window has committed.
#[derive(Default)]
pub struct DeadLetters {
    window: Vec<Event>,
    ready: Vec<Event>,
}

impl DeadLetters {
    /// Holds the dead letters of a chunk whose rows joined the open window.
    pub fn hold(&mut self, events: Vec<Event>) {
        self.window.extend(events);
    }

    /// The open window committed: its dead letters may go.
    pub fn committed(&mut self) {
        self.ready.append(&mut self.window);
    }

    /// The open window was given up: its chunks come again, and determine their dead
    /// letters again.
    pub fn abandoned(&mut self) {
        fail(std::mem::take(&mut self.window));
    }

    /// Dead letters waiting for the open window's commit.
    pub fn held(&self) -> usize {
        self.window.len()
    }

    /// The dead letters to send now.
    pub fn take_ready(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.ready)
    }
}

impl Drop for DeadLetters {
    fn drop(&mut self) {
        fail(std::mem::take(&mut self.window));
        fail(std::mem::take(&mut self.ready));
    }
}

fn fail(events: Vec<Event>) {
    for event in &events {
        event.fail_delivery();
    }
}

/// Marks misfits as dead-lettered by `component`, each with its reason.
pub fn mark(component: &Arc<str>, rejected: Vec<(Event, String)>) -> Vec<Event> {
    rejected
        .into_iter()
        .map(|(event, reason)| event.with_error(component, reason))
        .collect()
}

/// Sends dead letters to `errors`, counted as errors. `from_disk`: they come from a disk
/// buffer, whose chunk must not fail when `errors` leads nowhere (see the module docs).
pub async fn send(
    out: &Outputs,
    telemetry: &ComponentTelemetry,
    events: Vec<Event>,
    from_disk: bool,
) {
    let Some(first) = events.first() else {
        return;
    };
    let wired = out.named_connected(ERRORS);
    let reason = first
        .meta()
        .error
        .as_ref()
        .map_or("", |e| e.message.as_str());
    ComponentError {
        error_type: ErrorType::Encode,
        stage: Stage::Processing,
        message: &format!(
            "{} events do not fit the table (first: {reason}); {}",
            events.len(),
            match (wired, from_disk) {
                (false, true) => "discarded: `errors` leads nowhere",
                _ => "sent to `errors`",
            }
        ),
        count: events.len(),
    }
    .emit(telemetry);
    if !wired && from_disk {
        EventsDiscarded {
            count: events.len(),
            intentional: false,
        }
        .emit(telemetry);
        // Dropped without failing: their records are handled, as far as they can be.
        drop(events);
        return;
    }
    out.send_named(ERRORS, EventBatch::new(events)).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffers::tests::{batch, ids};
    use crate::event::{Delivery, DeliveryStatus};

    fn held(
        range: std::ops::Range<i64>,
    ) -> (Vec<Event>, tokio::sync::oneshot::Receiver<DeliveryStatus>) {
        let mut events: Vec<Event> = batch(range).into_iter().collect();
        let outcome = Delivery::attach_all(&mut events);
        (events, outcome)
    }

    #[test]
    fn dead_letters_go_after_the_commit_and_fail_with_a_given_up_window() {
        let mut dead = DeadLetters::default();
        let (first, mut first_outcome) = held(0..2);
        dead.hold(first);
        assert!(dead.take_ready().is_empty(), "not before the commit");
        dead.committed();
        let ready = dead.take_ready();
        assert_eq!(ids(&ready), vec![0, 1]);
        drop(ready);
        assert_eq!(first_outcome.try_recv(), Ok(DeliveryStatus::Committed));

        let (second, mut second_outcome) = held(2..3);
        dead.hold(second);
        dead.abandoned();
        assert!(dead.take_ready().is_empty());
        assert_eq!(
            second_outcome.try_recv(),
            Ok(DeliveryStatus::Failed),
            "never sent: the chunk comes again"
        );
    }

    #[test]
    fn a_sink_that_stops_before_sending_fails_them() {
        let mut dead = DeadLetters::default();
        let (committed, mut committed_outcome) = held(0..1);
        dead.hold(committed);
        dead.committed();
        let (open, mut open_outcome) = held(1..2);
        dead.hold(open);
        drop(dead);
        assert_eq!(committed_outcome.try_recv(), Ok(DeliveryStatus::Failed));
        assert_eq!(open_outcome.try_recv(), Ok(DeliveryStatus::Failed));
    }
}
