use std::sync::Arc;

use super::*;
use crate::config::OutputName;
use crate::event::{EventMeta, Fields};
use crate::telemetry::Telemetry;

fn config(yaml: serde_json::Value) -> AlarmConfig {
    serde_json::from_value(yaml).expect("a valid alarm config")
}

fn reading(device: &str, secs: i64, temp: f64) -> Event {
    let mut fields = Fields::new();
    fields.insert("temp_avg".into(), Value::from(temp));
    let mut event = Event::new(
        Some(device.into()),
        fields,
        Arc::new(EventMeta::received_by("src".into())),
    );
    event.time = Timestamp::from_second(1_700_000_000 + secs).unwrap();
    event
}

struct Harness {
    transform: Box<dyn FunctionTransform>,
    out: TransformOutput,
}

impl Harness {
    fn new(config: &AlarmConfig, cx: &TransformContext) -> Self {
        let telemetry =
            Telemetry::new().component(&cx.id, crate::config::ComponentKind::Transform, "alarm");
        Self {
            transform: config.build(cx).unwrap(),
            out: TransformOutput::new(&cx.id, telemetry, &[OutputName::errors()]),
        }
    }

    /// Feeds readings; returns the transitions emitted (state, severity, device).
    fn feed(&mut self, events: Vec<Event>) -> Vec<Event> {
        self.transform.transform_batch(events.into(), &mut self.out);
        let mut all = self.out.take();
        std::mem::take(&mut all[0].1)
    }
}

fn states(events: &[Event]) -> Vec<(String, String, String)> {
    events
        .iter()
        .map(|e| {
            (
                e.get("state").unwrap().as_str().unwrap().to_owned(),
                e.get("severity").unwrap().as_str().unwrap().to_owned(),
                e.device_id.as_deref().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The board the alarm transform built with `cx` registered with.
fn board(cx: &TransformContext) -> Arc<crate::alarms::AlarmBoard> {
    cx.services
        .get()
        .expect("the alarm transform has made the board")
}

fn context(dir: &std::path::Path) -> TransformContext {
    TransformContext {
        data_dir: dir.to_path_buf(),
        ..TransformContext::new(ComponentId::new("hot"))
    }
}

#[test]
fn per_severity_levels_and_per_device_alarms() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(serde_json::json!({
        "raise": { "major": "temp_avg > 100", "critical": "temp_avg > 120" },
        "clear": "temp_avg < 95",
    }));
    let mut h = Harness::new(&cfg, &context(dir.path()));
    let out = h.feed(vec![
        reading("a", 0, 101.0),
        reading("b", 0, 130.0),
        reading("a", 1, 125.0),
        reading("a", 2, 99.0),
        reading("b", 2, 90.0),
    ]);
    assert_eq!(
        states(&out),
        [
            ("raised", "major", "a"),
            ("raised", "critical", "b"),
            ("severity_changed", "critical", "a"),
            ("cleared", "critical", "b"),
        ]
        .map(|(a, b, c)| (a.to_owned(), b.to_owned(), c.to_owned()))
    );
    // The transition carries the reading and the alarm's identity.
    assert_eq!(out[0].get("temp_avg"), Some(&Value::from(101.0)));
    assert_eq!(out[0].get("alarm"), Some(&Value::from("hot")));
    assert_eq!(out[2].get("previous_severity"), Some(&Value::from("major")));
    assert_eq!(out[0].get("alarm_id"), out[2].get("alarm_id"));
}

#[test]
fn a_restart_neither_raises_again_nor_forgets() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(serde_json::json!({
        "raise": "temp_avg > 100", "clear": "temp_avg < 95", "count": 2,
    }));
    let cx = context(dir.path());
    let mut h = Harness::new(&cfg, &cx);
    let raised = h.feed(vec![
        reading("a", 0, 101.0),
        reading("a", 1, 101.0),
        // One reading into b's streak: kept across the restart too.
        reading("b", 1, 101.0),
    ]);
    assert_eq!(raised.len(), 1);
    let id = raised[0].get("alarm_id").cloned();
    // Handed to the consumers: not emitted again after the restart.
    drop(raised);
    drop(h);

    let cx = context(dir.path());
    let mut h = Harness::new(&cfg, &cx);
    assert_eq!(
        board(&cx).list().len(),
        1,
        "the active alarm is listed again"
    );
    let out = h.feed(vec![reading("a", 2, 105.0), reading("b", 2, 101.0)]);
    assert_eq!(
        states(&out),
        [("raised".into(), "major".into(), "b".into())]
    );
    let out = h.feed(vec![reading("a", 3, 90.0)]);
    assert_eq!(
        states(&out),
        [("cleared".into(), "major".into(), "a".into())]
    );
    assert_eq!(out[0].get("alarm_id").cloned(), id);
}

#[test]
fn acknowledging_emits_a_transition_and_is_remembered() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(serde_json::json!({ "raise": "temp_avg > 100", "clear": "temp_avg < 95" }));
    let cx = context(dir.path());
    let mut h = Harness::new(&cfg, &cx);
    let raised = h.feed(vec![reading("a", 0, 101.0)]);
    let id = raised[0]
        .get("alarm_id")
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let shared = board(&cx);
    let ack = runtime.spawn({
        let board = Arc::clone(&shared);
        let id = id.clone();
        async move { board.acknowledge(&id, Some("ops".into())).await }
    });
    // Let the request reach the inbox, then do what the topology runner does on a wake.
    let mut emitted = Vec::new();
    for _ in 0..100 {
        runtime.block_on(tokio::task::yield_now());
        h.transform.on_wake(&mut h.out);
        emitted = std::mem::take(&mut h.out.take()[0].1);
        if !emitted.is_empty() {
            break;
        }
    }
    assert_eq!(
        states(&emitted),
        [("acknowledged".into(), "major".into(), "a".into())]
    );
    assert_eq!(emitted[0].get("acknowledged_by"), Some(&Value::from("ops")));
    let outcome = runtime.block_on(ack).unwrap();
    assert!(matches!(outcome, Some(AckOutcome::Acknowledged(a)) if a.acknowledged));
    assert!(shared.list()[0].acknowledged);
    drop(h);
    let cx = context(dir.path());
    let _h = Harness::new(&cfg, &cx);
    assert!(
        board(&cx).list()[0].acknowledged,
        "the acknowledgement survives a restart"
    );
}

fn seq(event: &Event) -> Option<u64> {
    event.get("alarm_seq").and_then(|v| v.as_u64())
}

#[test]
fn a_transition_not_yet_handed_is_emitted_again_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(serde_json::json!({ "raise": "temp_avg > 100", "clear": "temp_avg < 95" }));
    let mut h = Harness::new(&cfg, &context(dir.path()));
    let raised = h.feed(vec![reading("a", 0, 101.0)]);
    assert_eq!(seq(&raised[0]), Some(1));
    // The process dies with the transition still on its way: no shutdown runs.
    std::mem::forget(h);

    let mut h = Harness::new(&cfg, &context(dir.path()));
    let again = h.feed(vec![]);
    assert_eq!(
        states(&again),
        [("raised".into(), "major".into(), "a".into())]
    );
    assert_eq!(again[0].get("alarm_id"), raised[0].get("alarm_id"));
    assert_eq!(seq(&again[0]), Some(1), "the same transition, the same key");
    // Handed this time: the next start emits nothing, and the sequence goes on.
    drop(again);
    drop(h);
    let mut h = Harness::new(&cfg, &context(dir.path()));
    assert!(h.feed(vec![]).is_empty());
    let cleared = h.feed(vec![reading("a", 1, 90.0)]);
    assert_eq!(states(&cleared)[0].0, "cleared");
    assert_eq!(seq(&cleared[0]), Some(2));
}

#[test]
fn the_reading_is_acknowledged_once_its_transition_is_handed() {
    use crate::event::{Delivery, DeliveryStatus};
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(serde_json::json!({ "raise": "temp_avg > 100", "clear": "temp_avg < 95" }));
    let mut h = Harness::new(&cfg, &context(dir.path()));
    let state_file = dir.path().join("alarms").join("hot.json");

    let (delivery, mut source) = Delivery::new();
    let mut hot = reading("a", 0, 101.0);
    hot.attach(&delivery);
    drop(delivery);
    let raised = h.feed(vec![hot]);
    assert!(
        source.try_recv().is_err(),
        "the source waits for the handover"
    );
    let on_disk = std::fs::read_to_string(&state_file).unwrap();
    assert!(on_disk.contains("\"pending\""), "{on_disk}");

    // The handover wakes the alarm (the topology then calls `on_wake`).
    let wake = h.transform.wake_signal().unwrap();
    drop(raised);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let woken = runtime.block_on(async {
        tokio::time::timeout(std::time::Duration::from_secs(5), wake.notified()).await
    });
    assert!(woken.is_ok(), "the alarm was not woken by the handover");
    h.transform.on_wake(&mut h.out);
    assert_eq!(source.try_recv(), Ok(DeliveryStatus::Committed));
    let on_disk = std::fs::read_to_string(&state_file).unwrap();
    assert!(!on_disk.contains("\"pending\""), "{on_disk}");

    // A transition a consumer lost fails its reading and stays for the next start.
    let (delivery, mut source) = Delivery::new();
    let mut cool = reading("a", 1, 90.0);
    cool.attach(&delivery);
    drop(delivery);
    let cleared = h.feed(vec![cool]);
    cleared[0].fail_delivery();
    drop(cleared);
    h.transform.on_wake(&mut h.out);
    assert_eq!(source.try_recv(), Ok(DeliveryStatus::Failed));
    drop(h);
    let mut h = Harness::new(&cfg, &context(dir.path()));
    let again = h.feed(vec![]);
    assert_eq!(states(&again)[0].0, "cleared");
    assert_eq!(seq(&again[0]), Some(2));
}

#[test]
fn the_outbox_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(serde_json::json!({ "raise": "temp_avg > 100", "clear": "temp_avg < 95" }));
    let mut h = Harness::new(&cfg, &context(dir.path()));
    let cycles = outbox::MAX_PENDING as i64 + 2;
    let readings = (0..cycles)
        .map(|s| reading("a", s, if s % 2 == 0 { 101.0 } else { 90.0 }))
        .collect();
    // Nobody takes the transitions: they all wait for their handover.
    let transitions = h.feed(readings);
    assert_eq!(transitions.len(), cycles as usize);
    let path = dir.path().join("alarms").join("hot.json");
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let pending = state["pending"].as_array().unwrap();
    assert_eq!(pending.len(), outbox::MAX_PENDING);
    // The oldest were given up: the first kept is the third transition.
    assert_eq!(pending[0]["fields"]["state"], "raised");
    assert_eq!(pending[0]["time"], transitions[2].time.to_string());
}

#[test]
fn an_event_without_a_key_goes_to_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(serde_json::json!({ "raise": "temp_avg > 100", "clear": "temp_avg < 95" }));
    let mut h = Harness::new(&cfg, &context(dir.path()));
    let mut event = reading("a", 0, 101.0);
    event.device_id = None;
    h.transform.transform(event, &mut h.out);
    let all = h.out.take();
    assert!(all[0].1.is_empty());
    assert_eq!(all[1].1.len(), 1);
}

#[test]
fn check_names_the_field() {
    let cfg = config(serde_json::json!({
        "raise": { "major": "x > 1" }, "severity": "minor", "clear": "x < 1", "count": 0,
    }));
    let problems = cfg.check();
    let fields: Vec<String> = problems.iter().map(|p| format!("{:?}", p.path)).collect();
    assert_eq!(problems.len(), 2, "{fields:?}");
}
