//! The engine of fixed-size windows (`tumbling`, `hopping`): epoch-aligned, half-open
//! `[start, end)`, per-group watermarks.
//!
//! Each group (usually a device) keeps its own watermark: the latest event time it has
//! sent, so one device with a fast clock cannot make the others late. An event more than
//! `allowed_lateness` behind its group's watermark is late (Azure Stream Analytics' "late
//! arrival tolerance") and follows `late_events`. No accepted event can then fall into a
//! window whose `end + allowed_lateness` the watermark has reached, so that is when the
//! window closes and is emitted. A group that sends nothing for `idle_timeout` (wall clock)
//! has its windows closed and its watermark moved past them, so the last window of a
//! device that went silent is not held forever.

use std::collections::HashMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::aggregate::Accumulator;
use super::engine::{Outcome, WindowEngine};
use super::window::{GroupKey, WindowSpec};
use crate::event::Event;

/// How long a group without open windows keeps its watermark, at least.
const GROUP_RETENTION: std::time::Duration = std::time::Duration::from_secs(600);

/// Where windows start and end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Assigner {
    Tumbling { size: i64, offset: i64 },
    Hopping { size: i64, hop: i64, offset: i64 },
}

impl Assigner {
    /// Calls `f(start, end)` for every window holding event time `t`, oldest first.
    fn for_each(self, t: i64, mut f: impl FnMut(i64, i64)) {
        match self {
            Self::Tumbling { size, offset } => {
                let start = (t - offset).div_euclid(size) * size + offset;
                f(start, start + size);
            }
            Self::Hopping { size, hop, offset } => {
                let last = (t - offset).div_euclid(hop) * hop + offset;
                let mut start = last - ((size - 1) / hop) * hop;
                while start <= last {
                    if start + size > t {
                        f(start, start + size);
                    }
                    start += hop;
                }
            }
        }
    }
}

#[derive(Serialize, Deserialize)]
pub struct Window {
    start: i64,
    end: i64,
    accumulators: Box<[Accumulator]>,
    #[serde(skip)]
    dirty: bool,
}

/// One group's watermark and open windows.
#[derive(Serialize, Deserialize)]
pub struct Group {
    keys: Box<[Value]>,
    watermark: i64,
    /// Wall-clock time of the group's last event.
    #[serde(skip, default = "Instant::now")]
    last_seen: Instant,
    /// Open windows, ordered by start.
    windows: Vec<Window>,
}

/// The state of every group's open windows.
pub struct FixedWindows {
    spec: WindowSpec,
    assigner: Assigner,
    groups: HashMap<GroupKey, Group>,
    open_windows: usize,
    /// Non-numeric values met by a numeric aggregate, per aggregate (reported, then reset).
    invalid_values: Vec<u64>,
}

impl FixedWindows {
    pub fn new(spec: WindowSpec, assigner: Assigner) -> Self {
        let aggregates = spec.aggregates.len();
        Self {
            spec,
            assigner,
            groups: HashMap::new(),
            open_windows: 0,
            invalid_values: vec![0; aggregates],
        }
    }

    /// Approximate bytes of state: groups, windows and accumulators.
    pub fn state_bytes(&self) -> usize {
        let per_group = std::mem::size_of::<(GroupKey, Group)>() + 16;
        let per_window = std::mem::size_of::<Window>()
            + self.spec.aggregates.len() * std::mem::size_of::<Accumulator>();
        let keys: usize = self.groups.keys().map(|k| k.0.len()).sum();
        let heap: usize = self
            .groups
            .values()
            .flat_map(|g| g.windows.iter())
            .flat_map(|w| w.accumulators.iter())
            .map(Accumulator::heap_bytes)
            .sum();
        self.groups.len() * per_group + keys + self.open_windows * per_window + heap
    }

    /// Folds one event into its group's windows and emits the windows it closes.
    pub fn add(
        &mut self,
        event: &Event,
        now_ms: i64,
        now: Instant,
        emitted: &mut Vec<Event>,
    ) -> Outcome {
        let time = match self.spec.time_of(event) {
            Ok(time) => time,
            Err(reason) => return Outcome::BadTime(reason),
        };
        let (time, future) = match self.spec.admit_future(time, now_ms) {
            Ok(admitted) => admitted,
            Err(outcome) => return outcome,
        };
        let key = self.spec.key_of(event);
        let group = match self.groups.get_mut(&key) {
            Some(group) => group,
            None => self.groups.entry(key).or_insert_with(|| Group {
                keys: self.spec.key_values(event),
                watermark: i64::MIN,
                last_seen: now,
                windows: Vec::new(),
            }),
        };
        let (time, late) = match self.spec.admit_late(time, group.watermark) {
            Ok(admitted) => admitted,
            Err(outcome) => return outcome,
        };
        let outcome = if late == Outcome::Folded {
            future
        } else {
            late
        };

        // Find or open every window holding `time`.
        let mut overflow = false;
        let spec = &self.spec;
        let open_windows = &mut self.open_windows;
        let invalid = &mut self.invalid_values;
        self.assigner.for_each(time, |start, end| {
            let index = match group.windows.binary_search_by_key(&start, |w| w.start) {
                Ok(index) => index,
                Err(index) => {
                    if *open_windows >= spec.max_open_windows {
                        overflow = true;
                        return;
                    }
                    *open_windows += 1;
                    let accumulators = spec.accumulators();
                    group.windows.insert(
                        index,
                        Window {
                            start,
                            end,
                            accumulators,
                            dirty: false,
                        },
                    );
                    index
                }
            };
            let window = &mut group.windows[index];
            window.dirty = true;
            spec.fold(&mut window.accumulators, event, time, invalid);
        });
        if overflow {
            return Outcome::Overflow;
        }
        group.last_seen = now;
        if time > group.watermark {
            group.watermark = time;
            close_ready(&self.spec, group, &mut self.open_windows, emitted);
        }
        outcome
    }

    /// Closes the windows of groups silent for `idle_timeout`; with `emit: every`, emits
    /// the open windows that changed as partial results.
    pub fn tick(&mut self, now: Instant, emit_partial: bool, emitted: &mut Vec<Event>) {
        let idle = self.spec.idle_timeout;
        for group in self.groups.values_mut() {
            if group.windows.is_empty() {
                continue;
            }
            if now.duration_since(group.last_seen) >= idle {
                let last_end = group
                    .windows
                    .iter()
                    .map(|w| w.end)
                    .max()
                    .unwrap_or(group.watermark);
                group.watermark = group
                    .watermark
                    .max(last_end.saturating_add(self.spec.lateness_ms));
                close_ready(&self.spec, group, &mut self.open_windows, emitted);
            } else if emit_partial {
                for window in group.windows.iter_mut().filter(|w| w.dirty) {
                    window.dirty = false;
                    emitted.push(result(&self.spec, &group.keys, window, true));
                }
            }
        }
        // Groups without open windows keep only their watermark (so a straggler for an
        // emitted window stays late); forget long-silent ones so state stays bounded by the
        // devices that are active.
        let retention = (idle * 4).max(GROUP_RETENTION);
        self.groups
            .retain(|_, g| !g.windows.is_empty() || now.duration_since(g.last_seen) < retention);
    }
}

impl WindowEngine for FixedWindows {
    type Group = Group;

    fn add(
        &mut self,
        event: &Event,
        now_ms: i64,
        now: Instant,
        emitted: &mut Vec<Event>,
    ) -> Outcome {
        FixedWindows::add(self, event, now_ms, now, emitted)
    }

    fn tick(&mut self, _now_ms: i64, now: Instant, partial: bool, emitted: &mut Vec<Event>) {
        FixedWindows::tick(self, now, partial, emitted);
    }

    fn open_windows(&self) -> usize {
        self.open_windows
    }

    fn state_bytes(&self) -> usize {
        FixedWindows::state_bytes(self)
    }

    fn take_invalid_values(&mut self) -> Vec<u64> {
        let zeros = vec![0; self.invalid_values.len()];
        std::mem::replace(&mut self.invalid_values, zeros)
    }

    fn definition(&self) -> String {
        let aggregates: Vec<String> = self
            .spec
            .aggregates
            .iter()
            .map(ToString::to_string)
            .collect();
        format!("{:?} {}", self.assigner, aggregates.join(","))
    }

    fn export(&mut self) -> Vec<(GroupKey, Group)> {
        self.open_windows = 0;
        self.groups
            .drain()
            .filter(|(_, g)| !g.windows.is_empty())
            .collect()
    }

    fn import(&mut self, groups: Vec<(GroupKey, Group)>) {
        let now = Instant::now();
        for (key, mut group) in groups {
            group.last_seen = now;
            self.open_windows += group.windows.len();
            self.groups.insert(key, group);
        }
    }
}

/// Emits and removes the group's windows whose `end + lateness` the watermark has reached.
fn close_ready(
    spec: &WindowSpec,
    group: &mut Group,
    open_windows: &mut usize,
    emitted: &mut Vec<Event>,
) {
    let horizon = group.watermark.saturating_sub(spec.lateness_ms);
    let closing = group
        .windows
        .iter()
        .take_while(|w| w.end <= horizon)
        .count();
    for window in group.windows.drain(..closing) {
        *open_windows -= 1;
        emitted.push(result(spec, &group.keys, &window, false));
    }
    // Hopping windows close in start order too, but a later-starting window can end first
    // only if sizes differ, which they do not: draining the prefix is enough.
}

fn result(spec: &WindowSpec, keys: &[Value], window: &Window, partial: bool) -> Event {
    spec.output(
        keys,
        window.start,
        window.end,
        spec.results(&window.accumulators),
        partial,
    )
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod assigner_tests {
    use super::*;

    fn windows(assigner: Assigner, t: i64) -> Vec<(i64, i64)> {
        let mut out = Vec::new();
        assigner.for_each(t, |s, e| out.push((s, e)));
        out
    }

    #[test]
    fn tumbling_is_half_open_and_epoch_aligned() {
        let a = Assigner::Tumbling {
            size: 10,
            offset: 0,
        };
        assert_eq!(windows(a, 0), [(0, 10)]);
        assert_eq!(windows(a, 9), [(0, 10)]);
        assert_eq!(
            windows(a, 10),
            [(10, 20)],
            "an event exactly at `end` belongs to the next window"
        );
        assert_eq!(windows(a, -1), [(-10, 0)]);
        assert_eq!(
            windows(
                Assigner::Tumbling {
                    size: 10,
                    offset: 3
                },
                12
            ),
            [(3, 13)]
        );
    }

    #[test]
    fn hopping_windows_overlap() {
        let a = Assigner::Hopping {
            size: 10,
            hop: 5,
            offset: 0,
        };
        assert_eq!(windows(a, 7), [(0, 10), (5, 15)]);
        assert_eq!(windows(a, 10), [(5, 15), (10, 20)]);
        assert_eq!(
            windows(
                Assigner::Hopping {
                    size: 10,
                    hop: 3,
                    offset: 0
                },
                9
            ),
            [(0, 10), (3, 13), (6, 16), (9, 19)]
        );
    }
}
