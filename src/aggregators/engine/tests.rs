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
