//! The alarm state machine of one key: pure, synchronous, measured in event time.
//!
//! Each reading says which severity's `raise` condition holds (the most severe one, or
//! none) and whether `clear` holds. An alarm is raised once a raise condition has held for
//! `for` (event time, from the first reading that met it) *and* for `count` consecutive
//! readings; a severity change needs the same. An active alarm clears when `clear` holds;
//! between the raise and the clear thresholds nothing changes (hysteresis), so a value
//! oscillating around one threshold raises once and clears once.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

pub use crate::alarms::Severity;

/// What must hold before a raise or a severity change takes effect.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Persistence {
    /// Event time the condition must have held for.
    pub hold_for: jiff::SignedDuration,
    /// Consecutive readings that must have met the condition.
    pub count: u32,
}

/// A change of the alarm's state, to be emitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    Raised(Severity),
    SeverityChanged { from: Severity, to: Severity },
    Cleared(Severity),
}

/// A condition that holds but has not held long enough yet.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize, Serialize)]
struct Pending {
    /// The severity the readings ask for now.
    severity: Severity,
    /// Event time of the first reading of the streak.
    since: Timestamp,
    /// Readings in the streak.
    readings: u32,
}

/// The state of one key's alarm.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct Tracker {
    /// The severity of the active alarm, if one is active.
    pub active: Option<Severity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pending: Option<Pending>,
}

impl Tracker {
    /// Whether the tracker holds nothing worth keeping (no alarm, no streak).
    pub fn is_idle(&self) -> bool {
        self.active.is_none() && self.pending.is_none()
    }

    /// Feeds one reading: `target` is the most severe level whose raise condition holds.
    pub fn observe(
        &mut self,
        time: Timestamp,
        target: Option<Severity>,
        clear: bool,
        rules: Persistence,
    ) -> Option<Transition> {
        match self.active {
            None => {
                let severity = match target {
                    Some(severity) => severity,
                    None => {
                        self.pending = None;
                        return None;
                    }
                };
                if self.streak(time, severity, false, rules) {
                    self.active = Some(severity);
                    self.pending = None;
                    return Some(Transition::Raised(severity));
                }
                None
            }
            Some(current) => {
                // Clear wins over raise, so an alarm whose thresholds overlap still ends.
                if clear {
                    self.active = None;
                    self.pending = None;
                    return Some(Transition::Cleared(current));
                }
                match target {
                    Some(severity) if severity != current => {
                        if self.streak(time, severity, true, rules) {
                            self.active = Some(severity);
                            self.pending = None;
                            return Some(Transition::SeverityChanged {
                                from: current,
                                to: severity,
                            });
                        }
                        None
                    }
                    // Same severity, or inside the hysteresis band: nothing changes.
                    _ => {
                        self.pending = None;
                        None
                    }
                }
            }
        }
    }

    /// Extends (or starts) the streak towards `severity`; whether it is long enough now.
    /// A severity change restarts the streak when the asked-for severity differs
    /// (`exact`); a raise keeps it and takes the latest severity.
    fn streak(
        &mut self,
        time: Timestamp,
        severity: Severity,
        exact: bool,
        rules: Persistence,
    ) -> bool {
        let pending = match &mut self.pending {
            Some(p) if !exact || p.severity == severity => p,
            slot => slot.insert(Pending {
                severity,
                since: time,
                readings: 0,
            }),
        };
        pending.severity = severity;
        pending.readings = pending.readings.saturating_add(1);
        // An event older than the streak's start (out of order) counts as no time held.
        let held = time
            .duration_since(pending.since)
            .max(jiff::SignedDuration::ZERO);
        pending.readings >= rules.count && held >= rules.hold_for
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Severity::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).unwrap()
    }

    fn rules(hold_secs: i64, count: u32) -> Persistence {
        Persistence {
            hold_for: jiff::SignedDuration::from_secs(hold_secs),
            count,
        }
    }

    /// Readings of a value against `raise > 100` / `clear < 95`, one per second.
    fn run(values: &[f64], rules: Persistence) -> Vec<(usize, Transition)> {
        let mut tracker = Tracker::default();
        values
            .iter()
            .enumerate()
            .filter_map(|(i, &v)| {
                let target = (v > 100.0).then_some(Major);
                tracker
                    .observe(at(i as i64), target, v < 95.0, rules)
                    .map(|t| (i, t))
            })
            .collect()
    }

    #[test]
    fn hysteresis_raises_once_and_clears_once_under_flapping() {
        let mut values = vec![90.0];
        // Oscillate around the raise threshold for a while, never reaching the clear one.
        for i in 0..300 {
            values.push(if i % 2 == 0 { 101.0 } else { 99.0 });
        }
        values.push(90.0);
        let transitions = run(&values, rules(0, 1));
        assert_eq!(
            transitions,
            vec![
                (1, Transition::Raised(Major)),
                (301, Transition::Cleared(Major))
            ]
        );
    }

    #[test]
    fn count_needs_consecutive_readings() {
        // Two hot readings, a cool one, then three hot ones: raised on the third of those.
        let values = [101.0, 101.0, 99.0, 101.0, 101.0, 101.0];
        assert_eq!(
            run(&values, rules(0, 3)),
            vec![(5, Transition::Raised(Major))]
        );
    }

    #[test]
    fn for_is_measured_in_event_time() {
        let mut tracker = Tracker::default();
        let r = rules(30, 1);
        assert_eq!(tracker.observe(at(0), Some(Major), false, r), None);
        assert_eq!(tracker.observe(at(29), Some(Major), false, r), None);
        assert_eq!(
            tracker.observe(at(30), Some(Major), false, r),
            Some(Transition::Raised(Major))
        );
        // A gap in the condition restarts the clock.
        let mut tracker = Tracker::default();
        tracker.observe(at(0), Some(Major), false, r);
        tracker.observe(at(20), None, false, r);
        assert_eq!(tracker.observe(at(40), Some(Major), false, r), None);
        assert_eq!(
            tracker.observe(at(70), Some(Major), false, r),
            Some(Transition::Raised(Major))
        );
    }

    #[test]
    fn for_and_count_both_apply() {
        let mut tracker = Tracker::default();
        let r = rules(10, 3);
        assert_eq!(tracker.observe(at(0), Some(Minor), false, r), None);
        // Ten seconds held, but only two readings.
        assert_eq!(tracker.observe(at(10), Some(Minor), false, r), None);
        assert_eq!(
            tracker.observe(at(11), Some(Minor), false, r),
            Some(Transition::Raised(Minor))
        );
    }

    #[test]
    fn severity_escalates_and_deescalates_with_persistence() {
        let mut tracker = Tracker::default();
        let r = rules(0, 2);
        tracker.observe(at(0), Some(Major), false, r);
        assert_eq!(
            tracker.observe(at(1), Some(Major), false, r),
            Some(Transition::Raised(Major))
        );
        // One critical reading is not enough; two are.
        assert_eq!(tracker.observe(at(2), Some(Critical), false, r), None);
        assert_eq!(
            tracker.observe(at(3), Some(Critical), false, r),
            Some(Transition::SeverityChanged {
                from: Major,
                to: Critical
            })
        );
        // Back to major for two readings: de-escalates.
        tracker.observe(at(4), Some(Major), false, r);
        assert_eq!(
            tracker.observe(at(5), Some(Major), false, r),
            Some(Transition::SeverityChanged {
                from: Critical,
                to: Major
            })
        );
        // Inside the hysteresis band nothing changes; clear ends it at once.
        assert_eq!(tracker.observe(at(6), None, false, r), None);
        assert_eq!(
            tracker.observe(at(7), None, true, r),
            Some(Transition::Cleared(Major))
        );
        assert!(tracker.is_idle());
    }

    #[test]
    fn a_raise_streak_takes_the_latest_severity() {
        let mut tracker = Tracker::default();
        let r = rules(0, 2);
        tracker.observe(at(0), Some(Warning), false, r);
        assert_eq!(
            tracker.observe(at(1), Some(Critical), false, r),
            Some(Transition::Raised(Critical))
        );
    }

    #[test]
    fn state_survives_serialization() {
        let mut tracker = Tracker::default();
        let r = rules(0, 3);
        tracker.observe(at(0), Some(Major), false, r);
        tracker.observe(at(1), Some(Major), false, r);
        let json = serde_json::to_string(&tracker).unwrap();
        let mut back: Tracker = serde_json::from_str(&json).unwrap();
        assert_eq!(
            back.observe(at(2), Some(Major), false, r),
            Some(Transition::Raised(Major))
        );
    }
}
