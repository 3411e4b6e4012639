//! `absence`: a device that goes quiet is an insight too.
//!
//! Each group is *absent* once the stream's clock is `timeout` past its last event; the
//! aggregator emits `state: absent` once per silence, and `state: returned` when the group
//! sends again. The clock is event time: the latest event time seen from any group,
//! moved on by the wall clock while nothing at all arrives — so replayed data is judged by
//! its own timestamps, and a fleet that falls silent together is still noticed. A gap of
//! `timeout` inside a group's own events (a device that reports after a long pause) is an
//! absence too, reported when the returning event arrives.
//!
//! Outputs carry the group keys, `state`, `last_seen` (the last event time before the
//! silence), `window_start` (= `last_seen`) and `window_end` (when the absence was due,
//! `last_seen + timeout`, or, for `returned`, the returning event's time), and for
//! `returned` the `silence_seconds`.

use std::sync::Arc;
use std::time::Instant;

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::engine::{GroupState, Groups, WindowEngine};
use super::window::{
    Emit, GroupKey, LatePolicy, Outcome, WindowAck, WindowCommon, WindowSpec, millis, timestamp,
};
use super::{AggregatorComponent, AggregatorContext, engine};
use crate::config::{Duration, FieldProblem};
use crate::event::{Event, EventMeta, Fields};
use crate::topology::ComponentTask;

/// Reports groups that send nothing for `timeout`, and their return.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AbsenceConfig {
    /// Silence that makes a group absent, e.g. `5m`.
    pub timeout: Duration,
    /// Fields whose values form a group (default `[device_id]`).
    #[serde(default = "super::window::default_group_by")]
    pub group_by: Vec<String>,
    /// Field holding the event time; default: the event time the source assigned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_time: Option<String>,
    /// Engines working in parallel, each owning a share of the groups; default: one per core.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<usize>,
    /// When a watched event counts as handled for its source's acknowledgement.
    #[serde(default)]
    pub ack: WindowAck,
    /// How often the groups' last-seen times are checkpointed to `data_dir` while running.
    #[serde(default = "super::window::default_checkpoint_interval")]
    pub checkpoint_interval: Duration,
}

impl AbsenceConfig {
    fn spec(&self, component: Arc<str>) -> WindowSpec {
        let common = WindowCommon {
            group_by: self.group_by.clone(),
            event_time: self.event_time.clone(),
            allowed_lateness: Duration::from_secs(0),
            late_events: LatePolicy::Drop,
            max_future: Duration::from_secs(u32::MAX as u64),
            idle_timeout: Some(self.timeout),
            aggregates: IndexMap::new(),
            emit: Emit::OnClose,
            max_open_windows: usize::MAX,
            shards: self.shards,
            ack: self.ack,
            checkpoint_interval: self.checkpoint_interval,
        };
        WindowSpec::new(component, &common, self.timeout.get())
    }
}

impl AggregatorComponent for AbsenceConfig {
    fn check(&self) -> Vec<FieldProblem> {
        let mut problems = Vec::new();
        if self.timeout.get().as_millis() == 0 {
            problems.push(FieldProblem::at(
                ["timeout"],
                "expected a timeout of at least 1ms",
            ));
        }
        if self.group_by.is_empty() || self.group_by.iter().any(String::is_empty) {
            problems.push(FieldProblem::at(["group_by"], "expected field names"));
        }
        if self.shards == Some(0) {
            problems.push(FieldProblem::at(["shards"], "expected at least 1"));
        }
        problems
    }

    fn build(&self, cx: AggregatorContext) -> anyhow::Result<ComponentTask> {
        let component = cx.id.as_arc();
        let timeout = millis(self.timeout);
        let runner = engine::Runner::new(self.spec(component.clone()), self.shards);
        engine::spawn(cx, runner, || {
            AbsenceDetector::new(self.spec(component.clone()), timeout)
        })
    }
}

/// One group's last event and whether it is absent now.
#[derive(Clone, Serialize, Deserialize)]
pub struct Group {
    keys: Box<[Value]>,
    last_event: i64,
    absent: bool,
}

/// An absence is the one window a group holds open; a checkpoint keeps every group, absent
/// or not, since each one's last event is what a later absence is measured from.
impl GroupState for Group {
    fn open_windows(&self) -> usize {
        usize::from(self.absent)
    }

    fn worth_keeping(&self) -> bool {
        true
    }
}

pub struct AbsenceDetector {
    spec: WindowSpec,
    timeout: i64,
    /// Their open windows are the groups absent now.
    groups: Groups<Group>,
    /// The latest event time seen from any group, and when it was seen.
    clock: Option<(i64, Instant)>,
}

impl AbsenceDetector {
    pub fn new(spec: WindowSpec, timeout: i64) -> Self {
        Self {
            spec,
            timeout,
            groups: Groups::default(),
            clock: None,
        }
    }

    fn output(
        &self,
        keys: &[Value],
        state: &str,
        last_seen: i64,
        end: i64,
        silence: Option<i64>,
    ) -> Event {
        let mut fields = Fields::with_capacity(keys.len() + 5);
        let mut device_id = None;
        for (name, value) in self.spec.group_by.iter().zip(keys) {
            if name == "device_id" {
                device_id = value.as_str().map(Arc::from);
            }
            fields.insert(name.clone(), value.clone());
        }
        fields.insert("state".into(), Value::from(state));
        fields.insert(
            "last_seen".into(),
            Value::String(timestamp(last_seen).to_string()),
        );
        fields.insert(
            "window_start".into(),
            Value::String(timestamp(last_seen).to_string()),
        );
        fields.insert(
            "window_end".into(),
            Value::String(timestamp(end).to_string()),
        );
        if let Some(silence) = silence {
            fields.insert(
                "silence_seconds".into(),
                Value::from(silence as f64 / 1000.0),
            );
        }
        let meta = Arc::new(EventMeta::received_by(Arc::clone(&self.spec.component)));
        let mut event = Event::new(device_id, fields, meta);
        event.time = timestamp(end);
        event
    }
}

impl WindowEngine for AbsenceDetector {
    type Group = Group;

    fn add(
        &mut self,
        event: &Event,
        _now_ms: i64,
        now: Instant,
        emitted: &mut Vec<Event>,
    ) -> Outcome {
        let time = match self.spec.time_of(event) {
            Ok(time) => time,
            Err(reason) => return Outcome::BadTime(reason),
        };
        if self.clock.is_none_or(|(clock, _)| time >= clock) {
            self.clock = Some((time, now));
        }
        let key = self.spec.key_of(event);
        let Some(group) = self.groups.by_key.get_mut(&key) else {
            let keys = self.spec.key_values(event);
            self.groups.by_key.insert(
                key,
                Group {
                    keys,
                    last_event: time,
                    absent: false,
                },
            );
            return Outcome::Folded;
        };
        if time <= group.last_event {
            return Outcome::Folded;
        }
        let (last, was_absent) = (group.last_event, group.absent);
        let gap = time - last;
        group.last_event = time;
        group.absent = false;
        let keys = group.keys.clone();
        if was_absent {
            self.groups.open -= 1;
        } else if gap >= self.timeout {
            // A silence inside the group's own events: report it now, then the return.
            emitted.push(self.output(&keys, "absent", last, last + self.timeout, None));
        }
        if was_absent || gap >= self.timeout {
            emitted.push(self.output(&keys, "returned", last, time, Some(gap)));
        }
        Outcome::Folded
    }

    fn tick(&mut self, _now_ms: i64, now: Instant, _partial: bool, emitted: &mut Vec<Event>) {
        let Some((latest, seen_at)) = self.clock else {
            return;
        };
        let quiet =
            i64::try_from(now.saturating_duration_since(seen_at).as_millis()).unwrap_or(i64::MAX);
        let clock = latest.saturating_add(quiet);
        let mut newly_absent = Vec::new();
        for group in self.groups.by_key.values_mut() {
            if !group.absent && clock - group.last_event >= self.timeout {
                group.absent = true;
                newly_absent.push((group.keys.clone(), group.last_event));
            }
        }
        self.groups.open += newly_absent.len();
        for (keys, last) in newly_absent {
            emitted.push(self.output(&keys, "absent", last, last + self.timeout, None));
        }
    }

    fn open_windows(&self) -> usize {
        self.groups.open
    }

    fn state_bytes(&self) -> usize {
        let groups = &self.groups.by_key;
        let keys: usize = groups.keys().map(|k| k.0.len()).sum();
        groups.len() * (std::mem::size_of::<(GroupKey, Group)>() + 16) + keys
    }

    fn take_invalid_values(&mut self) -> Vec<u64> {
        Vec::new()
    }

    fn definition(&self) -> String {
        format!(
            "absence timeout={} group_by={:?}",
            self.timeout, self.spec.group_by
        )
    }

    fn export(&mut self) -> Vec<(GroupKey, Group)> {
        self.groups.export()
    }

    /// Absence has no windows to close: what it keeps is when each device was last heard
    /// from, which no result holds. The new definition starts watching afresh.
    fn close_all(&mut self, _emitted: &mut Vec<Event>) {
        self.groups.export();
    }

    /// The end of a test's input is not a silence: absences are judged on the events'
    /// own time, which stops with the latest event of the whole input (`input_end`, seen
    /// by every shard). So the groups already silent for `timeout` by then are reported,
    /// and nothing more.
    fn finish(&mut self, input_end: Option<i64>, emitted: &mut Vec<Event>) {
        let now = Instant::now();
        let latest = match (self.clock, input_end) {
            (Some((own, _)), Some(end)) => own.max(end),
            (Some((own, _)), None) => own,
            (None, Some(end)) => end,
            (None, None) => return,
        };
        // The stream's clock is its latest event time from any shard; no wall time passes.
        self.clock = Some((latest, now));
        self.tick(0, now, false, emitted);
    }

    fn snapshot(&self) -> Vec<(GroupKey, Group)> {
        self.groups.snapshot()
    }

    fn import(&mut self, groups: Vec<(GroupKey, Group)>) {
        self.groups.import(groups);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration as StdDuration;

    use super::*;

    const T0: i64 = 1_800_000_000_000;

    fn detector() -> AbsenceDetector {
        let config: AbsenceConfig =
            serde_json::from_value(serde_json::json!({"timeout": "10s"})).unwrap();
        AbsenceDetector::new(config.spec("absence".into()), 10_000)
    }

    fn event(device: &str, t: i64) -> Event {
        let mut event = Event::new(
            Some(device.into()),
            Fields::new(),
            Arc::new(EventMeta::received_by("s".into())),
        );
        event.time = timestamp(t);
        event
    }

    fn states(out: &[Event]) -> Vec<(String, String)> {
        out.iter()
            .map(|e| {
                (
                    e.device_id.as_deref().unwrap().to_owned(),
                    e.get("state").unwrap().as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn fires_once_per_silence_and_again_on_return() {
        let mut d = detector();
        let now = Instant::now();
        let mut out = Vec::new();
        d.add(&event("quiet", T0), T0, now, &mut out);
        for i in 0..30 {
            d.add(&event("busy", T0 + i * 1000), T0, now, &mut out);
            d.tick(T0, now, false, &mut out);
        }
        assert_eq!(
            states(&out),
            [("quiet".to_owned(), "absent".to_owned())],
            "once, not on every tick"
        );
        assert_eq!(
            out[0].get("window_end").unwrap(),
            &Value::from(timestamp(T0 + 10_000).to_string())
        );
        d.add(&event("quiet", T0 + 31_000), T0, now, &mut out);
        assert_eq!(
            states(&out[1..]),
            [("quiet".to_owned(), "returned".to_owned())]
        );
        assert_eq!(out[1].get("silence_seconds"), Some(&Value::from(31.0)));
        assert_eq!(d.open_windows(), 0);
    }

    #[test]
    fn the_wall_clock_moves_time_on_when_everything_is_quiet() {
        let mut d = detector();
        let now = Instant::now();
        let mut out = Vec::new();
        d.add(&event("a", T0), T0, now, &mut out);
        d.tick(T0, now + StdDuration::from_secs(9), false, &mut out);
        assert!(out.is_empty());
        d.tick(T0, now + StdDuration::from_secs(10), false, &mut out);
        assert_eq!(states(&out), [("a".to_owned(), "absent".to_owned())]);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]

        /// Reference: per device, every step forward of `timeout` or more between
        /// successive newest event times is one absence and one return; at the end, a
        /// wall clock far ahead makes every device absent exactly once more.
        #[test]
        fn absences_match_the_gaps_in_each_devices_events(
            steps in proptest::collection::vec((0usize..3, -5_000i64..15_000), 1..150)
        ) {
            let mut d = detector();
            let now = Instant::now();
            let mut out = Vec::new();
            let mut clock = [0i64; 3];
            let mut newest: [Option<i64>; 3] = [None; 3];
            let mut expected = [0usize; 3];
            for (device, step) in steps {
                clock[device] = (clock[device] + step).max(0);
                let t = T0 + clock[device];
                if let Some(last) = newest[device] {
                    if t > last {
                        expected[device] += usize::from(t - last >= 10_000);
                        newest[device] = Some(t);
                    }
                } else {
                    newest[device] = Some(t);
                }
                d.add(&event(&format!("d{device}"), t), T0, now, &mut out);
            }
            d.tick(T0, now + StdDuration::from_secs(3600), false, &mut out);
            for device in 0..3 {
                let name = format!("d{device}");
                let mine: Vec<String> = states(&out).into_iter().filter(|(d, _)| *d == name).map(|(_, s)| s).collect();
                let seen = newest[device].is_some();
                let absent = mine.iter().filter(|s| *s == "absent").count();
                let returned = mine.iter().filter(|s| *s == "returned").count();
                proptest::prop_assert_eq!(returned, expected[device]);
                proptest::prop_assert_eq!(absent, expected[device] + usize::from(seen));
                // States alternate, starting with `absent`.
                for (i, state) in mine.iter().enumerate() {
                    proptest::prop_assert_eq!(state, if i % 2 == 0 { "absent" } else { "returned" });
                }
            }
        }
    }

    #[test]
    fn a_gap_inside_the_data_is_an_absence_too() {
        let mut d = detector();
        let now = Instant::now();
        let mut out = Vec::new();
        d.add(&event("a", T0), T0, now, &mut out);
        d.add(&event("a", T0 + 25_000), T0, now, &mut out);
        assert_eq!(
            states(&out),
            [
                ("a".to_owned(), "absent".to_owned()),
                ("a".to_owned(), "returned".to_owned())
            ]
        );
    }
}
