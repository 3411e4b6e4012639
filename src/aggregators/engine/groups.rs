//! The groups of an engine that keeps them in a hash map (sliding, session, absence), and
//! the export, snapshot and import of checkpoints that such engines share.

use std::collections::HashMap;
use std::time::Instant;

use crate::aggregators::window::GroupKey;

/// One group's state, as [`Groups`] sees it.
pub trait GroupState: Clone {
    /// The windows it holds open: sessions, pending change points, an absence.
    fn open_windows(&self) -> usize;

    /// Whether a checkpoint keeps it: by default, while it holds open windows.
    fn worth_keeping(&self) -> bool {
        self.open_windows() > 0
    }

    /// Back from a checkpoint: wall-clock instants are not saved, so they start again
    /// from `now`.
    fn resume(&mut self, _now: Instant) {}
}

/// Groups by key, with the windows they hold open.
pub struct Groups<G> {
    pub by_key: HashMap<GroupKey, G>,
    /// The sum of `open_windows` over the groups: the engine keeps it as it opens and
    /// closes windows, so the gauge does not scan every group.
    pub open: usize,
}

impl<G> Default for Groups<G> {
    fn default() -> Self {
        Self {
            by_key: HashMap::new(),
            open: 0,
        }
    }
}

impl<G: GroupState> Groups<G> {
    /// Removes every group and returns those worth keeping.
    pub fn export(&mut self) -> Vec<(GroupKey, G)> {
        self.open = 0;
        self.by_key
            .drain()
            .filter(|(_, g)| g.worth_keeping())
            .collect()
    }

    /// A copy of the groups worth keeping.
    pub fn snapshot(&self) -> Vec<(GroupKey, G)> {
        self.by_key
            .iter()
            .filter(|(_, g)| g.worth_keeping())
            .map(|(k, g)| (k.clone(), g.clone()))
            .collect()
    }

    /// Takes groups back from a checkpoint.
    pub fn import(&mut self, groups: Vec<(GroupKey, G)>) {
        let now = Instant::now();
        for (key, mut group) in groups {
            group.resume(now);
            self.open += group.open_windows();
            self.by_key.insert(key, group);
        }
    }
}
