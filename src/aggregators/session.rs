//! `session`: windows that last while a group keeps sending, e.g. one per machine run.
//!
//! A session holds events closer than `gap` to one another; a pause of `gap` or more ends
//! it. An event that bridges two sessions merges them. With `max_duration`, no session
//! spans more than that: an event at or past `start + max_duration` opens a new session.
//! A session closes when its group's watermark reaches its end (`last event + gap`, capped
//! at `start + max_duration`) plus `allowed_lateness`; its output has `window_start` = the
//! first event's time and `window_end` = that end.

use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::aggregate::Accumulator;
use super::engine::{GroupState, Groups, WindowEngine};
use super::window::{
    Admitted, GroupKey, InvalidValues, Outcome, WindowSpec, millis, window_config,
};
use super::{AggregatorComponent, AggregatorContext, engine};
use crate::config::{Duration, FieldProblem, OutputName};
use crate::event::Event;
use crate::topology::ComponentTask;

window_config! {
    /// Activity sessions per group.
    pub struct SessionConfig {
        /// A pause this long ends a session, e.g. `5m`.
        pub gap: Duration,
        /// The longest a session may last; default: unbounded.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub max_duration: Option<Duration>,
    }
}

impl AggregatorComponent for SessionConfig {
    fn named_outputs(&self) -> Vec<OutputName> {
        super::late_outputs(self.late_events)
    }

    fn check(&self) -> Vec<FieldProblem> {
        let mut problems = self.common().check();
        if self.gap.get().as_millis() == 0 {
            problems.push(FieldProblem::at(["gap"], "expected a gap of at least 1ms"));
        }
        if matches!(self.emit, super::window::Emit::Every(_)) {
            problems.push(FieldProblem::at(
                ["emit"],
                "session windows emit when they close: expected `on_close`",
            ));
        }
        if self.max_duration.is_some_and(|max| max < self.gap) {
            problems.push(FieldProblem::at(
                ["max_duration"],
                "expected a maximum duration no shorter than `gap`",
            ));
        }
        problems
    }

    fn build(&self, cx: AggregatorContext) -> anyhow::Result<ComponentTask> {
        let common = self.common();
        let component = cx.id.as_arc();
        let spec = || WindowSpec::new(component.clone(), &common, self.gap.get());
        let (gap, max) = (millis(self.gap), self.max_duration.map(millis));
        engine::spawn(cx, engine::Runner::new(spec(), common.shards), || {
            SessionWindows::new(spec(), gap, max)
        })
    }
}

#[derive(Clone, Serialize, Deserialize)]
pub struct Session {
    start: i64,
    /// Time of the latest event.
    last: i64,
    accumulators: Box<[Accumulator]>,
}

/// One group's watermark and open sessions.
#[derive(Clone, Serialize, Deserialize)]
pub struct Group {
    keys: Box<[Value]>,
    watermark: i64,
    #[serde(skip, default = "Instant::now")]
    last_seen: Instant,
    /// Open sessions, ordered by start.
    sessions: Vec<Session>,
}

impl GroupState for Group {
    fn open_windows(&self) -> usize {
        self.sessions.len()
    }

    fn resume(&mut self, now: Instant) {
        self.last_seen = now;
    }
}

pub struct SessionWindows {
    spec: WindowSpec,
    gap: i64,
    max_duration: Option<i64>,
    groups: Groups<Group>,
    invalid_values: InvalidValues,
}

impl SessionWindows {
    pub fn new(spec: WindowSpec, gap: i64, max_duration: Option<i64>) -> Self {
        Self {
            invalid_values: spec.invalid_values(),
            spec,
            gap,
            max_duration,
            groups: Groups::default(),
        }
    }

    fn end_of(&self, session: &Session) -> i64 {
        session_end(session, self.gap, self.max_duration)
    }

    fn within_max(&self, start: i64, last: i64) -> bool {
        self.max_duration.is_none_or(|max| last - start < max)
    }

    /// Emits and removes the sessions of `group` that its watermark has closed.
    fn close_ready(&mut self, key: &GroupKey, emitted: &mut Vec<Event>) {
        let Some(group) = self.groups.by_key.get_mut(key) else {
            return;
        };
        let horizon = group.watermark.saturating_sub(self.spec.lateness_ms);
        let (gap, max) = (self.gap, self.max_duration);
        let mut index = 0;
        while index < group.sessions.len() {
            if session_end(&group.sessions[index], gap, max) <= horizon {
                let session = group.sessions.remove(index);
                self.groups.open -= 1;
                let end = session_end(&session, gap, max);
                emitted.push(result(&self.spec, &group.keys, &session, end, false));
            } else {
                index += 1;
            }
        }
    }
}

/// Where a session ends: `gap` after its last event, or at `max` after its start.
fn session_end(session: &Session, gap: i64, max: Option<i64>) -> i64 {
    let end = session.last.saturating_add(gap);
    max.map_or(end, |max| end.min(session.start.saturating_add(max)))
}

fn result(spec: &WindowSpec, keys: &[Value], session: &Session, end: i64, partial: bool) -> Event {
    spec.output(
        keys,
        session.start,
        end,
        spec.results(&session.accumulators),
        partial,
    )
}

impl WindowEngine for SessionWindows {
    type Group = Group;

    fn add(
        &mut self,
        event: &Event,
        now_ms: i64,
        now: Instant,
        emitted: &mut Vec<Event>,
    ) -> Outcome {
        let groups = &self.groups.by_key;
        let Admitted { key, time, outcome } = match self.spec.admit(event, now_ms, |key| {
            groups.get(key).map_or(i64::MIN, |g| g.watermark)
        }) {
            Ok(admitted) => admitted,
            Err(outcome) => return outcome,
        };

        // Sessions the event touches: closer than `gap` to their span.
        let gap = self.gap;
        let sessions = self
            .groups
            .by_key
            .get(&key)
            .map_or(&[][..], |g| &g.sessions[..]);
        let touching: Vec<usize> = sessions
            .iter()
            .enumerate()
            .filter(|(_, s)| time > s.start - gap && time < s.last + gap)
            .map(|(i, _)| i)
            .collect();
        let merged_start = touching
            .iter()
            .map(|&i| sessions[i].start)
            .chain([time])
            .min()
            .unwrap_or(time);
        let merged_last = touching
            .iter()
            .map(|&i| sessions[i].last)
            .chain([time])
            .max()
            .unwrap_or(time);
        let target = if touching.is_empty() {
            None
        } else if self.within_max(merged_start, merged_last) {
            Some(touching.clone())
        } else {
            // Merging would exceed max_duration: join the latest session the event fits in.
            touching
                .iter()
                .rev()
                .find(|&&i| sessions[i].start <= time && self.within_max(sessions[i].start, time))
                .map(|&i| vec![i])
        };
        if target.is_none() && self.groups.open >= self.spec.max_open_windows {
            return Outcome::Overflow;
        }

        let spec = &self.spec;
        let group = self
            .groups
            .by_key
            .entry(key.clone())
            .or_insert_with(|| Group {
                keys: spec.key_values(event),
                watermark: i64::MIN,
                last_seen: now,
                sessions: Vec::new(),
            });
        group.last_seen = now;
        let index = match target {
            None => {
                let at = group.sessions.partition_point(|s| s.start <= time);
                group.sessions.insert(
                    at,
                    Session {
                        start: time,
                        last: time,
                        accumulators: spec.accumulators(),
                    },
                );
                self.groups.open += 1;
                at
            }
            Some(indexes) => {
                // Merge the others into the first (they are in start order).
                let first = indexes[0];
                for &i in indexes[1..].iter().rev() {
                    let other = group.sessions.remove(i);
                    self.groups.open -= 1;
                    let into = &mut group.sessions[first];
                    into.start = into.start.min(other.start);
                    into.last = into.last.max(other.last);
                    for (a, b) in into
                        .accumulators
                        .iter_mut()
                        .zip(other.accumulators.into_vec())
                    {
                        a.merge(b);
                    }
                }
                first
            }
        };
        let session = &mut group.sessions[index];
        session.start = session.start.min(time);
        session.last = session.last.max(time);
        spec.fold(
            &mut session.accumulators,
            event,
            time,
            &mut self.invalid_values,
        );
        group.sessions.sort_by_key(|s| s.start);
        if time > group.watermark {
            group.watermark = time;
        }
        self.close_ready(&key, emitted);
        outcome
    }

    fn tick(&mut self, _now_ms: i64, now: Instant, _partial: bool, emitted: &mut Vec<Event>) {
        let idle = self.spec.idle_timeout;
        let idle_keys: Vec<GroupKey> = self
            .groups
            .by_key
            .iter()
            .filter(|(_, g)| !g.sessions.is_empty() && now.duration_since(g.last_seen) >= idle)
            .map(|(k, _)| k.clone())
            .collect();
        for key in idle_keys {
            let ends: Option<i64> = self
                .groups
                .by_key
                .get(&key)
                .and_then(|g| g.sessions.iter().map(|s| self.end_of(s)).max());
            if let (Some(end), Some(group)) = (ends, self.groups.by_key.get_mut(&key)) {
                group.watermark = group
                    .watermark
                    .max(end.saturating_add(self.spec.lateness_ms));
            }
            self.close_ready(&key, emitted);
        }
        let retention = (idle * 4).max(std::time::Duration::from_secs(600));
        self.groups
            .by_key
            .retain(|_, g| !g.sessions.is_empty() || now.duration_since(g.last_seen) < retention);
    }

    fn open_windows(&self) -> usize {
        self.groups.open
    }

    fn state_bytes(&self) -> usize {
        let per_session = std::mem::size_of::<Session>()
            + self.spec.aggregates.len() * std::mem::size_of::<Accumulator>();
        let heap: usize = self
            .groups
            .by_key
            .values()
            .flat_map(|g| &g.sessions)
            .flat_map(|s| s.accumulators.iter())
            .map(Accumulator::heap_bytes)
            .sum();
        self.groups.by_key.len() * (std::mem::size_of::<(GroupKey, Group)>() + 16)
            + self.groups.open * per_session
            + heap
    }

    fn take_invalid_values(&mut self) -> Vec<u64> {
        self.invalid_values.take()
    }

    fn definition(&self) -> String {
        self.spec.definition(format_args!(
            "session gap={} max={:?}",
            self.gap, self.max_duration
        ))
    }

    fn export(&mut self) -> Vec<(GroupKey, Group)> {
        self.groups.export()
    }

    fn close_all(&mut self, emitted: &mut Vec<Event>) {
        for group in self.groups.by_key.values_mut() {
            for session in group.sessions.drain(..) {
                let end = session_end(&session, self.gap, self.max_duration);
                emitted.push(result(&self.spec, &group.keys, &session, end, true));
            }
        }
        self.groups.export();
    }

    fn snapshot(&self) -> Vec<(GroupKey, Group)> {
        self.groups.snapshot()
    }

    fn import(&mut self, groups: Vec<(GroupKey, Group)>) {
        self.groups.import(groups);
    }
}

#[cfg(test)]
mod tests;
