//! What the table's log says this sink has committed, and which `txn` the next commit
//! carries: how the sink writes a record exactly once.
//!
//! Every commit carries an application transaction, `txn(app_id, version)`, in the same log
//! entry as its files, so the log tells after any failure what landed. The app id names
//! the writer: the sink's `app_id` (default `weir-<component id>`) and the instance id
//! (`<app_id>@<instance>`), so two weir instances writing one table never share one.
//!
//! - **From a disk buffer** ([`Mode::Positioned`]) the app id also names the buffer's
//!   incarnation (`<app_id>@<instance>/<incarnation>`), and a commit's version is the
//!   sequence number after the last buffer record it holds. The buffer hands records out
//!   in log order (a failed chunk again before anything after it), so a commit covers a
//!   gapless run: the table holds every record of the incarnation below its version
//!   (except dead letters, which went to `errors`, and numbers no record has, which a
//!   buffer skips after cutting records it could not read). After a crash the buffer
//!   hands out again what it had not acknowledged, and the sink drops what is below the
//!   version ([`Ledger::sort`]), after sending the dead letters among it again (see
//!   [`super::dead_letters`]). A recreated buffer is a new incarnation, a new app id with no
//!   version yet: it never makes the sink skip new records.
//! - **From a memory buffer** ([`Mode::Counted`]) nothing survives a crash but what the
//!   sources send again, and versions count commits: they only tell whether a commit whose
//!   outcome was unclear landed.

use crate::buffers::{Chunk, Incarnation, Position};
use crate::event::Event;

/// The sink's view of its transactions in the table's log.
pub struct Ledger {
    /// `<app_id>@<instance>`.
    writer: String,
    mode: Mode,
    /// The version the log holds for [`Ledger::app_id`].
    landed: Option<i64>,
}

enum Mode {
    /// Versions count commits (a memory buffer).
    Counted,
    /// Versions are positions in one incarnation of a disk buffer.
    Positioned {
        incarnation: Incarnation,
        app_id: String,
        /// The sequence number after the last record written into the open window.
        window_end: Option<u64>,
    },
}

/// A chunk sorted by what the table already has of it.
pub struct Sorted {
    /// Records the log says are committed (or dead-lettered): once their dead letters are
    /// sent again, dropping them acknowledges them.
    pub committed: Vec<Event>,
    /// Records already in the open window (a chunk failed elsewhere after it was written,
    /// and handed out again): they are acknowledged with the window's commit, and their
    /// dead letters are still held with the window.
    pub in_window: Vec<Event>,
}

impl Ledger {
    /// A ledger for `writer` (`<app_id>@<instance>`), counting commits until a chunk says
    /// it comes from a disk buffer.
    pub fn new(writer: String) -> Self {
        Self {
            writer,
            mode: Mode::Counted,
            landed: None,
        }
    }

    /// The app id of this sink's transactions now.
    pub fn app_id(&self) -> &str {
        match &self.mode {
            Mode::Counted => &self.writer,
            Mode::Positioned { app_id, .. } => app_id,
        }
    }

    /// What the log holds for [`Ledger::app_id`], as read from the table.
    pub fn set_landed(&mut self, landed: Option<i64>) {
        self.landed = landed;
    }

    /// Whether chunks at `position` belong to the transactions of the current mode.
    pub fn follows(&self, position: Option<&Position>) -> bool {
        match (&self.mode, position) {
            (Mode::Counted, None) => true,
            (Mode::Positioned { incarnation, .. }, Some(p)) => *incarnation == p.incarnation,
            _ => false,
        }
    }

    /// Switches to the transactions of chunks at `position`; the open window must be
    /// committed first, and [`Ledger::set_landed`] told what the log holds for the new app id.
    pub fn switch(&mut self, position: Option<&Position>) {
        self.mode = match position {
            None => Mode::Counted,
            Some(position) => Mode::Positioned {
                app_id: format!("{}/{}", self.writer, position.incarnation),
                incarnation: position.incarnation.clone(),
                window_end: None,
            },
        };
        self.landed = None;
    }

    /// Takes out of `chunk` what the table already has (committed, or in the open window).
    pub fn sort(&self, chunk: &mut Chunk) -> Sorted {
        let Mode::Positioned {
            incarnation,
            window_end,
            ..
        } = &self.mode
        else {
            return Sorted {
                committed: Vec::new(),
                in_window: Vec::new(),
            };
        };
        let landed = self.landed.map_or(0, |v| v.max(0) as u64);
        let committed = chunk.take_below(incarnation, landed);
        let in_window = chunk.take_below(incarnation, window_end.unwrap_or(0));
        Sorted {
            committed,
            in_window,
        }
    }

    /// Rows of a chunk ending at `end` (its sequence number after the last record) went
    /// into the open window.
    pub fn wrote(&mut self, end: Option<u64>) {
        if let (Mode::Positioned { window_end, .. }, Some(end)) = (&mut self.mode, end) {
            *window_end = Some(window_end.map_or(end, |e| e.max(end)));
        }
    }

    /// The open window was given up: its records come back from the buffer.
    pub fn abandoned(&mut self) {
        if let Mode::Positioned { window_end, .. } = &mut self.mode {
            *window_end = None;
        }
    }

    /// The version the commit of the open window carries.
    pub fn next_version(&self) -> anyhow::Result<i64> {
        match &self.mode {
            Mode::Counted => Ok(self.landed.map_or(0, |v| v + 1)),
            Mode::Positioned { window_end, .. } => {
                let end = window_end.ok_or_else(|| {
                    anyhow::anyhow!("internal error: rows in the window but no buffer position")
                })?;
                let version = i64::try_from(end)?;
                if self.landed.is_some_and(|landed| landed >= version) {
                    anyhow::bail!(
                        "internal error: the window ends at record {end}, but the table already holds records up to {:?}",
                        self.landed
                    );
                }
                Ok(version)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffers::tests::{batch, ids};

    fn chunk(incarnation: &str, first_seq: u64, ids: std::ops::Range<i64>) -> Chunk {
        Chunk {
            events: batch(ids).into_iter().collect(),
            position: Some(Position {
                incarnation: Incarnation::new(incarnation),
                first_seq,
            }),
        }
    }

    fn positioned(incarnation: &str, landed: Option<i64>) -> Ledger {
        let mut ledger = Ledger::new("weir-lake@i1".into());
        let first = chunk(incarnation, 0, 0..1);
        ledger.switch(first.position.as_ref());
        ledger.set_landed(landed);
        ledger
    }

    #[test]
    fn a_restart_skips_what_the_table_holds_even_inside_a_chunk() {
        let ledger = positioned("a", Some(105));
        assert_eq!(ledger.app_id(), "weir-lake@i1/a");
        // The buffer's ack position was 100; the table committed up to 105.
        let mut straddling = chunk("a", 100, 0..10);
        let sorted = ledger.sort(&mut straddling);
        assert_eq!(ids(&sorted.committed), vec![0, 1, 2, 3, 4]);
        assert!(sorted.in_window.is_empty());
        assert_eq!(ids(&straddling.events), vec![5, 6, 7, 8, 9]);
        let mut later = chunk("a", 110, 0..10);
        assert!(ledger.sort(&mut later).committed.is_empty());
        assert_eq!(later.events.len(), 10);
    }

    #[test]
    fn a_new_incarnation_is_a_new_transaction_and_skips_nothing() {
        let ledger = positioned("old", Some(1_000));
        let mut fresh = chunk("new", 0, 0..10);
        assert!(!ledger.follows(fresh.position.as_ref()));
        let mut switched = positioned("old", Some(1_000));
        switched.switch(fresh.position.as_ref());
        assert_eq!(switched.app_id(), "weir-lake@i1/new");
        assert!(switched.sort(&mut fresh).committed.is_empty());
        assert_eq!(fresh.events.len(), 10);
    }

    #[test]
    fn versions_are_the_end_of_the_window_and_redelivered_rows_wait_for_its_commit() {
        let mut ledger = positioned("a", Some(10));
        ledger.wrote(Some(20));
        ledger.wrote(Some(30));
        assert_eq!(ledger.next_version().unwrap(), 30);
        // 20..30 failed elsewhere (a dead letter) and comes back before the commit.
        let mut again = chunk("a", 20, 0..10);
        let sorted = ledger.sort(&mut again);
        assert_eq!((sorted.committed.len(), sorted.in_window.len()), (0, 10));
        assert!(again.events.is_empty());
        ledger.abandoned();
        assert!(ledger.next_version().is_err(), "no rows, no position");
        let mut after_abandon = chunk("a", 10, 0..20);
        assert!(ledger.sort(&mut after_abandon).committed.is_empty());
        assert_eq!(after_abandon.events.len(), 20, "written again");
    }

    #[test]
    fn a_memory_buffer_counts_commits() {
        let mut ledger = Ledger::new("weir-lake@i1".into());
        assert!(ledger.follows(None));
        assert_eq!(ledger.app_id(), "weir-lake@i1");
        assert_eq!(ledger.next_version().unwrap(), 0);
        ledger.set_landed(Some(4));
        assert_eq!(ledger.next_version().unwrap(), 5);
    }
}
