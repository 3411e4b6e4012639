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
//!
//! State is laid out for millions of devices: a hash map holds only each group's key and
//! the index of its slot in a dense vector (hash tables run half empty; the large part is
//! kept out of them), a group keyed by its device id shares the event's id instead of
//! copying it, windows of one group sit inline, and a window holds only its start and one
//! small accumulator per aggregate.

use std::borrow::Cow;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use smallvec::SmallVec;
use std::collections::HashMap;

use super::aggregate::Accumulator;
use super::engine::WindowEngine;
use super::window::{Admitted, GroupKey, InvalidValues, Outcome, WindowSpec};
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
    /// The length of every window.
    pub fn size(self) -> i64 {
        match self {
            Self::Tumbling { size, .. } | Self::Hopping { size, .. } => size,
        }
    }

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

/// One open window: its start (its end is `start + size`) and its accumulators.
#[derive(Clone, Serialize, Deserialize)]
pub struct Window {
    start: i64,
    accumulators: Box<[Accumulator]>,
    /// Changed since the last partial emission.
    #[serde(skip)]
    dirty: bool,
}

/// One group's watermark and open windows.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct Group {
    /// The values of the `group_by` fields; `None` when the group is just the device id,
    /// which the key already holds.
    keys: Option<Box<[Value]>>,
    watermark: i64,
    /// Milliseconds from the engine's epoch to the group's last event (wall clock).
    #[serde(skip)]
    last_seen: u64,
    /// Open windows, ordered by start (one for tumbling windows: kept inline).
    windows: SmallVec<[Window; 1]>,
}

/// The state of every group's open windows.
pub struct FixedWindows {
    spec: WindowSpec,
    assigner: Assigner,
    /// Group key to the index of its slot.
    index: HashMap<GroupKey, u32, foldhash::fast::RandomState>,
    slots: Vec<Group>,
    /// Slots of forgotten groups, for reuse.
    free: Vec<u32>,
    open_windows: usize,
    /// The wall-clock origin of `Group::last_seen`.
    epoch: Instant,
    invalid_values: InvalidValues,
}

impl FixedWindows {
    pub fn new(spec: WindowSpec, assigner: Assigner) -> Self {
        Self {
            invalid_values: spec.invalid_values(),
            spec,
            assigner,
            index: HashMap::default(),
            slots: Vec::new(),
            free: Vec::new(),
            open_windows: 0,
            epoch: Instant::now(),
        }
    }

    fn millis_since_epoch(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// The slot of a new group.
    fn allocate(&mut self, group: Group) -> u32 {
        match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = group;
                slot
            }
            None => {
                self.slots.push(group);
                (self.slots.len() - 1) as u32
            }
        }
    }
}

impl WindowEngine for FixedWindows {
    type Group = Group;

    /// Folds one event into its group's windows and emits the windows it closes.
    fn add(
        &mut self,
        event: &Event,
        now_ms: i64,
        now: Instant,
        emitted: &mut Vec<Event>,
    ) -> Outcome {
        let (index, slots) = (&self.index, &self.slots);
        let watermark_of = |key: &GroupKey| {
            index
                .get(key)
                .map_or(i64::MIN, |slot| slots[*slot as usize].watermark)
        };
        let Admitted { key, time, outcome } = match self.spec.admit(event, now_ms, watermark_of) {
            Ok(admitted) => admitted,
            Err(outcome) => return outcome,
        };
        let seen = self.millis_since_epoch(now);
        let slot = match self.index.get(&key) {
            Some(slot) => *slot,
            None => {
                let keys = (!self.spec.by_device).then(|| self.spec.key_values(event));
                let slot = self.allocate(Group {
                    keys,
                    watermark: i64::MIN,
                    last_seen: seen,
                    windows: SmallVec::new(),
                });
                self.index.insert(key.clone(), slot);
                slot
            }
        };
        let group = &mut self.slots[slot as usize];

        // Find or open every window holding `time`.
        let mut overflow = false;
        let spec = &self.spec;
        let open_windows = &mut self.open_windows;
        let invalid = &mut self.invalid_values;
        self.assigner.for_each(time, |start, _| {
            let index = match group.windows.binary_search_by_key(&start, |w| w.start) {
                Ok(index) => index,
                Err(index) => {
                    if *open_windows >= spec.max_open_windows {
                        overflow = true;
                        return;
                    }
                    *open_windows += 1;
                    group.windows.insert(
                        index,
                        Window {
                            start,
                            accumulators: spec.accumulators(),
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
        group.last_seen = seen;
        if time > group.watermark {
            group.watermark = time;
            close_ready(
                &self.spec,
                self.assigner.size(),
                &key,
                group,
                &mut self.open_windows,
                emitted,
            );
        }
        outcome
    }

    /// Closes the windows of groups silent for `idle_timeout`; with `emit: every`, emits
    /// the open windows that changed as partial results.
    fn tick(&mut self, _now_ms: i64, now: Instant, emit_partial: bool, emitted: &mut Vec<Event>) {
        let now_ms = self.millis_since_epoch(now);
        let idle = u64::try_from(self.spec.idle_timeout.as_millis()).unwrap_or(u64::MAX);
        let size = self.assigner.size();
        for (key, slot) in &self.index {
            let group = &mut self.slots[*slot as usize];
            if group.windows.is_empty() {
                continue;
            }
            if now_ms.saturating_sub(group.last_seen) >= idle {
                let last_end = group
                    .windows
                    .last()
                    .map_or(group.watermark, |w| w.start + size);
                group.watermark = group
                    .watermark
                    .max(last_end.saturating_add(self.spec.lateness_ms));
                close_ready(
                    &self.spec,
                    size,
                    key,
                    group,
                    &mut self.open_windows,
                    emitted,
                );
            } else if emit_partial {
                let keys = keys_of(&self.spec, key, group).into_owned();
                for window in group.windows.iter_mut().filter(|w| w.dirty) {
                    window.dirty = false;
                    emitted.push(result(&self.spec, &keys, window, size, true));
                }
            }
        }
        // Groups without open windows keep only their watermark (so a straggler for an
        // emitted window stays late); forget long-silent ones so state stays bounded by the
        // devices that are active.
        let retention = u64::try_from(
            (self.spec.idle_timeout * 4)
                .max(GROUP_RETENTION)
                .as_millis(),
        )
        .unwrap_or(u64::MAX);
        let (slots, free) = (&mut self.slots, &mut self.free);
        self.index.retain(|_, slot| {
            let group = &mut slots[*slot as usize];
            let keep =
                !group.windows.is_empty() || now_ms.saturating_sub(group.last_seen) < retention;
            if !keep {
                *group = Group::default();
                free.push(*slot);
            }
            keep
        });
    }

    fn open_windows(&self) -> usize {
        self.open_windows
    }

    /// Approximate bytes of state: groups, windows and accumulators.
    fn state_bytes(&self) -> usize {
        let table = self.index.capacity() * (std::mem::size_of::<(GroupKey, u32)>() + 1) * 8 / 7;
        let slots = self.slots.capacity() * std::mem::size_of::<Group>();
        let keys: usize = self.index.keys().map(|k| k.0.len() + 16).sum();
        let per_window = self.spec.aggregates.len() * std::mem::size_of::<Accumulator>();
        let heap: usize = self
            .slots
            .iter()
            .flat_map(|g| g.windows.iter())
            .flat_map(|w| w.accumulators.iter())
            .map(Accumulator::heap_bytes)
            .sum();
        table + slots + keys + self.open_windows * per_window + heap
    }

    fn take_invalid_values(&mut self) -> Vec<u64> {
        self.invalid_values.take()
    }

    fn definition(&self) -> String {
        self.spec.definition(format_args!("{:?}", self.assigner))
    }

    fn close_all(&mut self, emitted: &mut Vec<Event>) {
        let size = self.assigner.size();
        for (key, slot) in &self.index {
            let group = &self.slots[*slot as usize];
            if group.windows.is_empty() {
                continue;
            }
            let keys = keys_of(&self.spec, key, group).into_owned();
            for window in &group.windows {
                emitted.push(result(&self.spec, &keys, window, size, true));
            }
        }
        self.export();
        self.index.clear();
        self.slots.clear();
        self.free.clear();
    }

    fn export(&mut self) -> Vec<(GroupKey, Group)> {
        self.open_windows = 0;
        self.free.clear();
        let mut slots = std::mem::take(&mut self.slots);
        self.index
            .drain()
            .map(|(key, slot)| (key, std::mem::take(&mut slots[slot as usize])))
            .filter(|(_, g)| !g.windows.is_empty())
            .collect()
    }

    fn snapshot(&self) -> Vec<(GroupKey, Group)> {
        self.index
            .iter()
            .map(|(key, slot)| (key, &self.slots[*slot as usize]))
            .filter(|(_, group)| !group.windows.is_empty())
            .map(|(key, group)| (key.clone(), group.clone()))
            .collect()
    }

    fn import(&mut self, groups: Vec<(GroupKey, Group)>) {
        let seen = self.millis_since_epoch(Instant::now());
        for (key, mut group) in groups {
            group.last_seen = seen;
            self.open_windows += group.windows.len();
            let slot = self.allocate(group);
            self.index.insert(key, slot);
        }
    }
}

/// The group's key values: stored, or the device id the key holds.
fn keys_of<'a>(spec: &WindowSpec, key: &GroupKey, group: &'a Group) -> Cow<'a, [Value]> {
    match &group.keys {
        Some(keys) => Cow::Borrowed(keys),
        None if spec.by_device => Cow::Owned(vec![Value::String(key.0.to_string())]),
        None => Cow::Owned(Vec::new()),
    }
}

/// Emits and removes the group's windows whose `end + lateness` the watermark has reached
/// (windows of one size close in start order).
fn close_ready(
    spec: &WindowSpec,
    size: i64,
    key: &GroupKey,
    group: &mut Group,
    open_windows: &mut usize,
    emitted: &mut Vec<Event>,
) {
    let horizon = group.watermark.saturating_sub(spec.lateness_ms);
    let closing = group
        .windows
        .iter()
        .take_while(|w| w.start + size <= horizon)
        .count();
    if closing == 0 {
        return;
    }
    let keys = keys_of(spec, key, group).into_owned();
    for window in group.windows.drain(..closing) {
        *open_windows -= 1;
        emitted.push(result(spec, &keys, &window, size, false));
    }
}

fn result(spec: &WindowSpec, keys: &[Value], window: &Window, size: i64, partial: bool) -> Event {
    spec.output(
        keys,
        window.start,
        window.start + size,
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
