//! The `mqtt` source's two protocol versions against the real Mosquitto: both deliver
//! (including messages larger than the 10 KiB rumqttc takes by default), MQTT 5 user
//! properties arrive as headers, a message over `max_packet` does not stall the session
//! under MQTT 5 (the broker learns the limit and keeps such messages back), a resumed
//! MQTT 5 session delivers what the broker kept and still subscribes new topics, and a
//! shared subscription splits the traffic between its members.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::support::mqtt::{Publish5, publish, publish_v5, start_subscribed};
use crate::support::services::{Broker, Lease};
use crate::support::{eventually, lines, metric, services};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_protocol_versions_deliver_large_messages() {
    let _mosquitto = Lease::shared(&[Broker::Mosquitto]).await;
    let url = services::mosquitto();
    let prefix = format!("weir-proto-{}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "api: {{ enabled: false }}
sources:
  v3: {{ type: mqtt, url: '{url}', client_id: '{prefix}-v3', protocol: '3.1.1', topics: ['{prefix}/v3/+'], device_id: '{prefix}/v3/{{device_id}}' }}
  v5: {{ type: mqtt, url: '{url}', client_id: '{prefix}-v5', protocol: 5, topics: ['{prefix}/v5/+'], device_id: '{prefix}/v5/{{device_id}}' }}
sinks:
  out: {{ type: file, inputs: [v3, v5], path: '{d}/out.ndjson' }}
",
        d = dir.path().display()
    );
    let (topology, _telemetry) = start_subscribed(&text, &["v3", "v5"]).await;

    // 40 KiB of readings in one message: four times what rumqttc takes by default.
    let large = |seq: usize| {
        let readings: Vec<String> = (0..400)
            .map(|n| {
                format!(
                    r#"{{"seq": {seq}, "n": {n}, "note": "{}"}}"#,
                    "x".repeat(80)
                )
            })
            .collect();
        format!("[{}]", readings.join(",")).into_bytes()
    };
    let mut messages = Vec::new();
    for version in ["v3", "v5"] {
        for seq in 0..3 {
            messages.push((format!("{prefix}/{version}/engine-{seq}"), large(seq)));
        }
    }
    publish(&prefix, messages).await;

    let out = dir.path().join("out.ndjson");
    assert!(
        eventually(Duration::from_secs(20), || lines(&out).len() >= 2 * 3 * 400).await,
        "every reading of both versions arrives: {} of 2400",
        lines(&out).len()
    );
    let _ = topology.stop(Duration::from_secs(10)).await;
    let events = lines(&out);
    assert_eq!(events.len(), 2400, "nothing twice");
    let sources: BTreeSet<&str> = events
        .iter()
        .map(|e| e["meta"]["source"].as_str().unwrap())
        .collect();
    assert_eq!(sources, BTreeSet::from(["v3", "v5"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_user_properties_arrive_as_headers() {
    let _mosquitto = Lease::shared(&[Broker::Mosquitto]).await;
    let url = services::mosquitto();
    let prefix = format!("weir-props-{}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "api: {{ enabled: false }}
sources:
  plant: {{ type: mqtt, url: '{url}', client_id: '{prefix}', topics: ['{prefix}/+'], device_id: '{prefix}/{{device_id}}', clean_session: true }}
transforms:
  tag: {{ type: remap, inputs: [plant], set: {{ firmware: 'meta.headers.firmware' }} }}
sinks:
  out: {{ type: file, inputs: [tag], path: '{d}/out.ndjson' }}
",
        d = dir.path().display()
    );
    let (topology, _telemetry) = start_subscribed(&text, &["plant"]).await;
    publish_v5(
        &prefix,
        vec![Publish5 {
            topic: format!("{prefix}/pump-7"),
            payload: br#"{"pressure": 3.2}"#.to_vec(),
            user_properties: vec![
                ("firmware".into(), "4.2.0".into()),
                ("site".into(), "north".into()),
            ],
            content_type: Some("application/json".into()),
        }],
    )
    .await;
    let out = dir.path().join("out.ndjson");
    assert!(eventually(Duration::from_secs(10), || !lines(&out).is_empty()).await);
    let _ = topology.stop(Duration::from_secs(10)).await;
    let event = &lines(&out)[0];
    assert_eq!(event["device_id"], "pump-7");
    assert_eq!(event["firmware"], "4.2.0", "expressions see the headers");
    assert_eq!(
        event["meta"]["headers"],
        serde_json::json!({
            "firmware": "4.2.0",
            "site": "north",
            "content-type": "application/json"
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_does_not_stall_an_mqtt5_session() {
    let _mosquitto = Lease::shared(&[Broker::Mosquitto]).await;
    let url = services::mosquitto();
    let prefix = format!("weir-oversize-{}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "api: {{ enabled: false }}
sources:
  plant: {{ type: mqtt, url: '{url}', client_id: '{prefix}', topics: ['{prefix}/+'], device_id: '{prefix}/{{device_id}}', max_packet: 1KiB }}
sinks:
  out: {{ type: file, inputs: [plant], path: '{d}/out.ndjson' }}
",
        d = dir.path().display()
    );
    let (topology, telemetry) = start_subscribed(&text, &["plant"]).await;
    let oversized = format!(r#"{{"blob": "{}"}}"#, "y".repeat(4 * 1024));
    let mut messages = vec![(format!("{prefix}/d1"), oversized.into_bytes())];
    messages.extend((0..20).map(|seq| {
        (
            format!("{prefix}/d1"),
            format!(r#"{{"seq": {seq}}}"#).into_bytes(),
        )
    }));
    publish(&prefix, messages).await;
    let out = dir.path().join("out.ndjson");
    assert!(
        eventually(Duration::from_secs(10), || lines(&out).len() >= 20).await,
        "the readings after the oversized message arrive: {}",
        lines(&out).len()
    );
    // The connection never broke over it.
    assert_eq!(
        metric(
            &telemetry,
            "component_errors_total",
            &[r#"component_id="plant""#, r#"error_type="io_failed""#]
        ),
        0.0
    );
    let _ = topology.stop(Duration::from_secs(10)).await;
    let seqs: BTreeSet<u64> = lines(&out)
        .iter()
        .filter_map(|e| e["seq"].as_u64())
        .collect();
    assert_eq!(seqs.len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_mqtt5_session_delivers_what_was_kept_and_subscribes_new_topics() {
    let _mosquitto = Lease::shared(&[Broker::Mosquitto]).await;
    let url = services::mosquitto();
    let prefix = format!("weir-resume-{}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let config = |topics: &str| {
        format!(
            "api: {{ enabled: false }}
sources:
  plant: {{ type: mqtt, url: '{url}', client_id: '{prefix}', topics: [{topics}], device_id: '{prefix}/{{device_id}}/t', session_expiry: 1h }}
sinks:
  out: {{ type: file, inputs: [plant], path: '{d}/out.ndjson' }}
",
            d = dir.path().display()
        )
    };
    let readings = |device: &str| {
        (0..5)
            .map(|seq| {
                (
                    format!("{prefix}/{device}/t"),
                    format!(r#"{{"seq": {seq}}}"#).into_bytes(),
                )
            })
            .collect::<Vec<_>>()
    };

    // The first run makes the session, then weir is away while `a` publishes.
    let (topology, _) = start_subscribed(&config(&format!("'{prefix}/a/t'")), &["plant"]).await;
    let _ = topology.stop(Duration::from_secs(10)).await;
    publish(&prefix, readings("a")).await;

    // The second run resumes the session and adds a topic.
    let (topology, _) = start_subscribed(
        &config(&format!("'{prefix}/a/t', '{prefix}/b/t'")),
        &["plant"],
    )
    .await;
    publish(&prefix, readings("b")).await;
    let out = dir.path().join("out.ndjson");
    assert!(
        eventually(Duration::from_secs(10), || lines(&out).len() >= 10).await,
        "the kept readings of `a` and the new topic's readings of `b` arrive: {:?}",
        lines(&out)
    );
    let _ = topology.stop(Duration::from_secs(10)).await;
    let devices: BTreeSet<String> = lines(&out)
        .iter()
        .map(|e| e["device_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(devices, BTreeSet::from(["a".to_owned(), "b".to_owned()]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_subscription_splits_the_traffic_between_instances() {
    let _mosquitto = Lease::shared(&[Broker::Mosquitto]).await;
    let url = services::mosquitto();
    let prefix = format!("weir-shared-{}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    // Two sources stand for two weir instances; one speaks 3.1.1, so the group mixes both.
    let text = format!(
        "api: {{ enabled: false }}
sources:
  one: {{ type: mqtt, url: '{url}', client_id: '{prefix}-1', topics: ['{prefix}/+/t'], device_id: '{prefix}/{{device_id}}/t', shared_group: ingest, clean_session: true }}
  two: {{ type: mqtt, url: '{url}', client_id: '{prefix}-2', topics: ['{prefix}/+/t'], device_id: '{prefix}/{{device_id}}/t', shared_group: ingest, clean_session: true, protocol: '3.1.1' }}
sinks:
  out: {{ type: file, inputs: [one, two], path: '{d}/out.ndjson' }}
",
        d = dir.path().display()
    );
    let (topology, _telemetry) = start_subscribed(&text, &["one", "two"]).await;
    let messages = (0..200)
        .map(|seq| {
            (
                format!("{prefix}/d{}/t", seq % 7),
                format!(r#"{{"seq": {seq}}}"#).into_bytes(),
            )
        })
        .collect();
    publish(&prefix, messages).await;
    let out = dir.path().join("out.ndjson");
    assert!(
        eventually(Duration::from_secs(10), || lines(&out).len() >= 200).await,
        "every publish arrives: {} of 200",
        lines(&out).len()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = topology.stop(Duration::from_secs(10)).await;
    let events = lines(&out);
    assert_eq!(events.len(), 200, "each publish went to one member only");
    let by_source = |source: &str| {
        events
            .iter()
            .filter(|e| e["meta"]["source"] == source)
            .count()
    };
    assert!(
        by_source("one") > 0 && by_source("two") > 0,
        "both members take a share: one {}, two {}",
        by_source("one"),
        by_source("two")
    );
}
