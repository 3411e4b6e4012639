//! The `mqtt` sink against the real Mosquitto, read back with `mosquitto_sub` (a client
//! nobody here wrote): every reading of `http → mqtt sink` arrives once at QoS 1 on its
//! templated topic; two instances running one sink configuration connect side by side
//! (their client ids name their instances); and a request waits for the broker's PUBACK,
//! holding its answer while the broker is unreachable.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use futures::StreamExt as _;
use weir::telemetry::Telemetry;
use weir::topology::RunningTopology;

use crate::support::forward::Forwarder;
use crate::support::services::{Broker, Lease};
use crate::support::{eventually, free_port, metric, pipeline, services};

/// An ingest pipeline whose `forward` sink publishes to `url` under `prefix/<device>/r`.
fn ingest(data_dir: &std::path::Path, port: u16, url: &str, prefix: &str, extra: &str) -> String {
    format!(
        "api: {{ enabled: false }}
data_dir: '{d}'
sources:
  devices: {{ type: http, listen: '127.0.0.1:{port}'{extra} }}
sinks:
  forward:
    type: mqtt
    inputs: [devices]
    url: '{url}'
    topic: '{prefix}/{{{{ device_id }}}}/r'
    timeout: 2s
    retry: {{ initial_backoff: 50ms, max_backoff: 500ms }}
",
        d = data_dir.display()
    )
}

fn mosquitto_sub(args: &[&str]) -> std::process::Output {
    Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", "1883", "-q", "1"])
        .args(args)
        .output()
        .expect("mosquitto_sub runs")
}

/// A persistent QoS 1 session `id` subscribed to `filter`: Mosquitto keeps what is
/// published to it from now on until it is collected.
fn subscribe(id: &str, filter: &str) {
    let output = mosquitto_sub(&["-i", id, "-c", "-t", filter, "-E"]);
    assert!(output.status.success(), "{output:?}");
}

/// The next `count` messages of session `id`, as (topic, payload) lines.
fn collect(id: &str, filter: &str, count: usize) -> Vec<(String, serde_json::Value)> {
    let output = mosquitto_sub(&[
        "-i",
        id,
        "-c",
        "-t",
        filter,
        "-v",
        "-C",
        &count.to_string(),
        "-W",
        "30",
    ]);
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let (topic, payload) = line.split_once(' ').unwrap();
            (topic.to_owned(), serde_json::from_str(payload).unwrap())
        })
        .collect()
}

/// Ends session `id` (a clean-session connect drops what the broker kept for it).
fn forget(id: &str, filter: &str) {
    let _ = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            "1883",
            "-i",
            id,
            "-t",
            filter,
            "-E",
        ])
        .output();
}

async fn post(port: u16, device: &str, body: String) -> u16 {
    reqwest::Client::new()
        .post(format!(
            "http://127.0.0.1:{port}/v1/devices/{device}/messages"
        ))
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_of_one_sink_deliver_every_reading_once_at_qos1() {
    let _mosquitto = Lease::shared(&[Broker::Mosquitto]).await;
    let url = services::mosquitto();
    let prefix = format!("weir-test-mqtt-sink-{}", std::process::id());
    let filter = format!("{prefix}/#");
    let reader = format!("{prefix}-reader");
    subscribe(&reader, &filter);

    // One sink configuration, two instances (two data_dirs, so two instance ids): with one
    // client id they would take each other's connection over, again and again.
    let dir = tempfile::tempdir().unwrap();
    let ports = [free_port(), free_port()];
    let mut running = Vec::new();
    for (n, port) in ports.iter().enumerate() {
        let telemetry = Telemetry::new();
        let data_dir = dir.path().join(format!("instance-{n}"));
        let text = ingest(&data_dir, *port, url, &prefix, "");
        running.push((
            RunningTopology::start(&pipeline(&text), &telemetry).unwrap(),
            telemetry,
        ));
    }
    // 300 readings: 2 instances × 10 devices × 15 requests, 4 at a time.
    let requests: Vec<(u16, String, u64)> = (0..150u64)
        .map(|n| (ports[(n % 2) as usize], format!("meter-{}", n % 10), n))
        .collect();
    let answers: Vec<u16> = futures::stream::iter(requests)
        .map(|(port, device, n)| async move {
            let body = format!(r#"[{{"seq": {}}}, {{"seq": {}}}]"#, 2 * n, 2 * n + 1);
            post(port, &device, body).await
        })
        .buffer_unordered(4)
        .collect()
        .await;
    assert!(answers.iter().all(|s| *s == 200), "{answers:?}");
    for (topology, telemetry) in running {
        assert_eq!(
            metric(
                &telemetry,
                "component_sent_events_total",
                &[r#"component_id="forward""#]
            ),
            150.0,
            "a 200 means the broker acknowledged the readings"
        );
        assert_eq!(
            metric(
                &telemetry,
                "component_errors_total",
                &[r#"component_id="forward""#]
            ),
            0.0,
            "no connection was lost (or taken over)"
        );
        let _ = topology.stop(Duration::from_secs(10)).await;
    }

    let messages = tokio::task::spawn_blocking({
        let (reader, filter) = (reader.clone(), filter.clone());
        move || collect(&reader, &filter, 300)
    })
    .await
    .unwrap();
    forget(&reader, &filter);
    assert_eq!(messages.len(), 300);
    let mut seqs = BTreeSet::new();
    for (topic, reading) in &messages {
        let seq = reading["seq"].as_u64().unwrap();
        let device = format!("meter-{}", (seq / 2) % 10);
        assert_eq!(reading["device_id"], device.as_str());
        assert_eq!(topic, &format!("{prefix}/{device}/r"), "the topic template");
        assert!(reading["event_time"].is_string(), "{reading}");
        assert!(seqs.insert(seq), "seq {seq} twice");
    }
    assert_eq!(seqs.len(), 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waits_for_the_puback_of_a_broker_that_is_down() {
    let _mosquitto = Lease::shared(&[Broker::Mosquitto]).await;
    let prefix = format!("weir-test-mqtt-sink-down-{}", std::process::id());
    let filter = format!("{prefix}/#");
    let reader = format!("{prefix}-reader");
    let _ = services::mosquitto();
    subscribe(&reader, &filter);

    let mut broker = Forwarder::closed();
    let url = format!("mqtt://127.0.0.1:{}", broker.port);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let telemetry = Telemetry::new();
    let text = ingest(dir.path(), port, &url, &prefix, ", ack_timeout: 60s");
    let ingest = RunningTopology::start(&pipeline(&text), &telemetry).unwrap();
    let request = tokio::spawn(post(port, "meter-1", r#"{"seq": 7}"#.into()));
    assert!(
        eventually(Duration::from_secs(15), || metric(
            &telemetry,
            "sink_retries_total",
            &[r#"component_id="forward""#]
        ) >= 2.0)
        .await,
        "the sink retries while the broker is down"
    );
    assert!(
        !request.is_finished(),
        "no answer before the broker's PUBACK"
    );

    broker.open(1883).await;
    let status = tokio::time::timeout(Duration::from_secs(20), request)
        .await
        .expect("an answer once the broker is up")
        .unwrap();
    assert_eq!(status, 200);
    let _ = ingest.stop(Duration::from_secs(10)).await;
    let messages = tokio::task::spawn_blocking({
        let (reader, filter) = (reader.clone(), filter.clone());
        move || collect(&reader, &filter, 1)
    })
    .await
    .unwrap();
    forget(&reader, &filter);
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].0, format!("{prefix}/meter-1/r"));
    assert_eq!(messages[0].1["seq"], 7);
}
