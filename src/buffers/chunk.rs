//! What a buffer hands its consumer: a [`Chunk`] of events and, from a disk buffer, the
//! [`Position`] they hold in its log.
//!
//! A consumer that records positions in its destination (a Delta commit's `txn`) can tell
//! after a crash which records the destination already holds and skip them
//! ([`Chunk::take_below`]) instead of writing them twice. Positions are only comparable
//! within one [`Incarnation`] of a buffer: a directory made anew (deleted by hand, a new
//! machine) numbers its records from zero again, so a position recorded against an old
//! incarnation must never make a consumer skip records of a new one.

use std::fmt;
use std::sync::Arc;

use crate::event::Event;

/// The id a disk buffer's directory got when it was made (its `incarnation` file).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Incarnation(Arc<str>);

impl Incarnation {
    pub fn new(id: &str) -> Self {
        Self(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Incarnation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a chunk sits in its buffer's log: the log's incarnation and the sequence number of
/// the chunk's first record; the chunk's other records follow one by one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    pub incarnation: Incarnation,
    pub first_seq: u64,
}

/// Events handed out by [`super::Buffer::next`], in the order they were appended.
///
/// Dropping the events acknowledges them: a disk buffer trims them once every event of
/// the chunk (and every copy of it sent on) is dropped or committed.
pub struct Chunk {
    pub events: Vec<Event>,
    /// Where the events sit in a disk buffer's log; `None` from a memory buffer.
    pub position: Option<Position>,
}

impl Chunk {
    /// The sequence number after the chunk's last record (a disk buffer's chunks only).
    pub fn end_seq(&self) -> Option<u64> {
        self.position
            .as_ref()
            .map(|p| p.first_seq + self.events.len() as u64)
    }

    /// Takes out the records of `incarnation` numbered below `seq` (the ones a destination
    /// already holds, say), moving the chunk's position past them. A chunk of another
    /// incarnation, or from a memory buffer, keeps everything.
    pub fn take_below(&mut self, incarnation: &Incarnation, seq: u64) -> Vec<Event> {
        let Some(position) = self.position.as_mut() else {
            return Vec::new();
        };
        if position.incarnation != *incarnation || seq <= position.first_seq {
            return Vec::new();
        }
        let taken = ((seq - position.first_seq) as usize).min(self.events.len());
        position.first_seq += taken as u64;
        self.events.drain(..taken).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffers::tests::{batch, ids};

    fn chunk(incarnation: &str, first_seq: u64, len: i64) -> Chunk {
        Chunk {
            events: batch(0..len).into_iter().collect(),
            position: Some(Position {
                incarnation: Incarnation::new(incarnation),
                first_seq,
            }),
        }
    }

    #[test]
    fn a_chunk_straddling_the_recorded_position_keeps_only_its_tail() {
        let mut straddling = chunk("a", 100, 10);
        let held = straddling.take_below(&Incarnation::new("a"), 104);
        assert_eq!(ids(&held), vec![0, 1, 2, 3]);
        assert_eq!(ids(&straddling.events), vec![4, 5, 6, 7, 8, 9]);
        assert_eq!(straddling.position.as_ref().map(|p| p.first_seq), Some(104));
        assert_eq!(
            straddling.end_seq(),
            Some(110),
            "the end stays where it was"
        );
    }

    #[test]
    fn a_chunk_below_the_position_is_skipped_whole_and_one_above_is_kept() {
        let mut below = chunk("a", 100, 10);
        assert_eq!(below.take_below(&Incarnation::new("a"), 500).len(), 10);
        assert!(below.events.is_empty());
        assert_eq!(below.end_seq(), Some(110));
        let mut above = chunk("a", 100, 10);
        assert!(above.take_below(&Incarnation::new("a"), 100).is_empty());
        assert_eq!(above.events.len(), 10);
    }

    #[test]
    fn a_new_incarnation_skips_nothing() {
        let mut fresh = chunk("new", 0, 10);
        assert!(fresh.take_below(&Incarnation::new("old"), 1_000).is_empty());
        assert_eq!(fresh.events.len(), 10);
        let mut memory = Chunk {
            events: batch(0..3).into_iter().collect(),
            position: None,
        };
        assert!(
            memory
                .take_below(&Incarnation::new("old"), 1_000)
                .is_empty()
        );
        assert_eq!(memory.end_seq(), None);
    }
}
