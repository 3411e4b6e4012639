//! The router's promises: nothing it cannot hand to a shard is acknowledged as committed,
//! and a checkpoint it cannot read is kept aside, counted and reported.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use super::{Checkpoint, Retirement, WindowEngine, restore, route};
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

fn retirement(id: &ComponentId) -> Retirement {
    let handover = Arc::new(Handover::default());
    let arrival = handover.arrive(id, engine().definition());
    Retirement {
        handover,
        arrival,
        close: Arc::default(),
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
    };
    // A shard that has already ended (as a failed one does): its input is closed.
    let (shard_tx, shard_rx) = tokio::sync::mpsc::channel::<EventBatch>(4);
    drop(shard_rx);
    let shard = tokio::spawn(async { (engine().definition(), Vec::new(), Vec::new()) });

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
    let component = telemetry.component(
        &ComponentId::new("w"),
        ComponentKind::Aggregator,
        "tumbling",
    );
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
    let mut one = engine();
    let mut emitted = Vec::new();
    one.add(
        &event("d1", 1_000, 1),
        1_000,
        std::time::Instant::now(),
        &mut emitted,
    );
    let written = Checkpoint {
        definition: one.definition(),
        groups: one.snapshot(),
    };
    std::fs::write(&path, serde_json::to_vec(&written).unwrap()).unwrap();
    let mut engines = vec![engine()];
    restore(&mut engines, &path, &component).unwrap();
    assert_eq!(engines[0].open_windows(), 1);
    assert!(!path.exists());
}
