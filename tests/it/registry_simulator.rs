//! The registry at the `simulator` source and in `enrich`, in process: a simulated device
//! the registry disables is refused to `<id>.errors`; unregistered ones pass, and `enrich`
//! with `on_unknown_device: keep` lets them through without a `device`.

use weir::registry::{DevicePatch, DeviceSpec, Registry, Status};
use weir::telemetry::Telemetry;
use weir::topology::RunningTopology;

use crate::support::{lines, pipeline};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_simulated_devices_are_refused_and_registered_ones_enriched() {
    let dir = tempfile::tempdir().unwrap();
    // Registered before weir starts: the topology opens the same registry.
    let registry = Registry::open(&dir.path().join("registry.redb")).unwrap();
    registry
        .create(DeviceSpec {
            id: "sim-0001".into(),
            fields: DevicePatch {
                tags: Some(serde_json::from_str(r#"{"site": "lab"}"#).unwrap()),
                ..DevicePatch::default()
            },
        })
        .unwrap();
    registry
        .create(DeviceSpec {
            id: "sim-0002".into(),
            fields: DevicePatch {
                status: Some(Status::Disabled),
                ..DevicePatch::default()
            },
        })
        .unwrap();
    let text = format!(
        "api: {{ enabled: false }}
data_dir: '{d}'
registry: {{ path: registry.redb }}
sources:
  fleet: {{ type: simulator, devices: 3, device_prefix: sim-, realtime: false, limit: 300, batch_size: 30 }}
transforms:
  enriched: {{ type: enrich, inputs: [fleet], on_unknown_device: keep }}
sinks:
  out: {{ type: file, inputs: [enriched], path: '{d}/out.ndjson' }}
  dead: {{ type: file, inputs: [fleet.errors], path: '{d}/dead.ndjson' }}
",
        d = dir.path().display()
    );
    let telemetry = Telemetry::new();
    let mut topology = RunningTopology::start(&pipeline(&text), &telemetry).unwrap();
    assert!(std::sync::Arc::ptr_eq(
        &topology.services().get::<Registry>().unwrap(),
        &registry
    ));
    topology.wait().await;
    let (out, dead) = (
        lines(&dir.path().join("out.ndjson")),
        lines(&dir.path().join("dead.ndjson")),
    );
    // The simulator ran out and the graph drained: both files are complete.
    assert_eq!(out.len() + dead.len(), 300);
    assert_eq!(dead.len(), 100);
    assert!(dead.iter().all(|e| e["device_id"] == "sim-0002"));
    for event in &out {
        match event["device_id"].as_str().unwrap() {
            "sim-0001" => assert_eq!(event["device"]["site"], "lab"),
            "sim-0003" => assert!(event.get("device").is_none()),
            other => panic!("{other} should have been refused"),
        }
    }
}
