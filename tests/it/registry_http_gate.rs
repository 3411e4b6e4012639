//! The registry as a gate at the `http` source without tokens (`auth: none`): disabled
//! devices get 403, unregistered ones 401 with `unknown_devices: refuse`, both counted;
//! with `device_id_field`, a request holding a refused device's reading is refused whole.

use std::time::Duration;

use weir::registry::{DevicePatch, DeviceSpec, Registry, Status};
use weir::telemetry::Telemetry;
use weir::topology::RunningTopology;

use crate::support::{auth_failures, eventually, free_port, lines, pipeline};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_and_unknown_devices_are_refused_without_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let (by_path, by_field) = (free_port(), free_port());
    let text = format!(
        "api: {{ enabled: false }}
data_dir: '{d}'
registry: {{}}
sources:
  strict: {{ type: http, listen: '127.0.0.1:{by_path}', unknown_devices: refuse }}
  open: {{ type: http, listen: '127.0.0.1:{by_field}', path: /readings, device_id_field: id }}
sinks:
  out: {{ type: file, inputs: [strict, open], path: '{d}/out.ndjson' }}
",
        d = dir.path().display()
    );
    let telemetry = Telemetry::new();
    let topology = RunningTopology::start(&pipeline(&text), &telemetry).unwrap();
    let registry = topology.services().get::<Registry>().unwrap();
    for (id, status) in [("on", Status::Enabled), ("off", Status::Disabled)] {
        registry
            .create(DeviceSpec {
                id: id.into(),
                fields: DevicePatch {
                    status: Some(status),
                    ..DevicePatch::default()
                },
            })
            .unwrap();
    }
    let client = reqwest::Client::new();
    let post = |url: String, body: &'static str| {
        let request = client.post(url).body(body);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    let strict = |device: &str| format!("http://127.0.0.1:{by_path}/v1/devices/{device}/messages");
    assert_eq!(post(strict("on"), r#"{"n": 1}"#).await, 200);
    assert_eq!(post(strict("off"), r#"{"n": 2}"#).await, 403);
    assert_eq!(post(strict("ghost"), r#"{"n": 3}"#).await, 401);

    let open = format!("http://127.0.0.1:{by_field}/readings");
    assert_eq!(
        post(open.clone(), r#"{"id": "ghost", "n": 4}"#).await,
        200,
        "unknown accepted"
    );
    assert_eq!(
        post(
            open.clone(),
            r#"[{"id": "on", "n": 5}, {"id": "off", "n": 6}]"#
        )
        .await,
        403
    );

    let out = dir.path().join("out.ndjson");
    assert!(eventually(Duration::from_secs(5), || lines(&out).len() == 2).await);
    let mut seen: Vec<u64> = lines(&out)
        .iter()
        .map(|e| e["n"].as_u64().unwrap())
        .collect();
    seen.sort();
    assert_eq!(seen, [1, 4]);
    assert_eq!(auth_failures(&telemetry, "disabled"), 2.0);
    assert_eq!(auth_failures(&telemetry, "unknown_device"), 1.0);
    topology.stop(Duration::from_secs(10)).await;
}
