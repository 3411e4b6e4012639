//! The `mqtt` source against the real Mosquitto: QoS 1 publishes reach a file sink, the
//! device id comes from the topic, undecodable payloads are dead-lettered.

use std::collections::BTreeSet;
use std::time::Duration;

use weir::telemetry::Telemetry;
use weir::topology::RunningTopology;

use crate::support::mqtt::{publish, start_subscribed};
use crate::support::services::{Broker, Lease};
use crate::support::{self, eventually, lines, metric, pipeline, services};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_publishes_reach_the_sink_with_the_device_from_the_topic() {
    let _mosquitto = Lease::shared(&[Broker::Mosquitto]).await;
    let url = services::mosquitto();
    let prefix = format!("weir-test-{}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "api: {{ enabled: false }}
sources:
  plant: {{ type: mqtt, url: '{url}', client_id: '{prefix}', topics: ['{prefix}/+/telemetry'], device_id: '{prefix}/{{device_id}}/telemetry', max_inflight: 50 }}
sinks:
  out: {{ type: file, inputs: [plant], path: '{d}/out.ndjson', fsync: true }}
  dead: {{ type: file, inputs: [plant.errors], path: '{d}/dead.ndjson' }}
",
        d = dir.path().display()
    );
    let (topology, telemetry) = start_subscribed(&text, &["plant"]).await;

    let mut messages: Vec<(String, Vec<u8>)> = (0..2000)
        .map(|i| {
            (
                format!("{prefix}/engine-{}/telemetry", i % 5),
                format!(r#"{{"seq": {i}, "temperature": 70}}"#).into_bytes(),
            )
        })
        .collect();
    messages.push((
        format!("{prefix}/engine-9/telemetry"),
        b"\x00garbage".to_vec(),
    ));
    // In rounds: Mosquitto drops what a subscriber's queue (max_queued_messages, 1000 by
    // default) cannot hold, so never get more than that ahead of weir.
    let out = dir.path().join("out.ndjson");
    for (round, chunk) in messages.chunks(400).enumerate() {
        publish(&format!("{prefix}-{round}"), chunk.to_vec()).await;
        let target = (400 * round + chunk.len()).min(2000);
        assert!(
            eventually(Duration::from_secs(20), || lines(&out).len() >= target).await,
            "round {round} arrives"
        );
    }

    let arrived = eventually(Duration::from_secs(30), || lines(&out).len() >= 2000).await;
    assert!(
        arrived,
        "every publish arrives: {} of 2000; metrics:\n{}",
        lines(&out).len(),
        telemetry
            .encode()
            .lines()
            .filter(|l| l.contains("plant"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let _ = topology.stop(Duration::from_secs(10)).await;
    let events = lines(&out);
    let seqs: BTreeSet<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs.len(), 2000);
    let devices: BTreeSet<&str> = events
        .iter()
        .map(|e| e["device_id"].as_str().unwrap())
        .collect();
    assert_eq!(devices.len(), 5);
    assert!(devices.contains("engine-0"));
    assert!(
        events[0]["meta"]["topic"]
            .as_str()
            .unwrap()
            .starts_with(&prefix)
    );
    let dead = lines(&dir.path().join("dead.ndjson"));
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0]["meta"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("invalid JSON")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtts_with_a_test_ca_and_with_client_certificates() {
    let _mosquitto = Lease::shared(&[Broker::Mosquitto]).await;
    services::mosquitto();
    let dir = tempfile::tempdir().unwrap();
    let pki = support::pki::generate(dir.path());
    for mutual in [false, true] {
        let port = support::pki::tls_proxy(&pki, mutual, 1883).await;
        let prefix = format!("weir-tls-{}-{mutual}", std::process::id());
        let client = if mutual {
            format!(
                ", cert_file: '{}', key_file: '{}'",
                pki.client_cert.display(),
                pki.client_key.display()
            )
        } else {
            String::new()
        };
        let out = dir.path().join(format!("out-{mutual}.ndjson"));
        let text = format!(
            "api: {{ enabled: false }}
sources:
  plant: {{ type: mqtt, url: 'mqtts://localhost:{port}', client_id: '{prefix}', topics: ['{prefix}/+/t'], device_id: '{prefix}/{{device_id}}/t', tls: {{ ca_file: '{}'{client} }} }}
sinks:
  out: {{ type: file, inputs: [plant], path: '{}' }}
",
            pki.ca.display(),
            out.display()
        );
        let (topology, _telemetry) = start_subscribed(&text, &["plant"]).await;
        publish(
            &prefix,
            (0..50)
                .map(|i| {
                    (
                        format!("{prefix}/d1/t"),
                        format!(r#"{{"seq": {i}}}"#).into_bytes(),
                    )
                })
                .collect(),
        )
        .await;
        assert!(
            eventually(Duration::from_secs(10), || lines(&out).len() >= 50).await,
            "readings arrive over TLS (mutual: {mutual})"
        );
        let _ = topology.stop(Duration::from_secs(10)).await;
    }

    // Without the client certificate, the mutual-TLS endpoint refuses weir.
    let port = support::pki::tls_proxy(&pki, true, 1883).await;
    let text = format!(
        "api: {{ enabled: false }}
sources:
  plant: {{ type: mqtt, url: 'mqtts://localhost:{port}', client_id: 'weir-tls-refused-{}', topics: ['x/+/t'], tls: {{ ca_file: '{}' }} }}
sinks:
  out: {{ type: blackhole, inputs: [plant] }}
",
        std::process::id(),
        pki.ca.display()
    );
    let telemetry = Telemetry::new();
    let topology = RunningTopology::start(&pipeline(&text), &telemetry).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        metric(&telemetry, "source_connected", &[r#"component_id="plant""#]),
        0.0
    );
    assert!(
        metric(
            &telemetry,
            "component_errors_total",
            &[r#"component_id="plant""#, r#"error_type="io_failed""#]
        ) >= 1.0
    );
    let _ = topology.stop(Duration::from_secs(10)).await;
}
