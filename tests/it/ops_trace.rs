//! Traced readings in a running weir: a `traceparent` flagged sampled logs one JSON line
//! per hop with a growing time since arrival, feeds `component_latency_seconds` and
//! arrives as OpenTelemetry spans at a collector the test runs; a source's `trace.sample`
//! traces readings that came without one; an unsampled reading logs nothing.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::routing::post;
use serde_json::Value;

use crate::support::{Weir, eventually, free_port, metric_in};

/// An OTLP/HTTP receiver: every body posted to `/v1/traces`.
async fn start_receiver() -> (u16, Arc<Mutex<Vec<Value>>>) {
    let received = Arc::new(Mutex::new(Vec::new()));
    let kept = Arc::clone(&received);
    let app = Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            let kept = Arc::clone(&kept);
            async move {
                let value: Value = serde_json::from_slice(&body).expect("OTLP JSON");
                kept.lock().unwrap().push(value);
                "{}"
            }
        }),
    );
    let port = free_port();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind the receiver");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (port, received)
}

/// The spans the receiver got, of `trace_id`.
fn spans_of(received: &Mutex<Vec<Value>>, trace_id: &str) -> Vec<Value> {
    let mut spans = Vec::new();
    for body in received.lock().unwrap().iter() {
        for resource in body["resourceSpans"].as_array().into_iter().flatten() {
            for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
                for span in scope["spans"].as_array().into_iter().flatten() {
                    if span["traceId"] == trace_id {
                        spans.push(span.clone());
                    }
                }
            }
        }
    }
    spans
}

/// The `hop` lines of `trace_id` in weir's JSON log.
fn hops(log: &std::path::Path, trace_id: &str) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["message"] == "hop" && line["trace_id"] == trace_id)
        .collect()
}

const TRACE_ID: &str = "5cf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "10f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sampled_reading_logs_every_hop_and_its_spans_reach_the_collector() {
    let dir = tempfile::tempdir().unwrap();
    let (api, http, sampled_http) = (free_port(), free_port(), free_port());
    let (collector, received) = start_receiver().await;
    let pipeline = dir.path().join("pipeline.yaml");
    std::fs::write(
        &pipeline,
        format!(
            "data_dir: '{d}'
api: {{ listen: '127.0.0.1:{api}' }}
log: {{ format: json }}
telemetry: {{ otlp: {{ endpoint: 'http://127.0.0.1:{collector}', flush_interval: 100ms }} }}
sources:
  plant: {{ type: http, listen: '127.0.0.1:{http}' }}
  every: {{ type: http, listen: '127.0.0.1:{sampled_http}', trace: {{ sample: 1.0 }} }}
transforms:
  shaped: {{ type: remap, inputs: [plant, every], set: {{ seen: 'true' }} }}
sinks:
  out: {{ type: file, inputs: [shaped], path: '{d}/out.ndjson' }}
",
            d = dir.path().display()
        ),
    )
    .unwrap();
    let log = dir.path().join("weir.log");
    let weir = Weir::start_logged(
        dir.path(),
        &pipeline,
        ([127, 0, 0, 1], api).into(),
        &[("RUST_LOG", "warn,weir::trace=info")],
        &log,
    )
    .await;
    let client = reqwest::Client::new();
    let send = |port: u16, device: &str, traceparent: Option<String>| {
        let mut request = client
            .post(format!(
                "http://127.0.0.1:{port}/v1/devices/{device}/messages"
            ))
            .body(r#"{"temperature": 20}"#);
        if let Some(value) = traceparent {
            request = request.header("traceparent", value);
        }
        async move {
            let answer = request.send().await.expect("POST a reading");
            assert!(answer.status().is_success(), "{}", answer.status());
        }
    };

    // Not flagged sampled: its trace id travels, but nothing is logged for it.
    let unsampled = "6cf92f3577b34da6a3ce929d0e0e4736";
    send(
        http,
        "trace-pump-0",
        Some(format!("00-{unsampled}-{PARENT}-00")),
    )
    .await;
    send(
        http,
        "trace-pump-1",
        Some(format!("00-{TRACE_ID}-{PARENT}-01")),
    )
    .await;

    let logged = eventually(Duration::from_secs(20), || hops(&log, TRACE_ID).len() >= 3).await;
    let lines = hops(&log, TRACE_ID);
    assert!(logged, "hops logged: {lines:?}");
    assert_eq!(lines.len(), 3, "one line per hop: {lines:?}");
    let path: Vec<(String, String)> = lines
        .iter()
        .map(|l| {
            (
                l["component_id"].as_str().unwrap().to_owned(),
                l["output"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        path,
        [
            ("plant".to_owned(), "default".to_owned()),
            ("shaped".to_owned(), "default".to_owned()),
            ("out".to_owned(), "-".to_owned()),
        ]
    );
    let since: Vec<f64> = lines
        .iter()
        .map(|l| {
            l["since_arrival_ms"]
                .as_f64()
                .expect("a time since arrival")
        })
        .collect();
    assert!(
        since.windows(2).all(|w| w[0] < w[1]),
        "the time since arrival grows hop by hop: {since:?}"
    );
    assert!(
        lines
            .iter()
            .all(|l| l["target"] == "weir::trace" && l["device_id"] == "trace-pump-1")
    );

    // The spans: one per hop, children of the caller's span.
    let arrived = eventually(Duration::from_secs(20), || {
        spans_of(&received, TRACE_ID).len() >= 3
    })
    .await;
    let spans = spans_of(&received, TRACE_ID);
    assert!(arrived, "spans at the collector: {spans:?}");
    assert_eq!(spans.len(), 3, "{spans:?}");
    let mut names: Vec<&str> = spans.iter().filter_map(|s| s["name"].as_str()).collect();
    names.sort();
    assert_eq!(names, ["out input", "plant default", "shaped default"]);
    for span in &spans {
        assert_eq!(span["parentSpanId"], PARENT);
        let start: u128 = span["startTimeUnixNano"].as_str().unwrap().parse().unwrap();
        let end: u128 = span["endTimeUnixNano"].as_str().unwrap().parse().unwrap();
        assert!(start <= end, "{span}");
    }

    // `trace: { sample: 1.0 }`: a reading without a traceparent is traced under an id of
    // its own.
    send(sampled_http, "trace-pump-2", None).await;
    let traced = eventually(Duration::from_secs(20), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains("\"hop\"") && l.contains("trace-pump-2") && l.contains("\"out\""))
    })
    .await;
    assert!(traced, "the sampled source's reading was traced");

    // The unsampled reading went through (it is in the file) without a hop logged.
    let out_file = dir.path().join("out.ndjson");
    let written = eventually(Duration::from_secs(20), || {
        crate::support::lines(&out_file)
            .iter()
            .any(|e| e["device_id"] == "trace-pump-0")
    })
    .await;
    assert!(written, "the unsampled reading reached the file");
    let out = crate::support::lines(&out_file);
    let carried = out
        .iter()
        .find(|e| e["device_id"] == "trace-pump-0")
        .expect("the unsampled reading");
    assert_eq!(
        carried["meta"]["trace_id"], unsampled,
        "its trace id travels"
    );
    assert!(
        hops(&log, unsampled).is_empty(),
        "an unsampled reading logs nothing"
    );

    let metrics = weir.metrics().await;
    let count = metric_in(
        &metrics,
        "component_latency_seconds_count",
        &[r#"component_id="out""#],
    );
    assert!(count >= 2.0, "component_latency_seconds of out: {count}");
}

/// A `traceparent` in an MQTT 5 user property and in an AMQP header: the event's trace id,
/// sampled (its hops timed in `component_latency_seconds`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traceparent_travels_in_mqtt5_properties_and_amqp_headers() {
    use crate::support::mqtt::{Publish5, publish_v5, start_subscribed};
    use crate::support::services::{self, Broker, Lease};
    use lapin::options::{
        BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
    };
    use lapin::types::{AMQPValue, FieldTable};
    use lapin::{BasicProperties, Connection, ConnectionProperties};

    let _brokers = Lease::shared(&[Broker::Mosquitto, Broker::RabbitMq]).await;
    let prefix = format!("weir-traced-{}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "api: {{ enabled: false }}
sources:
  plant: {{ type: mqtt, url: '{mqtt}', client_id: '{prefix}', protocol: 5, topics: ['{prefix}/+'], device_id: '{prefix}/{{device_id}}', clean_session: true }}
  broker: {{ type: amqp, url: '{amqp}', queue: '{prefix}', declare: {{ durable: false }} }}
sinks:
  traced_out: {{ type: file, inputs: [plant, broker], path: '{d}/out.ndjson' }}
",
        mqtt = services::mosquitto(),
        amqp = services::rabbitmq(),
        d = dir.path().display()
    );
    let (topology, telemetry) = start_subscribed(&text, &["plant", "broker"]).await;
    let over_mqtt = "7cf92f3577b34da6a3ce929d0e0e4736";
    let over_amqp = "8cf92f3577b34da6a3ce929d0e0e4736";
    publish_v5(
        &prefix,
        vec![Publish5 {
            topic: format!("{prefix}/pump-8"),
            payload: br#"{"pressure": 3.2}"#.to_vec(),
            user_properties: vec![("traceparent".into(), format!("00-{over_mqtt}-{PARENT}-01"))],
            content_type: None,
        }],
    )
    .await;

    let connection = Connection::connect(services::rabbitmq(), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let options = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    channel
        .queue_declare(prefix.as_str().into(), options, FieldTable::default())
        .await
        .expect("the source declared its queue");
    let mut headers = FieldTable::default();
    headers.insert(
        "traceparent".into(),
        AMQPValue::LongString(format!("00-{over_amqp}-{PARENT}-01").into()),
    );
    channel
        .basic_publish(
            "".into(),
            prefix.as_str().into(),
            BasicPublishOptions::default(),
            br#"{"device_id": "pump-9", "flow": 1}"#,
            BasicProperties::default().with_headers(headers),
        )
        .await
        .unwrap()
        .await
        .unwrap();

    let out = dir.path().join("out.ndjson");
    let both = eventually(Duration::from_secs(20), || {
        crate::support::lines(&out).len() >= 2
    })
    .await;
    assert!(both, "both readings arrive");
    let events = crate::support::lines(&out);
    let trace_of = |device: &str| {
        events
            .iter()
            .find(|e| e["device_id"] == device)
            .map(|e| e["meta"]["trace_id"].clone())
    };
    assert_eq!(trace_of("pump-8"), Some(Value::from(over_mqtt)));
    assert_eq!(trace_of("pump-9"), Some(Value::from(over_amqp)));
    // Sampled: each reading's hops were timed (the source's output and the sink's input).
    let timed = crate::support::metric(
        &telemetry,
        "component_latency_seconds_count",
        &[r#"component_id="traced_out""#],
    );
    assert_eq!(timed, 2.0, "both readings were traced to the sink");
    let _ = topology.stop(Duration::from_secs(10)).await;
    let _ = channel
        .queue_delete(prefix.as_str().into(), QueueDeleteOptions::default())
        .await;
}

/// A `traceparent` a device sets as a custom property of its message (Microsoft's Python
/// SDK puts it in the MQTT property bag of `devices/{id}/messages/events/`): the device
/// gateway's event carries its trace id, and each hop logs one line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traceparent_in_a_device_gateway_property_bag_traces_the_reading() {
    use crate::support::azure_sdk::{self, connection_string, gateway_address};

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (api, host) = (free_port(), gateway_address());
    let pipeline = d.join("pipeline.yaml");
    std::fs::write(
        &pipeline,
        format!(
            "data_dir: '{dir}'
api: {{ listen: '127.0.0.1:{api}' }}
log: {{ format: json }}
registry: {{}}
sources:
  devices: {gateway}
transforms:
  shaped: {{ type: remap, inputs: [devices], set: {{ seen: 'true' }} }}
sinks:
  out: {{ type: file, inputs: [shaped], path: '{dir}/out.ndjson' }}
",
            dir = d.display(),
            gateway = azure_sdk::gateway_source(d, host),
        ),
    )
    .unwrap();
    let log = d.join("weir.log");
    let weir = Weir::start_logged(
        d,
        &pipeline,
        ([127, 0, 0, 1], api).into(),
        &[("RUST_LOG", "warn,weir::trace=info")],
        &log,
    )
    .await;
    let key = crate::device_gateway_methods::register(&weir, "trace-fan-1").await;

    let trace_id = "9cf92f3577b34da6a3ce929d0e0e4736";
    let script = d.join("traced.py");
    std::fs::write(
        &script,
        r#"
import asyncio, json, sys
from azure.iot.device.aio import IoTHubDeviceClient
from azure.iot.device import Message

async def main():
    conn, ca, traceparent = sys.argv[1], open(sys.argv[2]).read(), sys.argv[3]
    client = IoTHubDeviceClient.create_from_connection_string(
        conn, server_verification_cert=ca, connection_retry=False)
    await client.connect()
    m = Message(json.dumps({"rpm": 900}))
    m.content_type = "application/json"
    m.content_encoding = "utf-8"
    m.custom_properties["traceparent"] = traceparent
    await client.send_message(m)
    print("sent", flush=True)
    await client.shutdown()

asyncio.run(main())
"#,
    )
    .unwrap();
    let (conn, ca) = (
        connection_string(host, "trace-fan-1", &key),
        d.join("ca.pem"),
    );
    let traceparent = format!("00-{trace_id}-{PARENT}-01");
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(azure_sdk::python())
            .arg(&script)
            .arg(&conn)
            .arg(&ca)
            .arg(&traceparent)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        output.status.success() && String::from_utf8_lossy(&output.stdout).contains("sent"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // send_message returned on the PUBACK, after the sink wrote the reading.
    let out = crate::support::lines(&d.join("out.ndjson"));
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0]["meta"]["trace_id"], trace_id);
    assert_eq!(
        out[0]["meta"]["headers"]["traceparent"],
        format!("00-{trace_id}-{PARENT}-01")
    );
    let logged = eventually(Duration::from_secs(20), || hops(&log, trace_id).len() >= 3).await;
    let lines = hops(&log, trace_id);
    assert!(logged, "hops logged: {lines:?}");
    assert_eq!(lines.len(), 3, "one line per hop: {lines:?}");
    let path: Vec<(&str, &str)> = lines
        .iter()
        .map(|l| {
            (
                l["component_id"].as_str().unwrap_or_default(),
                l["output"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        path,
        [("devices", "default"), ("shaped", "default"), ("out", "-")]
    );
    assert!(
        lines.iter().all(|l| l["device_id"] == "trace-fan-1"),
        "{lines:?}"
    );
    drop(weir);
}
