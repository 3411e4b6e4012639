//! Whether a topology runs live (until stopped) or as a bounded batch (`weir run --batch`).
//!
//! A batch run reads a finished range of the archive once: its sources end when they have
//! read it, windows close at the end of input instead of being checkpointed, and sinks
//! commit what the run produced as one unit keyed by the range, so a rerun of the same
//! range does not write it twice. Components read the mode from their build context.

use jiff::Timestamp;

/// How the topology runs; set by the command line, never by a pipeline file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum RunMode {
    /// Until stopped (or until every source has ended).
    #[default]
    Live,
    /// Once over a range of event time, then exit.
    Batch(BatchRange),
}

impl RunMode {
    /// The range of a batch run; `None` when live.
    pub fn batch(&self) -> Option<&BatchRange> {
        match self {
            Self::Live => None,
            Self::Batch(range) => Some(range),
        }
    }
}

/// The event-time range a batch run covers: `[since, until)`, either end open.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchRange {
    pub since: Option<Timestamp>,
    pub until: Option<Timestamp>,
}

impl BatchRange {
    /// A stable name of the range, for keys a rerun of the same range must find again:
    /// `2026-12-06T00:00:00Z..2026-12-07T00:00:00Z`, an open end written as `*`.
    pub fn key(&self) -> String {
        let end = |t: Option<Timestamp>| t.map_or_else(|| "*".to_owned(), |t| t.to_string());
        format!("{}..{}", end(self.since), end(self.until))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_key_names_both_ends_and_marks_open_ones() {
        let range = BatchRange {
            since: Some("2026-12-06T00:00:00Z".parse().unwrap()),
            until: None,
        };
        assert_eq!(range.key(), "2026-12-06T00:00:00Z..*");
        assert_eq!(BatchRange::default().key(), "*..*");
    }
}
