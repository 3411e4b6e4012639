//! What every window type shares: its options, how it reads event time and group keys,
//! and how it reports what it did.

use std::sync::Arc;

use indexmap::IndexMap;
use jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::aggregate::{Accumulator, Aggregate, Skip};
use crate::config::{Duration, FieldProblem};
use crate::event::{Event, parse_event_time};

/// What happens to an event that arrives after its window closed (late) or too far ahead
/// of the wall clock (future). Either way it is counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LatePolicy {
    /// Drop it.
    #[default]
    Drop,
    /// Move its time to the oldest window still open (late) or to now (future).
    Adjust,
    /// Send it to `<id>.late`.
    Route,
}

/// When an event folded into a window counts as handled, for the source waiting to
/// acknowledge it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WindowAck {
    /// Once the window state holding it is checkpointed to `data_dir`: a crash after the
    /// acknowledgement loses nothing.
    #[default]
    OnCheckpoint,
    /// As soon as it is folded (lower latency; a crash loses the open windows since the
    /// last checkpoint).
    OnReceive,
}

/// When windows emit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Emit {
    /// Once, when the window closes.
    #[default]
    OnClose,
    /// Also every interval while open, with `partial: true` (for dashboards).
    Every(Duration),
}

/// Declares a window type's config struct: its own fields, then the options every window
/// type shares (so they are written once and documented once).
macro_rules! window_config {
    (
        $(#[$doc:meta])*
        pub struct $name:ident {
            $($(#[$fattr:meta])* pub $field:ident: $ty:ty,)*
        }
    ) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $($(#[$fattr])* pub $field: $ty,)*
            /// Fields whose values form a group (default `[device_id]`); each group has its
            /// own windows and its own watermark.
            #[serde(default = "crate::aggregators::window::default_group_by")]
            pub group_by: Vec<String>,
            /// Field holding the event time (RFC 3339 or epoch s/ms/µs); default: the event
            /// time the source assigned.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub event_time: Option<String>,
            /// How long after a window's end its late events are still accepted.
            #[serde(default = "crate::aggregators::window::zero")]
            pub allowed_lateness: crate::config::Duration,
            /// What to do with late events (and with events too far in the future).
            #[serde(default)]
            pub late_events: crate::aggregators::window::LatePolicy,
            /// Events more than this ahead of the wall clock count as "future".
            #[serde(default = "crate::aggregators::window::default_max_future")]
            pub max_future: crate::config::Duration,
            /// Close a group's windows when it has sent nothing for this long (wall clock),
            /// so the last window of a silent device still closes. Default: the window size
            /// plus `allowed_lateness`.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub idle_timeout: Option<crate::config::Duration>,
            /// Output field to aggregate, e.g. `temp_avg: avg(temperature)`.
            pub aggregates: indexmap::IndexMap<String, crate::aggregators::aggregate::Aggregate>,
            #[serde(default)]
            pub emit: crate::aggregators::window::Emit,
            /// Most windows open at once across all groups; events that would open more
            /// go to `<id>.errors` (counted).
            #[serde(default = "crate::aggregators::window::default_max_open_windows")]
            pub max_open_windows: usize,
            /// Engines working in parallel, each owning a share of the groups; default: one
            /// per core.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub shards: Option<usize>,
            /// When a folded event counts as handled for its source's acknowledgement.
            #[serde(default)]
            pub ack: crate::aggregators::window::WindowAck,
            /// How often open windows are checkpointed to `data_dir` while running.
            #[serde(default = "crate::aggregators::window::default_checkpoint_interval")]
            pub checkpoint_interval: crate::config::Duration,
        }

        impl $name {
            fn common(&self) -> crate::aggregators::window::WindowCommon {
                crate::aggregators::window::WindowCommon {
                    group_by: self.group_by.clone(),
                    event_time: self.event_time.clone(),
                    allowed_lateness: self.allowed_lateness,
                    late_events: self.late_events,
                    max_future: self.max_future,
                    idle_timeout: self.idle_timeout,
                    aggregates: self.aggregates.clone(),
                    emit: self.emit,
                    max_open_windows: self.max_open_windows,
                    shards: self.shards,
                    ack: self.ack,
                    checkpoint_interval: self.checkpoint_interval,
                }
            }
        }
    };
}

pub(crate) use window_config;

pub(crate) fn default_group_by() -> Vec<String> {
    vec!["device_id".into()]
}
pub(crate) fn zero() -> Duration {
    Duration::from_secs(0)
}
pub(crate) fn default_max_future() -> Duration {
    Duration::from_secs(3600)
}
pub(crate) fn default_checkpoint_interval() -> Duration {
    Duration::from_secs(1)
}
pub(crate) fn default_max_open_windows() -> usize {
    10_000_000
}

/// The shared options, separated from any one window type.
#[derive(Clone, Debug, PartialEq)]
pub struct WindowCommon {
    pub group_by: Vec<String>,
    pub event_time: Option<String>,
    pub allowed_lateness: Duration,
    pub late_events: LatePolicy,
    pub max_future: Duration,
    pub idle_timeout: Option<Duration>,
    pub aggregates: IndexMap<String, Aggregate>,
    pub emit: Emit,
    pub max_open_windows: usize,
    pub shards: Option<usize>,
    pub ack: WindowAck,
    pub checkpoint_interval: Duration,
}

impl WindowCommon {
    pub fn check(&self) -> Vec<FieldProblem> {
        let mut problems = Vec::new();
        if self.group_by.iter().any(|f| f.is_empty()) {
            problems.push(FieldProblem::at(["group_by"], "expected field names"));
        }
        if self.aggregates.is_empty() {
            problems.push(FieldProblem::at(
                ["aggregates"],
                "expected at least one aggregate, e.g. `readings: count()`",
            ));
        }
        for name in self.aggregates.keys() {
            if self.group_by.contains(name)
                || matches!(name.as_str(), "window_start" | "window_end" | "partial")
            {
                problems.push(FieldProblem::at(
                    ["aggregates", name.as_str()],
                    format!("`{name}` is already an output field (a group key or window bound)"),
                ));
            }
        }
        if let Emit::Every(every) = self.emit
            && every.get().is_zero()
        {
            problems.push(FieldProblem::at(
                ["emit"],
                "expected an interval above zero",
            ));
        }
        if self.shards == Some(0) {
            problems.push(FieldProblem::at(["shards"], "expected at least 1"));
        }
        if self.checkpoint_interval.get() < std::time::Duration::from_millis(10) {
            problems.push(FieldProblem::at(
                ["checkpoint_interval"],
                "expected at least 10ms",
            ));
        }
        if self.max_open_windows == 0 {
            problems.push(FieldProblem::at(
                ["max_open_windows"],
                "expected at least 1",
            ));
        }
        problems
    }
}

/// Everything the window engines need from the options, resolved once.
pub struct WindowSpec {
    pub component: Arc<str>,
    pub group_by: Vec<String>,
    /// `group_by == [device_id]`: the key is the event's device id, no allocation.
    pub by_device: bool,
    pub event_time: Option<String>,
    pub lateness_ms: i64,
    pub late_events: LatePolicy,
    pub max_future_ms: i64,
    pub idle_timeout: std::time::Duration,
    pub names: Vec<String>,
    pub aggregates: Vec<Aggregate>,
    pub emit_every: Option<std::time::Duration>,
    pub max_open_windows: usize,
    /// Keep folded events' deliveries until the next checkpoint (`ack: on_checkpoint`).
    pub hold_deliveries: bool,
    pub checkpoint_every: std::time::Duration,
}

impl WindowSpec {
    pub fn new(
        component: Arc<str>,
        common: &WindowCommon,
        default_idle: std::time::Duration,
    ) -> Self {
        Self {
            component,
            by_device: common.group_by == ["device_id"],
            group_by: common.group_by.clone(),
            event_time: common.event_time.clone(),
            lateness_ms: millis(common.allowed_lateness),
            late_events: common.late_events,
            max_future_ms: millis(common.max_future),
            idle_timeout: common
                .idle_timeout
                .map_or(default_idle + common.allowed_lateness.get(), Duration::get),
            names: common.aggregates.keys().cloned().collect(),
            aggregates: common.aggregates.values().cloned().collect(),
            emit_every: match common.emit {
                Emit::OnClose => None,
                Emit::Every(every) => Some(every.get()),
            },
            max_open_windows: common.max_open_windows,
            hold_deliveries: common.ack == WindowAck::OnCheckpoint,
            checkpoint_every: common.checkpoint_interval.get(),
        }
    }

    /// The event time in epoch milliseconds, or why it cannot be read.
    pub fn time_of(&self, event: &Event) -> Result<i64, String> {
        match &self.event_time {
            None => Ok(event.time.as_millisecond()),
            Some(field) => match event.get(field) {
                Some(value) => parse_event_time(value).map(|t| t.as_millisecond()).ok_or_else(|| {
                    format!("field `{field}` is {value}: expected an event time (RFC 3339 or epoch seconds/milliseconds/microseconds)")
                }),
                None => Err(format!("field `{field}` (the event time) is missing")),
            },
        }
    }

    /// Reads an event's time and group and applies `max_future` and `allowed_lateness`
    /// (against the group's watermark, from `watermark_of`): what to fold and at which
    /// time, or what to do with the event instead.
    pub fn admit(
        &self,
        event: &Event,
        now_ms: i64,
        watermark_of: impl FnOnce(&GroupKey) -> i64,
    ) -> Result<Admitted, Outcome> {
        let time = self.time_of(event).map_err(Outcome::BadTime)?;
        let (time, future) = self.admit_future(time, now_ms)?;
        let key = self.key_of(event);
        let (time, late) = self.admit_late(time, watermark_of(&key))?;
        let outcome = if late == Outcome::Folded {
            future
        } else {
            late
        };
        Ok(Admitted { key, time, outcome })
    }

    /// Applies `max_future`: the time to fold the event at, or what to do instead.
    fn admit_future(&self, time: i64, now_ms: i64) -> Result<(i64, Outcome), Outcome> {
        if time <= now_ms.saturating_add(self.max_future_ms) {
            return Ok((time, Outcome::Folded));
        }
        match self.late_events {
            LatePolicy::Drop => Err(Outcome::Dropped(Bound::Future)),
            LatePolicy::Route => Err(Outcome::Routed(Bound::Future)),
            LatePolicy::Adjust => Ok((now_ms, Outcome::Adjusted(Bound::Future))),
        }
    }

    /// Applies `allowed_lateness` against the group's watermark: an event more than the
    /// lateness behind it is late.
    fn admit_late(&self, time: i64, watermark: i64) -> Result<(i64, Outcome), Outcome> {
        let horizon = watermark.saturating_sub(self.lateness_ms);
        if time >= horizon {
            return Ok((time, Outcome::Folded));
        }
        match self.late_events {
            LatePolicy::Drop => Err(Outcome::Dropped(Bound::Late)),
            LatePolicy::Route => Err(Outcome::Routed(Bound::Late)),
            LatePolicy::Adjust => Ok((horizon, Outcome::Adjusted(Bound::Late))),
        }
    }

    /// Identifies a window definition in its checkpoints: `shape` (what sets the window
    /// type's windows apart, e.g. `sliding size=60000`), then the aggregates. A checkpoint
    /// written under another definition is ignored, so changing this text for the same
    /// options would drop the open windows of every checkpoint written before.
    pub fn definition(&self, shape: impl std::fmt::Display) -> String {
        let aggregates: Vec<String> = self.aggregates.iter().map(ToString::to_string).collect();
        format!("{shape} {}", aggregates.join(","))
    }

    /// Fresh counts of skipped values, one per aggregate.
    pub fn invalid_values(&self) -> InvalidValues {
        InvalidValues(vec![0; self.aggregates.len()])
    }

    /// Fresh accumulators, one per aggregate.
    pub fn accumulators(&self) -> Box<[Accumulator]> {
        self.aggregates.iter().map(Aggregate::accumulator).collect()
    }

    /// Folds the event's values into `accumulators`; counts non-numbers in `invalid`.
    pub fn fold(
        &self,
        accumulators: &mut [Accumulator],
        event: &Event,
        time: i64,
        invalid: &mut InvalidValues,
    ) {
        for (i, (aggregate, accumulator)) in self
            .aggregates
            .iter()
            .zip(accumulators.iter_mut())
            .enumerate()
        {
            let result = match aggregate.field.as_deref() {
                None => accumulator.add(None, time),
                Some("device_id") => {
                    let id = event
                        .device_id
                        .as_deref()
                        .map(|id| Value::String(id.to_owned()));
                    accumulator.add(id.as_ref(), time)
                }
                Some(field) => accumulator.add(event.get(field), time),
            };
            if result == Err(Skip::NotANumber) {
                invalid.count(i);
            }
        }
    }

    /// The values an event gives each aggregate (null where it has none), and how many of
    /// them a numeric aggregate cannot use; for engines that keep events, not accumulators.
    pub fn values_of(&self, event: &Event, invalid: &mut InvalidValues) -> Box<[Value]> {
        self.aggregates
            .iter()
            .enumerate()
            .map(|(i, aggregate)| {
                let value = match aggregate.field.as_deref() {
                    None => Value::Null,
                    Some("device_id") => event
                        .device_id
                        .as_deref()
                        .map_or(Value::Null, |id| Value::String(id.to_owned())),
                    Some(field) => event.get(field).cloned().unwrap_or(Value::Null),
                };
                if aggregate.function.is_numeric() && !value.is_null() && !value.is_number() {
                    invalid.count(i);
                }
                value
            })
            .collect()
    }

    /// Folds values taken with [`Self::values_of`].
    pub fn fold_values(&self, accumulators: &mut [Accumulator], values: &[Value], time: i64) {
        for (accumulator, value) in accumulators.iter_mut().zip(values) {
            let _ = accumulator.add(Some(value), time);
        }
    }

    /// The results of `accumulators`, in aggregate order.
    pub fn results<'a>(
        &'a self,
        accumulators: &'a [Accumulator],
    ) -> impl Iterator<Item = Value> + 'a {
        self.aggregates
            .iter()
            .zip(accumulators)
            .map(|(a, acc)| acc.result(a.function))
    }

    /// The group key of an event and, for a new group, the values that form it.
    pub fn key_of(&self, event: &Event) -> GroupKey {
        if self.by_device {
            return GroupKey(event.device_id.clone().unwrap_or_else(|| Arc::from("")));
        }
        let mut key = String::new();
        for field in &self.group_by {
            match group_value(event, field) {
                Value::String(s) => key.push_str(&s),
                other => key.push_str(&other.to_string()),
            }
            key.push('\u{1f}');
        }
        GroupKey(key.into())
    }

    pub fn key_values(&self, event: &Event) -> Box<[Value]> {
        self.group_by
            .iter()
            .map(|field| group_value(event, field))
            .collect()
    }

    /// An output event for a window of a group.
    pub fn output(
        &self,
        keys: &[Value],
        start: i64,
        end: i64,
        results: impl Iterator<Item = Value>,
        partial: bool,
    ) -> Event {
        let mut fields =
            crate::event::Fields::with_capacity(self.group_by.len() + self.names.len() + 3);
        let mut device_id = None;
        for (name, value) in self.group_by.iter().zip(keys) {
            if name == "device_id" {
                device_id = value.as_str().map(Arc::from);
            }
            fields.insert(name.clone(), value.clone());
        }
        fields.insert(
            "window_start".into(),
            Value::String(timestamp(start).to_string()),
        );
        fields.insert(
            "window_end".into(),
            Value::String(timestamp(end).to_string()),
        );
        for (name, value) in self.names.iter().zip(results) {
            fields.insert(name.clone(), value);
        }
        if partial {
            fields.insert("partial".into(), Value::Bool(true));
        }
        let meta = Arc::new(crate::event::EventMeta::received_by(Arc::clone(
            &self.component,
        )));
        let mut event = Event::new(device_id, fields, meta);
        event.time = timestamp(end);
        event
    }
}

fn group_value(event: &Event, field: &str) -> Value {
    if field == "device_id" {
        return event
            .device_id
            .as_deref()
            .map_or(Value::Null, |id| Value::String(id.to_owned()));
    }
    event.get(field).cloned().unwrap_or(Value::Null)
}

/// Non-numeric values a numeric aggregate met and skipped, per aggregate, since the
/// engine last reported them (to `aggregator_invalid_values_total`).
pub struct InvalidValues(Vec<u64>);

impl InvalidValues {
    fn count(&mut self, aggregate: usize) {
        self.0[aggregate] += 1;
    }

    /// The counts so far; counting starts again from zero.
    pub fn take(&mut self) -> Vec<u64> {
        let zeros = vec![0; self.0.len()];
        std::mem::replace(&mut self.0, zeros)
    }
}

/// An event a window engine takes: its group, the time to fold it at, and whether it was
/// adjusted on the way.
pub struct Admitted {
    pub key: GroupKey,
    pub time: i64,
    pub outcome: Outcome,
}

/// A group's identity: the joined values of its `group_by` fields.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GroupKey(pub Arc<str>);

pub fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.get().as_millis()).unwrap_or(i64::MAX)
}

pub fn timestamp(ms: i64) -> Timestamp {
    Timestamp::from_millisecond(ms).unwrap_or(Timestamp::UNIX_EPOCH)
}

#[cfg(test)]
pub(crate) mod testing;

/// What happened to one event, beyond being folded into windows.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    Folded,
    /// Late or future, dropped (counted).
    Dropped(Bound),
    /// Late or future, to be sent to `<id>.late`.
    Routed(Bound),
    /// Late or future, its time moved into an open window.
    Adjusted(Bound),
    /// Its event time could not be read.
    BadTime(String),
    /// Opening its window would exceed `max_open_windows`.
    Overflow,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Bound {
    Late,
    Future,
}

impl Bound {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Late => "late",
            Self::Future => "future",
        }
    }
}
