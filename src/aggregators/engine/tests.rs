//! The router's promises: nothing it cannot hand to a shard is acknowledged as committed,
//! and a checkpoint it cannot read is kept aside, counted and reported.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use super::checkpoint::{Checkpoint, restore};
use super::{Retirement, ShardState, WindowEngine, route};
use crate::aggregators::AggregatorContext;
use crate::aggregators::fixed::{Assigner, FixedWindows};
use crate::aggregators::handover::Handover;
use crate::aggregators::window::LatePolicy;
use crate::aggregators::window::testing::{self, event};
use crate::config::{ComponentId, ComponentKind};
use crate::event::{Delivery, DeliveryStatus, EventBatch};
use crate::telemetry::Telemetry;
use crate::topology::channel::{Outputs, input_channel};

fn engine() -> FixedWindows {
    let spec = testing::spec(&[("n", "count()")], 0, LatePolicy::Drop);
    FixedWindows::new(
        spec,
        Assigner::Tumbling {
            size: 1000,
            offset: 0,
        },
    )
}

/// An engine holding one open window.
fn one_window() -> FixedWindows {
    let mut one = engine();
    let mut emitted = Vec::new();
    one.add(
        &event("d1", 1_000, 1),
        1_000,
        std::time::Instant::now(),
        &mut emitted,
    );
    one
}

fn aggregator(telemetry: &Telemetry) -> crate::telemetry::ComponentTelemetry {
    telemetry.component(
        &ComponentId::new("w"),
        ComponentKind::Aggregator,
        "tumbling",
    )
}

fn retirement(id: &ComponentId) -> Retirement {
    let handover = Arc::new(Handover::default());
    let arrival = handover.arrive(id, engine().definition());
    Retirement {
        handover,
        arrival,
        close: Arc::default(),
        input_end: Arc::new(std::sync::atomic::AtomicI64::new(i64::MIN)),
    }
}

fn metric(telemetry: &Telemetry, line_start: &str) -> f64 {
    telemetry
        .encode()
        .lines()
        .filter(|l| l.starts_with(line_start))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn a_batch_a_stopped_shard_refuses_fails_its_deliveries() {
    let telemetry = Telemetry::new();
    let id = ComponentId::new("w");
    let component = telemetry.component(&id, ComponentKind::Aggregator, "tumbling");
    let (input_tx, input) = input_channel(&component, 4);
    let dir = tempfile::tempdir().unwrap();
    let cx = AggregatorContext {
        id: id.clone(),
        input,
        out: Outputs::new(None, Vec::new()),
        telemetry: component,
        data_dir: dir.path().to_path_buf(),
        retired: Arc::new(AtomicBool::new(false)),
        services: Arc::default(),
        instance_id: Arc::new(crate::topology::InstanceIdentity::new(dir.path(), None)),
        end_of_input: crate::config::aggregator::EndOfInput::Checkpoint,
    };
    // A shard that has already ended (as a failed one does): its input is closed.
    let (shard_tx, shard_rx) = tokio::sync::mpsc::channel::<EventBatch>(4);
    drop(shard_rx);
    let shard = tokio::spawn(async {
        ShardState {
            definition: engine().definition(),
            groups: Vec::new(),
            closing: Vec::new(),
            held: Vec::new(),
            closed_early: 0,
        }
    });

    let mut events = vec![event("d1", 1_000, 1), event("d1", 1_500, 2)];
    let status = Delivery::attach_all(&mut events);
    input_tx.send_for_test(EventBatch::new(events)).await;
    drop(input_tx);
    let checkpoint = dir.path().join("w.json");
    let spec = testing::spec(&[("n", "count()")], 0, LatePolicy::Drop);
    route::<<FixedWindows as WindowEngine>::Group>(
        cx,
        checkpoint,
        spec,
        vec![shard_tx],
        vec![shard],
        retirement(&id),
    )
    .await
    .unwrap();

    assert_eq!(status.await, Ok(DeliveryStatus::Failed));
    assert_eq!(
        metric(&telemetry, "component_discarded_events_total{"),
        2.0,
        "the two lost events are counted"
    );
}

#[test]
fn an_unreadable_checkpoint_is_moved_aside_counted_and_the_windows_start_empty() {
    let telemetry = Telemetry::new();
    let component = aggregator(&telemetry);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.json");
    std::fs::write(&path, b"{\"definition\": \"tumbl").unwrap();
    let mut engines = vec![engine()];

    restore(&mut engines, &path, &component).unwrap();

    assert!(!path.exists(), "the next start does not trip over it again");
    let aside = dir.path().join("w.json.corrupt");
    assert_eq!(std::fs::read(&aside).unwrap(), b"{\"definition\": \"tumbl");
    assert_eq!(engines[0].open_windows(), 0);
    assert_eq!(
        metric(&telemetry, "component_errors_total{"),
        1.0,
        "counted as an error"
    );
    assert!(telemetry.encode().contains("error_type=\"state_corrupt\""));

    // A readable checkpoint of the same definition is still restored (and removed).
    let one = one_window();
    let written = Checkpoint {
        definition: one.definition(),
        groups: one.snapshot(),
        closing: Vec::new(),
    };
    std::fs::write(&path, serde_json::to_vec(&written).unwrap()).unwrap();
    let mut engines = vec![engine()];
    restore(&mut engines, &path, &component).unwrap();
    assert_eq!(engines[0].open_windows(), 1);
    assert!(!path.exists());
}

#[test]
fn a_checkpoint_of_another_definition_comes_back_closed_early_or_is_kept_aside() {
    let telemetry = Telemetry::new();
    let component = aggregator(&telemetry);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.json");
    let mut one = one_window();
    let groups = one.snapshot();
    let mut closing = Vec::new();
    one.close_all(&mut closing);
    let written = Checkpoint {
        definition: "another".to_owned(),
        groups,
        closing: closing.iter().map(super::Closed::of).collect(),
    };
    let shard = super::shard_path(&path, 0);
    std::fs::write(&shard, serde_json::to_vec(&written).unwrap()).unwrap();

    let mut engines = vec![engine()];
    let superseded = restore(&mut engines, &path, &component).unwrap();
    assert_eq!(
        engines[0].open_windows(),
        0,
        "not taken as this definition's"
    );
    let content = |events: &[crate::event::Event]| {
        let content = |e: &crate::event::Event| (e.device_id.clone(), e.time, e.fields().clone());
        events.iter().map(content).collect::<Vec<_>>()
    };
    assert_eq!(
        content(&superseded.closed),
        content(&closing),
        "the results, as the old engine closed them"
    );
    assert_eq!(
        superseded.files,
        std::slice::from_ref(&shard),
        "removed once emitted, not before"
    );
    assert_eq!(
        metric(&telemetry, "aggregator_windows_closed_early_total{"),
        1.0
    );

    // From a version that kept no results: nothing can read it, so it is kept aside.
    std::fs::write(&shard, br#"{"definition": "another", "groups": []}"#).unwrap();
    let superseded = restore(&mut engines, &path, &component).unwrap();
    assert!(superseded.closed.is_empty() && superseded.files.is_empty());
    assert!(!shard.exists());
    assert!(dir.path().join("w.json.shard-0.superseded").exists());
    assert_eq!(metric(&telemetry, "component_errors_total{"), 1.0);
}

/// Runs aggregator `options` (of `type_name`) through its contract over `events`, with
/// `end`; returns what it emitted and whether it left a checkpoint.
async fn run_to_the_end(
    type_name: &str,
    options: serde_json::Value,
    events: Vec<crate::event::Event>,
    end: crate::config::aggregator::EndOfInput,
) -> (Vec<crate::event::Event>, bool) {
    use crate::topology::channel::{Fanout, targets};
    let telemetry = Telemetry::new();
    let id = ComponentId::new("w");
    let component = telemetry.component(&id, ComponentKind::Aggregator, type_name);
    let (input_tx, input) = input_channel(&component, 1024);
    let (out_tx, mut out_rx) = input_channel(&component, 1024);
    let out = Outputs::new(
        Some(Fanout::new("default", targets(vec![out_tx]), &component)),
        vec![Fanout::new("errors", targets(Vec::new()), &component)],
    );
    let dir = tempfile::tempdir().unwrap();
    let ty = crate::aggregators::TYPES
        .iter()
        .find(|t| t.name == type_name)
        .unwrap();
    let config = ty.parse(options).unwrap();
    let task = config
        .build(AggregatorContext {
            id: id.clone(),
            input,
            out,
            telemetry: component,
            data_dir: dir.path().to_path_buf(),
            retired: Arc::new(AtomicBool::new(false)),
            services: Arc::default(),
            instance_id: Arc::new(crate::topology::InstanceIdentity::new(dir.path(), None)),
            end_of_input: end,
        })
        .unwrap();
    let running = tokio::spawn(task);
    input_tx.send_for_test(EventBatch::new(events)).await;
    drop(input_tx);
    running.await.unwrap().unwrap();
    let mut emitted = Vec::new();
    while let Ok(Some(batch)) =
        tokio::time::timeout(std::time::Duration::from_millis(100), out_rx.recv()).await
    {
        emitted.extend(batch);
    }
    let checkpoint = crate::aggregators::checkpoint_path(dir.path(), &id);
    let kept =
        std::fs::read_to_string(&checkpoint).is_ok_and(|text| !text.contains("\"groups\":[]"));
    (emitted, kept)
}

#[tokio::test]
async fn at_the_end_of_a_tests_input_open_windows_close_complete_instead_of_being_kept() {
    use crate::config::aggregator::EndOfInput;
    let options = serde_json::json!({
        "size": "1s", "shards": 2, "aggregates": { "n": "count()", "total": "sum(x)" }
    });
    let events = || {
        vec![
            event("d1", 1_000, 1),
            event("d1", 1_500, 2),
            event("d2", 1_200, 5),
        ]
    };
    let (emitted, kept) = run_to_the_end(
        "tumbling",
        options.clone(),
        events(),
        EndOfInput::CloseWindows,
    )
    .await;
    let mut results: Vec<(String, serde_json::Value, bool)> = emitted
        .iter()
        .map(|e| {
            let device = e.device_id.as_deref().unwrap_or_default().to_owned();
            (
                device,
                e.fields()["total"].clone(),
                e.get("partial").is_some(),
            )
        })
        .collect();
    results.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        results,
        [
            ("d1".to_owned(), serde_json::json!(3.0), false),
            ("d2".to_owned(), serde_json::json!(5.0), false)
        ],
        "every group's window, complete (not `partial`)"
    );
    assert!(!kept, "nothing is left open to checkpoint");
    // A daemon's shutdown keeps them instead.
    let (emitted, kept) =
        run_to_the_end("tumbling", options, events(), EndOfInput::Checkpoint).await;
    assert!(emitted.is_empty() && kept);
}

#[tokio::test]
async fn at_the_end_of_a_tests_input_absence_judges_every_shard_by_the_latest_event() {
    use crate::config::aggregator::EndOfInput;
    let options = serde_json::json!({ "timeout": "10s", "shards": 2 });
    // Two groups, which may land on different shards: d1 is silent from 1 s, d2 reports
    // until 16 s, so by the input's end d1 has been silent 15 s; d2 has not.
    let events = vec![
        event("d1", 1_000, 0),
        event("d2", 1_000, 0),
        event("d2", 9_000, 0),
        event("d2", 16_000, 0),
    ];
    let (emitted, _) = run_to_the_end("absence", options, events, EndOfInput::CloseWindows).await;
    let absent: Vec<(&str, &serde_json::Value)> = emitted
        .iter()
        .map(|e| {
            (
                e.device_id.as_deref().unwrap_or_default(),
                &e.fields()["state"],
            )
        })
        .collect();
    assert_eq!(absent, [("d1", &serde_json::json!("absent"))]);
}
