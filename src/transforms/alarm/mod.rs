//! `alarm`: at most one active alarm per key (a device, by default), emitting only its
//! transitions — raised, severity changed, cleared, acknowledged.
//!
//! Every reading is judged against the `raise` condition(s) and `clear`; the per-key
//! [`machine::Tracker`] applies `for` / `count` and hysteresis. Each transition leaves as
//! a copy of the reading that caused it with the alarm's fields added (`alarm`,
//! `alarm_id`, `state`, `severity`, `started_at`, ...), so an action's template can use
//! both. Active alarms are listed and acknowledged through `/v1/alarms` (see the
//! [alarm board](crate::alarms), a shared service),
//! and the state of every key is written to `data_dir/alarms/<id>.json` after every batch
//! in which an alarm changed (before that batch's transitions leave) and at shutdown, so a
//! restart neither raises an active alarm again nor forgets it.
//!
//! Each transition carries its sequence number in its alarm (`alarm_seq`: 1 for the
//! raise, then one more per severity change, acknowledgement and the clear), and stays in
//! the state file's [`outbox`] until its consumers took it for good, so a crash between the
//! transition and the notification re-emits it at the next start instead of losing it.

pub mod machine;
mod outbox;
mod store;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use indexmap::IndexMap;
use jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

use self::machine::{Persistence, Severity, Transition};
use self::outbox::Outbox;
use self::store::{ActiveAlarm, KeyState, Snapshot};
use super::{FunctionTransform, TransformComponent, TransformContext, TransformOutput};
use crate::alarms::{AckOutcome, AckRequest, AlarmBoard, AlarmSummary, BoardInbox};
use crate::config::{ComponentId, Duration, FieldProblem};
use crate::event::{Event, EventMeta, Value};
use crate::telemetry::events::{AlarmTransition, ComponentError, ErrorType, Stage};
use crate::telemetry::{ComponentTelemetry, InternalEvent};
use crate::template::{Condition, Template};

/// Raises an alarm when `raise` holds and clears it when `clear` holds; emits only the
/// transitions.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AlarmConfig {
    /// The alarm's name in its transitions and in `/v1/alarms`; default: the component id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What one alarm is about: at most one alarm is active per key. Default:
    /// `{{ device_id }}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<Template>,
    /// When to raise: one condition (with `severity`), e.g. `temp_avg > device.max_temp`,
    /// or one condition per severity, e.g. `{ critical: "temp_avg > 110", major:
    /// "temp_avg > 100" }`; the most severe that holds decides the alarm's severity.
    pub raise: RaiseConditions,
    /// The severity of a single `raise` condition (default `major`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<Severity>,
    /// When an active alarm ends, e.g. `temp_avg < device.max_temp - 5`. Keep a gap to the
    /// raise threshold (hysteresis): between the two nothing changes.
    pub clear: Condition,
    /// How long (event time) a raise condition must hold before the alarm is raised or
    /// changes severity, e.g. `30s`. Default: at once.
    #[serde(rename = "for", default, skip_serializing_if = "Option::is_none")]
    pub hold_for: Option<Duration>,
    /// How many consecutive readings must meet a raise condition first. Default: 1.
    #[serde(default = "default_count")]
    pub count: u32,
}

fn default_count() -> u32 {
    1
}

/// One condition, or one per severity.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum RaiseConditions {
    /// A single condition; the alarm takes `severity`.
    One(Condition),
    /// Severity (`critical`, `major`, `minor`, `warning`) to condition.
    PerSeverity(IndexMap<Severity, Condition>),
}

impl<'de> Deserialize<'de> for RaiseConditions {
    /// By hand, so a mistake says what was expected instead of "no variant matched".
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match serde_json::Value::deserialize(deserializer)? {
            serde_json::Value::String(source) => {
                Condition::compile(&source).map(Self::One).map_err(Error::custom)
            }
            value @ serde_json::Value::Object(_) => {
                serde_json::from_value(value).map(Self::PerSeverity).map_err(|err| {
                    Error::custom(format!(
                        "{err}: expected severities (critical, major, minor, warning) mapped to conditions"
                    ))
                })
            }
            other => Err(Error::custom(format!(
                "`{other}` is not a condition: expected a condition, or severities mapped to conditions"
            ))),
        }
    }
}

impl TransformComponent for AlarmConfig {
    fn check(&self) -> Vec<FieldProblem> {
        let mut problems = Vec::new();
        match &self.raise {
            RaiseConditions::One(_) => {}
            RaiseConditions::PerSeverity(levels) => {
                if levels.is_empty() {
                    problems.push(FieldProblem::at(
                        ["raise"],
                        "expected at least one severity mapped to a condition",
                    ));
                }
                if self.severity.is_some() {
                    problems.push(FieldProblem::at(
                        ["severity"],
                        "`severity` goes with a single `raise` condition; with one condition per severity, leave it out",
                    ));
                }
            }
        }
        if self.count == 0 {
            problems.push(FieldProblem::at(["count"], "expected 1 or more readings"));
        }
        if self.name.as_deref().is_some_and(str::is_empty) {
            problems.push(FieldProblem::at(["name"], "expected a non-empty name"));
        }
        problems
    }

    fn build(&self, cx: &TransformContext) -> anyhow::Result<Box<dyn FunctionTransform>> {
        let mut levels: Vec<(Severity, Condition)> = match &self.raise {
            RaiseConditions::One(condition) => {
                vec![(self.severity.unwrap_or(Severity::Major), condition.clone())]
            }
            RaiseConditions::PerSeverity(levels) => {
                levels.iter().map(|(s, c)| (*s, c.clone())).collect()
            }
        };
        // Most severe first: the first that holds decides.
        levels.sort_by_key(|level| std::cmp::Reverse(level.0));
        let hold_for = self
            .hold_for
            .map_or(std::time::Duration::ZERO, Duration::get);
        let path = store::snapshot_path(&cx.data_dir, &cx.id);
        let snapshot = Snapshot::read(&path)?;
        let board = cx.services.get_or_insert_with(AlarmBoard::new);
        let inbox = board.register(&cx.id);
        let outbox = Outbox::new(cx.id.clone(), snapshot.pending, Arc::clone(&inbox.wake));
        let alarm = Alarm {
            component: cx.id.clone(),
            name: self.name.clone().unwrap_or_else(|| cx.id.to_string()),
            key: match &self.key {
                Some(key) => key.clone(),
                None => Template::compile("{{ device_id }}").map_err(anyhow::Error::msg)?,
            },
            levels,
            clear: self.clear.clone(),
            rules: Persistence {
                hold_for: jiff::SignedDuration::try_from(hold_for)?,
                count: self.count,
            },
            keys: snapshot.keys,
            path,
            dirty: false,
            transitioned: false,
            outbox,
            outgoing: Vec::new(),
            board,
            inbox,
            telemetry: None,
        };
        for (key, state) in &alarm.keys {
            if let Some(active) = &state.alarm {
                alarm
                    .inbox
                    .entry
                    .publish(key, Some(alarm.summary(key, active)));
            }
        }
        Ok(Box::new(alarm))
    }
}

pub struct Alarm {
    component: ComponentId,
    name: String,
    key: Template,
    /// Raise conditions, most severe first.
    levels: Vec<(Severity, Condition)>,
    clear: Condition,
    rules: Persistence,
    /// Keys with an active alarm or a streak towards one; idle keys are removed.
    keys: HashMap<String, KeyState>,
    path: PathBuf,
    /// Streaks changed since the last snapshot.
    dirty: bool,
    /// A transition happened in this batch: the snapshot is written before the batch's
    /// output leaves, so what was emitted is on disk.
    transitioned: bool,
    /// Transitions recorded and not yet handed to the consumers.
    outbox: Outbox,
    /// Transitions of this batch (or wake), recorded, waiting for the snapshot to leave.
    outgoing: Vec<Event>,
    board: Arc<AlarmBoard>,
    inbox: BoardInbox,
    /// Set by the first batch (the runner owns the handle).
    telemetry: Option<ComponentTelemetry>,
}

/// What one reading asks of the state machine.
struct Judgement {
    key: String,
    target: Option<Severity>,
    clear: bool,
}

impl Alarm {
    fn judge(&self, event: &Event) -> Result<Judgement, String> {
        let view = event.view();
        let key = self
            .key
            .render(&view)
            .map_err(|err| format!("`key` failed: {err}"))?;
        if key.is_empty() {
            return Err(format!(
                "`key` (`{}`) is empty for this event: it has no device id or key field",
                self.key.source()
            ));
        }
        let mut target = None;
        for (severity, condition) in &self.levels {
            if condition
                .holds_for(event)
                .map_err(|err| format!("`raise` ({severity:?}) failed: {err}"))?
            {
                target = Some(*severity);
                break;
            }
        }
        let clear = self
            .clear
            .holds_for(event)
            .map_err(|err| format!("`clear` failed: {err}"))?;
        Ok(Judgement { key, target, clear })
    }

    fn summary(&self, key: &str, active: &ActiveAlarm) -> AlarmSummary {
        AlarmSummary {
            id: active.id.clone(),
            alarm: self.name.clone(),
            component: self.component.to_string(),
            key: key.to_owned(),
            device_id: active.device_id.clone(),
            severity: active.severity,
            started_at: active.started_at,
            acknowledged: active.acknowledged_at.is_some(),
            acknowledged_at: active.acknowledged_at,
            acknowledged_by: active.acknowledged_by.clone(),
            values: active.values.clone(),
        }
    }

    /// Applies one reading; returns the transition event to emit, if any.
    fn apply(&mut self, event: Event, judged: Judgement) -> Option<Event> {
        let Judgement { key, target, clear } = judged;
        let state = self.keys.entry(key.clone()).or_default();
        let before = state.tracker.clone();
        let transition = state.tracker.observe(event.time, target, clear, self.rules);
        if state.tracker != before {
            self.dirty = true;
        }
        let Some(transition) = transition else {
            if state.tracker.is_idle() {
                self.keys.remove(&key);
            }
            return None;
        };
        let (state_name, severity, previous) = match transition {
            Transition::Raised(severity) => {
                state.alarm = Some(ActiveAlarm {
                    id: new_alarm_id(),
                    severity,
                    started_at: event.time,
                    device_id: event.device_id.as_deref().map(str::to_owned),
                    values: event.fields().clone(),
                    acknowledged_at: None,
                    acknowledged_by: None,
                    seq: 0,
                });
                ("raised", severity, None)
            }
            Transition::SeverityChanged { from, to } => {
                if let Some(active) = &mut state.alarm {
                    active.severity = to;
                    active.values = event.fields().clone();
                }
                ("severity_changed", to, Some(from))
            }
            Transition::Cleared(severity) => ("cleared", severity, None),
        };
        if let Some(active) = &mut state.alarm {
            active.seq += 1;
        }
        let active = match transition {
            Transition::Cleared(_) => state.alarm.take(),
            _ => state.alarm.clone(),
        };
        if state.tracker.is_idle() {
            self.keys.remove(&key);
        }
        let active = active?;
        let published = match transition {
            Transition::Cleared(_) => None,
            _ => Some(self.summary(&key, &active)),
        };
        self.inbox.entry.publish(&key, published);
        self.transitioned = true;
        if let Some(telemetry) = &self.telemetry {
            AlarmTransition {
                state: state_name,
                severity: severity.as_str(),
                active_change: match transition {
                    Transition::Raised(_) => 1,
                    Transition::Cleared(_) => -1,
                    Transition::SeverityChanged { .. } => 0,
                },
            }
            .emit(telemetry);
        }
        let event = self.transition_event(event, &key, &active, state_name, previous);
        let given_up = self.outbox.record(&event);
        self.report_given_up(&given_up);
        Some(event)
    }

    /// The reading that caused a transition, with the alarm's fields added.
    fn transition_event(
        &self,
        mut event: Event,
        key: &str,
        active: &ActiveAlarm,
        state: &str,
        previous: Option<Severity>,
    ) -> Event {
        let fields = event.fields_mut();
        fields.insert("alarm".into(), Value::from(self.name.as_str()));
        fields.insert("alarm_id".into(), Value::from(active.id.as_str()));
        fields.insert("alarm_key".into(), Value::from(key));
        fields.insert("alarm_seq".into(), Value::from(active.seq));
        fields.insert("state".into(), Value::from(state));
        fields.insert("severity".into(), Value::from(active.severity.as_str()));
        if let Some(previous) = previous {
            fields.insert("previous_severity".into(), Value::from(previous.as_str()));
        }
        fields.insert(
            "started_at".into(),
            Value::from(active.started_at.to_string()),
        );
        if let Some(at) = active.acknowledged_at {
            fields.insert("acknowledged_at".into(), Value::from(at.to_string()));
        }
        if let Some(by) = &active.acknowledged_by {
            fields.insert("acknowledged_by".into(), Value::from(by.as_str()));
        }
        if event.device_id.is_none() {
            event.device_id = active.device_id.as_deref().map(Into::into);
        }
        event
    }

    /// Acknowledges one alarm asked for through the API; returns the transition event.
    fn acknowledge(&mut self, request: AckRequest) -> Option<Event> {
        let AckRequest {
            alarm_id,
            by,
            respond,
        } = request;
        let found = self.keys.iter_mut().find_map(|(key, state)| {
            let active = state.alarm.as_mut().filter(|a| a.id == alarm_id)?;
            Some((key.clone(), active))
        });
        let Some((key, active)) = found else {
            let _ = respond.send(AckOutcome::NotFound);
            return None;
        };
        if active.acknowledged_at.is_some() {
            let active = active.clone();
            let _ = respond.send(AckOutcome::AlreadyAcknowledged(self.summary(&key, &active)));
            return None;
        }
        active.acknowledged_at = Some(Timestamp::now());
        active.acknowledged_by = by;
        active.seq += 1;
        let active = active.clone();
        let summary = self.summary(&key, &active);
        self.inbox.entry.publish(&key, Some(summary.clone()));
        // No reading caused it: the event carries the values that raised the alarm.
        let mut event = Event::new(
            active.device_id.as_deref().map(Into::into),
            active.values.clone(),
            Arc::new(EventMeta::received_by(self.component.as_arc())),
        );
        event.time = Timestamp::now();
        let event = self.transition_event(event, &key, &active, "acknowledged", None);
        let given_up = self.outbox.record(&event);
        self.report_given_up(&given_up);
        self.persist();
        let _ = respond.send(AckOutcome::Acknowledged(summary));
        if let Some(telemetry) = &self.telemetry {
            AlarmTransition {
                state: "acknowledged",
                severity: active.severity.as_str(),
                active_change: 0,
            }
            .emit(telemetry);
        }
        Some(event)
    }

    /// Writes the state of every key and the outbox; a failure is counted and retried at
    /// the next change.
    fn persist(&mut self) {
        let snapshot = Snapshot::of(&self.keys, self.outbox.records());
        match snapshot.write(&self.path) {
            Ok(()) => self.dirty = false,
            Err(err) => {
                self.dirty = true;
                let path = self.path.display();
                self.error(&format!("cannot write the alarm state to {path}: {err:#}"));
            }
        }
    }

    /// Counts and logs an I/O error of the alarm's state (logged only before the first
    /// batch, when the metrics handle is not there yet).
    fn error(&self, message: &str) {
        match &self.telemetry {
            Some(telemetry) => ComponentError {
                error_type: ErrorType::Io,
                stage: Stage::Processing,
                message,
                count: 1,
            }
            .emit(telemetry),
            None => tracing::error!(component_id = %self.component, "{message}"),
        }
    }
}

impl Alarm {
    /// Takes the metrics handle on first use and reports the alarms restored at start.
    fn attach(&mut self, out: &TransformOutput) {
        if self.telemetry.is_none() {
            let telemetry = out.telemetry().clone();
            let active = self.keys.values().filter(|k| k.alarm.is_some()).count();
            telemetry.alarm_active().set(active as i64);
            self.telemetry = Some(telemetry);
        }
    }
}

fn new_alarm_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

impl Alarm {
    fn one(&mut self, event: Event, out: &mut TransformOutput) {
        match self.judge(&event) {
            Ok(judged) => match self.apply(event, judged) {
                Some(transition) => self.outgoing.push(transition),
                // A reading that changes nothing is handled: it is acknowledged here.
                None => out.discard(1),
            },
            Err(message) => out.error(event, ErrorType::Expression, message),
        }
    }

    /// Emits, once per run, the transitions a previous run recorded and did not hand over.
    fn resume(&mut self, out: &mut TransformOutput) {
        for event in self.outbox.take_restored() {
            out.push(event);
        }
    }

    /// Writes the snapshot once for all the transitions of a batch (and for what the outbox
    /// handed over), then lets the transitions leave.
    fn commit(&mut self, out: &mut TransformOutput) {
        let collected = self.outbox.collect();
        self.report_lost(&collected.failed);
        if std::mem::take(&mut self.transitioned) || collected.changed() {
            self.persist();
        }
        if self.outgoing.is_empty() {
            return;
        }
        // `persist` leaves `dirty` set when it failed.
        let durable = !self.dirty;
        if durable {
            crate::fault::crash_point("alarm.persisted");
        }
        for event in std::mem::take(&mut self.outgoing) {
            let event = match durable {
                true => self.outbox.hand_over(event),
                false => {
                    self.outbox.abandon(&event);
                    event
                }
            };
            out.push(event);
        }
    }

    fn report_given_up(&self, given_up: &[outbox::PendingTransition]) {
        for transition in given_up {
            self.error(&format!(
                "the outbox holds {} transitions its consumers have not taken: transition {} of alarm {} is given up",
                outbox::MAX_PENDING,
                transition.seq,
                transition.alarm_id
            ));
        }
    }

    fn report_lost(&self, lost: &[(String, u64)]) {
        for (alarm_id, seq) in lost {
            self.error(&format!(
                "transition {seq} of alarm {alarm_id} was lost downstream; it stays in {} and is emitted again at the next start",
                self.path.display()
            ));
        }
    }
}

impl FunctionTransform for Alarm {
    fn transform(&mut self, event: Event, out: &mut TransformOutput) {
        self.attach(out);
        self.resume(out);
        self.one(event, out);
        self.commit(out);
    }

    fn transform_batch(&mut self, batch: crate::event::EventBatch, out: &mut TransformOutput) {
        self.attach(out);
        self.resume(out);
        for event in batch {
            self.one(event, out);
        }
        self.commit(out);
    }

    fn wake_signal(&self) -> Option<Arc<tokio::sync::Notify>> {
        Some(Arc::clone(&self.inbox.wake))
    }

    fn on_wake(&mut self, out: &mut TransformOutput) {
        self.attach(out);
        self.resume(out);
        while let Ok(request) = self.inbox.acks.try_recv() {
            if let Some(event) = self.acknowledge(request) {
                self.outgoing.push(event);
            }
        }
        self.commit(out);
    }
}

impl Drop for Alarm {
    /// At shutdown (or when replaced), keep the streaks too, and leave the board.
    fn drop(&mut self) {
        // What was handed meanwhile need not be emitted again at the next start.
        if self.outbox.collect().changed() || self.dirty {
            self.persist();
        }
        self.board.unregister(&self.component, &self.inbox.entry);
    }
}

#[cfg(test)]
mod tests;
