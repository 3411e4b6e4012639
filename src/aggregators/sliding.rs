//! `sliding`: a window of `size` that moves with the data and emits whenever its content
//! changes — when an event enters it or leaves it.
//!
//! The change points of a group are its event times `t` (an event enters) and `t + size`
//! (it leaves). At each change point `p` the window is `(p - size, p]`: unlike the other
//! window types it includes its end, so the output for an event's arrival includes that
//! event. A change point is emitted once it is final — once its group's watermark minus
//! `allowed_lateness` has passed it — and only if the window holds events. Sliding windows
//! keep the events of the last `size` (plus lateness) per group, since each output is
//! computed afresh from them.

use std::collections::BTreeSet;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::engine::{GroupState, Groups, WindowEngine};
use super::window::{
    Admitted, GroupKey, InvalidValues, Outcome, WindowSpec, millis, window_config,
};
use super::{AggregatorComponent, AggregatorContext, engine};
use crate::config::{Duration, FieldProblem, OutputName};
use crate::event::Event;
use crate::topology::ComponentTask;

window_config! {
    /// A window of `size` ending at every change of its content.
    pub struct SlidingConfig {
        /// How far back the window reaches, e.g. `5m`.
        pub size: Duration,
    }
}

impl AggregatorComponent for SlidingConfig {
    fn named_outputs(&self) -> Vec<OutputName> {
        super::late_outputs(self.late_events)
    }

    fn check(&self) -> Vec<FieldProblem> {
        let mut problems = self.common().check();
        if self.size.get().as_millis() == 0 {
            problems.push(FieldProblem::at(
                ["size"],
                "expected a window size of at least 1ms",
            ));
        }
        if matches!(self.emit, super::window::Emit::Every(_)) {
            problems.push(FieldProblem::at(
                ["emit"],
                "sliding windows already emit at every change: expected `on_close`",
            ));
        }
        problems
    }

    fn build(&self, cx: AggregatorContext) -> anyhow::Result<ComponentTask> {
        let common = self.common();
        let component = cx.id.as_arc();
        let spec = || WindowSpec::new(component.clone(), &common, self.size.get());
        let size = millis(self.size);
        engine::spawn(cx, engine::Runner::new(spec(), common.shards), || {
            SlidingWindows::new(spec(), size)
        })
    }
}

/// One group's recent events and pending change points.
#[derive(Clone, Serialize, Deserialize)]
pub struct Group {
    keys: Box<[Value]>,
    watermark: i64,
    #[serde(skip, default = "Instant::now")]
    last_seen: Instant,
    /// Events by time (stable for equal times): time and the values of each aggregate.
    events: Vec<(i64, Box<[Value]>)>,
    /// Change points not emitted yet.
    pending: BTreeSet<i64>,
}

impl GroupState for Group {
    fn open_windows(&self) -> usize {
        self.pending.len()
    }

    fn resume(&mut self, now: Instant) {
        self.last_seen = now;
    }
}

pub struct SlidingWindows {
    spec: WindowSpec,
    size: i64,
    /// Their open windows are their pending change points.
    groups: Groups<Group>,
    invalid_values: InvalidValues,
}

impl SlidingWindows {
    pub fn new(spec: WindowSpec, size: i64) -> Self {
        Self {
            invalid_values: spec.invalid_values(),
            spec,
            size,
            groups: Groups::default(),
        }
    }
}

/// Emits the group's change points before `horizon`, then forgets events no later window
/// can hold.
fn emit_ready(
    spec: &WindowSpec,
    size: i64,
    group: &mut Group,
    horizon: i64,
    pending: &mut usize,
    emitted: &mut Vec<Event>,
) {
    emit_until(spec, size, group, horizon, pending, false, emitted);
}

/// Emits the windows ending before `horizon`; `partial` marks results closed early.
fn emit_until(
    spec: &WindowSpec,
    size: i64,
    group: &mut Group,
    horizon: i64,
    pending: &mut usize,
    partial: bool,
    emitted: &mut Vec<Event>,
) {
    while let Some(&point) = group.pending.first() {
        if point >= horizon {
            break;
        }
        group.pending.pop_first();
        *pending -= 1;
        let from = group.events.partition_point(|(t, _)| *t <= point - size);
        let to = group.events.partition_point(|(t, _)| *t <= point);
        if from == to {
            continue;
        }
        let mut accumulators = spec.accumulators();
        for (time, values) in &group.events[from..to] {
            spec.fold_values(&mut accumulators, values, *time);
        }
        emitted.push(spec.output(
            &group.keys,
            point - size,
            point,
            spec.results(&accumulators),
            partial,
        ));
    }
    let keep_after = group.pending.first().map_or(horizon, |p| (*p).min(horizon)) - size;
    let stale = group.events.partition_point(|(t, _)| *t <= keep_after);
    group.events.drain(..stale);
}

impl WindowEngine for SlidingWindows {
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
        if self.groups.open + 2 > self.spec.max_open_windows {
            return Outcome::Overflow;
        }

        let spec = &self.spec;
        let group = self.groups.by_key.entry(key).or_insert_with(|| Group {
            keys: spec.key_values(event),
            watermark: i64::MIN,
            last_seen: now,
            events: Vec::new(),
            pending: BTreeSet::new(),
        });
        group.last_seen = now;
        let values = spec.values_of(event, &mut self.invalid_values);
        let at = group.events.partition_point(|(t, _)| *t <= time);
        group.events.insert(at, (time, values));
        for point in [time, time.saturating_add(self.size)] {
            if group.pending.insert(point) {
                self.groups.open += 1;
            }
        }
        group.watermark = group.watermark.max(time);
        let horizon = group.watermark.saturating_sub(spec.lateness_ms);
        emit_ready(
            spec,
            self.size,
            group,
            horizon,
            &mut self.groups.open,
            emitted,
        );
        outcome
    }

    fn tick(&mut self, _now_ms: i64, now: Instant, _partial: bool, emitted: &mut Vec<Event>) {
        let idle = self.spec.idle_timeout;
        let Groups { by_key, open } = &mut self.groups;
        for group in by_key.values_mut() {
            if !group.pending.is_empty() && now.duration_since(group.last_seen) >= idle {
                let last = group.pending.last().copied().unwrap_or(group.watermark);
                group.watermark = group
                    .watermark
                    .max(last.saturating_add(self.spec.lateness_ms).saturating_add(1));
                let horizon = group.watermark.saturating_sub(self.spec.lateness_ms);
                emit_ready(&self.spec, self.size, group, horizon, open, emitted);
            }
        }
        let retention = (idle * 4).max(std::time::Duration::from_secs(600));
        by_key.retain(|_, g| !g.pending.is_empty() || now.duration_since(g.last_seen) < retention);
    }

    fn open_windows(&self) -> usize {
        self.groups.open
    }

    fn state_bytes(&self) -> usize {
        let per_event = std::mem::size_of::<(i64, Box<[Value]>)>()
            + self.spec.aggregates.len() * std::mem::size_of::<Value>();
        let groups = &self.groups.by_key;
        let events: usize = groups.values().map(|g| g.events.len()).sum();
        groups.len() * (std::mem::size_of::<(GroupKey, Group)>() + 16)
            + events * per_event
            + self.groups.open * 40
    }

    fn take_invalid_values(&mut self) -> Vec<u64> {
        self.invalid_values.take()
    }

    fn definition(&self) -> String {
        self.spec
            .definition(format_args!("sliding size={}", self.size))
    }

    fn export(&mut self) -> Vec<(GroupKey, Group)> {
        self.groups.export()
    }

    fn close_all(&mut self, emitted: &mut Vec<Event>) {
        let Groups { by_key, open } = &mut self.groups;
        for group in by_key.values_mut() {
            emit_until(&self.spec, self.size, group, i64::MAX, open, true, emitted);
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
