//! The registry as a gate at the `mqtt` source, against the real Mosquitto: a device the
//! registry knows as disabled is refused to `<id>.errors` (counted), an enabled one passes,
//! and with `unknown_devices: refuse` an unregistered one is refused too.

use std::time::Duration;

use weir::registry::{DeviceSpec, Status};

use crate::support::mqtt::{publish, start_subscribed};
use crate::support::services::{Broker, Lease};
use crate::support::{auth_failures, eventually, lines, metric, services};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_and_unknown_devices_are_refused_at_mqtt() {
    let _mosquitto = Lease::shared(&[Broker::Mosquitto]).await;
    let url = services::mosquitto();
    let prefix = format!("weir-registry-{}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "api: {{ enabled: false }}
data_dir: '{d}'
registry: {{ path: registry.redb }}
sources:
  plant: {{ type: mqtt, url: '{url}', client_id: '{prefix}', topics: ['{prefix}/+/telemetry'], device_id: '{prefix}/{{device_id}}/telemetry', unknown_devices: refuse }}
sinks:
  out: {{ type: file, inputs: [plant], path: '{d}/out.ndjson' }}
  dead: {{ type: file, inputs: [plant.errors], path: '{d}/dead.ndjson' }}
",
        d = dir.path().display()
    );
    let (topology, telemetry) = start_subscribed(&text, &["plant"]).await;
    let registry = topology
        .services()
        .get::<weir::registry::Registry>()
        .expect("the topology opened the registry");
    for id in ["good", "bad"] {
        registry
            .create(DeviceSpec {
                id: id.into(),
                ..DeviceSpec::default()
            })
            .unwrap();
    }
    registry.set_status("bad", Status::Disabled, None).unwrap();

    let messages = ["good", "bad", "ghost", "good", "bad"]
        .iter()
        .enumerate()
        .map(|(seq, device)| {
            (
                format!("{prefix}/{device}/telemetry"),
                format!(r#"{{"seq": {seq}}}"#).into_bytes(),
            )
        })
        .collect();
    publish(&prefix, messages).await;

    let (out, dead) = (
        dir.path().join("out.ndjson"),
        dir.path().join("dead.ndjson"),
    );
    assert!(
        eventually(Duration::from_secs(10), || lines(&out).len() == 2
            && lines(&dead).len() == 3)
        .await,
        "out: {:?}\ndead: {:?}",
        lines(&out),
        lines(&dead)
    );
    assert!(lines(&out).iter().all(|e| e["device_id"] == "good"));
    let dead = lines(&dead);
    let refused: Vec<&str> = dead
        .iter()
        .map(|e| e["device_id"].as_str().unwrap())
        .collect();
    assert_eq!(refused, ["bad", "ghost", "bad"]);
    assert!(
        dead[0]["meta"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("disabled")
    );
    assert_eq!(auth_failures(&telemetry, "disabled"), 2.0);
    assert_eq!(auth_failures(&telemetry, "unknown_device"), 1.0);
    assert_eq!(
        metric(
            &telemetry,
            "component_errors_total",
            &[r#"component_id="plant""#, r#"error_type="unauthorized""#]
        ),
        3.0
    );
    assert_eq!(
        metric(&telemetry, "registry_devices", &[r#"status="disabled""#]),
        1.0
    );
    topology.stop(Duration::from_secs(10)).await;
}
