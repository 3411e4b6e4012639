//! How a reload hands an aggregator's open windows from the instance it replaces to the
//! new one.
//!
//! Both instances of one id run for a moment: the topology builds the new instance before
//! the old one has drained. Every instance arrives here when it is built, with its window
//! definition. The old instance, once its input has ended, asks for its successor: one
//! with the same definition takes its windows over through the checkpoint file (the old
//! instance writes it, the new one restores it, and starts only after the old one has
//! finished); any other successor, or none, makes the old instance close its windows early
//! and emit them (`partial: true`), so no state that sources were told is safe is dropped.
//!
//! It is a shared service without settings, made by the first aggregator that arrives.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio_util::sync::{CancellationToken, DropGuard};

use crate::config::ComponentId;

/// The instances of every aggregator id, in the order they were built.
#[derive(Default)]
pub struct Handover {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    instances: HashMap<ComponentId, Vec<Instance>>,
    /// The serial number of the next arrival.
    next: u64,
}

struct Instance {
    serial: u64,
    definition: String,
    /// Cancelled when the instance has finished, or was dropped without ever running (a
    /// reload that failed after building it).
    finished: CancellationToken,
}

/// One instance's place in the handover.
pub struct Arrival {
    serial: u64,
    /// The instances of the same id that are still running: this one restores its windows
    /// after every one of them has finished.
    pub predecessors: Vec<CancellationToken>,
    /// Finishes this instance when dropped (the end of its task, or the task itself if it
    /// never ran): held for its `Drop`.
    _finished: DropGuard,
}

impl Handover {
    /// Records a newly built instance of `id` with its window `definition`.
    pub fn arrive(&self, id: &ComponentId, definition: String) -> Arrival {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let serial = state.next;
        state.next += 1;
        let list = state.instances.entry(id.clone()).or_default();
        list.retain(|i| !i.finished.is_cancelled());
        let predecessors = list.iter().map(|i| i.finished.clone()).collect();
        let finished = CancellationToken::new();
        list.push(Instance {
            serial,
            definition,
            finished: finished.clone(),
        });
        Arrival {
            serial,
            predecessors,
            _finished: finished.drop_guard(),
        }
    }

    /// Whether the newest live instance of `id` built after `arrival` has the same window
    /// definition, and so takes `arrival`'s open windows over.
    pub fn carried_over(&self, id: &ComponentId, arrival: &Arrival) -> bool {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let Some(list) = state.instances.get(id) else {
            return false;
        };
        let own = list.iter().find(|i| i.serial == arrival.serial);
        let successor = list
            .iter()
            .rev()
            .find(|i| i.serial > arrival.serial && !i.finished.is_cancelled());
        match (own, successor) {
            (Some(own), Some(successor)) => own.definition == successor.definition,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_live_successor_decides_and_a_dropped_build_is_no_predecessor() {
        let handover = Handover::default();
        let id = ComponentId::new("w");
        let old = handover.arrive(&id, "a".into());
        assert!(old.predecessors.is_empty());
        assert!(!handover.carried_over(&id, &old), "no successor yet");

        // A reload that failed after building: its instance never runs.
        drop(handover.arrive(&id, "a".into()));
        assert!(!handover.carried_over(&id, &old));

        let other = handover.arrive(&id, "b".into());
        assert!(!handover.carried_over(&id, &old), "another definition");
        drop(other);

        let new = handover.arrive(&id, "a".into());
        assert_eq!(
            new.predecessors.len(),
            1,
            "waits for the running old instance only"
        );
        assert!(!new.predecessors[0].is_cancelled());
        assert!(handover.carried_over(&id, &old));

        drop(old);
        assert!(
            new.predecessors[0].is_cancelled(),
            "the old one finishing releases the new"
        );
        assert!(!handover.carried_over(&id, &new));
    }
}
