//! The `device_gateway` source driven by real device clients: Microsoft's
//! `azure-iot-device` Python SDK (telemetry with properties, acknowledged only once the
//! file sink holds it; refusals at CONNECT), and rumqttc for what the SDK never does
//! (another device's topics, QoS 2, a second connection of one device).

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, Event, Incoming, MqttOptions, PublishOptions, QoS, TlsConfiguration, Transport,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weir::registry::{DevicePatch, DeviceSpec, Registry, Status};
use weir::telemetry::Telemetry;
use weir::topology::RunningTopology;

use crate::support::azure_sdk::{self, connection_string, gateway_address};
use crate::support::{eventually, lines, metric, pipeline};

/// A running gateway on its own loopback address, writing telemetry to `out.ndjson`.
struct Gateway {
    topology: RunningTopology,
    telemetry: Arc<Telemetry>,
    registry: Arc<Registry>,
    host: Ipv4Addr,
    ca: std::path::PathBuf,
    dir: tempfile::TempDir,
}

impl Gateway {
    fn start() -> Gateway {
        Self::start_with(
            "sinks:\n  out: { type: file, inputs: [devices], path: '{d}/out.ndjson' }\n",
        )
    }

    /// A gateway `devices` feeding `rest` (the pipeline's other sections; `{d}` is the
    /// test's directory).
    fn start_with(rest: &str) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let host = gateway_address();
        let text = format!(
            "api: {{ enabled: false }}
data_dir: '{d}'
registry: {{}}
sources:
  devices: {gateway}
{rest}",
            d = dir.path().display(),
            rest = rest.replace("{d}", &dir.path().display().to_string()),
            gateway = azure_sdk::gateway_source(dir.path(), host),
        );
        std::fs::write(dir.path().join("pipeline.yaml"), &text).unwrap();
        let telemetry = Telemetry::new();
        let topology = RunningTopology::start(&pipeline(&text), &telemetry).unwrap();
        let registry = topology.services().get::<Registry>().unwrap();
        Gateway {
            topology,
            telemetry,
            registry,
            host,
            ca: dir.path().join("ca.pem"),
            dir,
        }
    }

    /// Registers `id` with `status`; its primary key.
    fn device(&self, id: &str, status: Status) -> String {
        let device = self
            .registry
            .create(DeviceSpec {
                id: id.into(),
                fields: DevicePatch {
                    status: Some(status),
                    ..DevicePatch::default()
                },
            })
            .unwrap();
        device.primary_key.into_exposed()
    }

    fn out(&self) -> Vec<serde_json::Value> {
        lines(&self.dir.path().join("out.ndjson"))
    }

    fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        metric(&self.telemetry, name, labels)
    }

    /// Runs the SDK driver as `device` with `key`.
    async fn sdk(&self, mode: &str, device: &str, key: &str, count: usize) -> String {
        let (dir, ca) = (self.dir.path().to_path_buf(), self.ca.clone());
        let conn = connection_string(self.host, device, key);
        let mode = mode.to_owned();
        tokio::task::spawn_blocking(move || azure_sdk::run(&dir, &mode, &conn, &ca, count))
            .await
            .unwrap()
    }

    /// A rumqttc client of `device` with a token signed by `key`.
    fn mqtt(&self, device: &str, key: &str) -> (AsyncClient, rumqttc::EventLoop) {
        let host = self.host.to_string();
        let expiry = jiff::Timestamp::now().as_second() as u64 + 3600;
        let token = weir::registry::sas::sign(
            &format!("{host}/devices/{device}"),
            &weir::registry::keys::decode(key).unwrap(),
            expiry,
        );
        let mut options = MqttOptions::new(device, (host.as_str(), 8883));
        options
            .set_keep_alive(30)
            .set_max_packet_size(1 << 20, 1 << 20)
            .set_credentials(format!("{host}/{device}/?api-version=2021-04-12"), token);
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            client_tls(&self.ca),
        )));
        AsyncClient::builder(options).capacity(16).build()
    }

    /// Whether one connection ended for `reason` (within 5 s).
    async fn disconnected(&self, reason: &str) -> bool {
        let label = format!(r#"reason="{reason}""#);
        eventually(Duration::from_secs(5), || {
            self.metric("device_gateway_disconnects_total", &[&label]) == 1.0
        })
        .await
    }

    async fn stop(self) {
        self.topology.stop(Duration::from_secs(10)).await;
    }
}

fn client_tls(ca: &Path) -> Arc<rustls::ClientConfig> {
    weir::tls::TlsConfig {
        ca_file: Some(ca.to_path_buf()),
        ..Default::default()
    }
    .client_config()
    .unwrap()
}

/// Queues a QoS 1 publish of `reading` on `topic`.
async fn publish_qos1(client: &AsyncClient, topic: &'static str, reading: String) {
    client
        .publish(topic, reading.into_bytes(), PublishOptions::at_least_once())
        .await
        .unwrap();
}

/// Polls `eventloop` until `stop` says so for an incoming packet, or the connection
/// ends (`None`), within 10 s.
async fn until(
    eventloop: &mut rumqttc::EventLoop,
    mut stop: impl FnMut(&Incoming) -> bool,
) -> Option<Incoming> {
    let poll = async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(incoming)) if stop(&incoming) => return Some(incoming),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .expect("the gateway answered or closed within 10 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_telemetry_lands_in_the_sink_with_its_properties_before_it_is_acknowledged() {
    let gateway = Gateway::start();
    let key = gateway.device("pump-7", Status::Enabled);
    let said = gateway.sdk("send", "pump-7", &key, 1000).await;
    assert_eq!(said.trim(), "sent 1000", "{said}");
    // Every send returned on its PUBACK, and PUBACKs wait for the file sink's commit:
    // the file holds all of them now, without waiting.
    let out = gateway.out();
    assert_eq!(out.len(), 1000, "every acknowledged message is in the sink");
    let mut seqs: Vec<u64> = Vec::new();
    for line in &out {
        let headers = &line["meta"]["headers"];
        let seq = line["seq"].as_u64().unwrap();
        assert_eq!(line["device_id"], "pump-7");
        assert_eq!(headers["seq"], seq.to_string(), "{line}");
        assert_eq!(headers["kind"], "reading & more", "{line}");
        assert_eq!(headers["$.ct"], "application/json", "{line}");
        assert_eq!(headers["iothub-connection-device-id"], "pump-7");
        assert!(headers["iothub-enqueuedtime"].is_string(), "{line}");
        assert_eq!(line["temperature"], 20 + seq % 10);
        seqs.push(seq);
    }
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs, (0..1000).collect::<Vec<_>>());
    assert_eq!(gateway.metric("device_gateway_connects_total", &[]), 1.0);
    assert!(
        eventually(Duration::from_secs(5), || {
            gateway.metric("device_gateway_connected_devices", &[]) == 0.0
        })
        .await,
        "the SDK's disconnect is seen"
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_devices_with_a_wrong_key_disabled_or_unknown_are_refused_at_connect() {
    let gateway = Gateway::start();
    let key = gateway.device("valve-1", Status::Enabled);
    let off_key = gateway.device("valve-2", Status::Disabled);
    let other_key = weir::registry::keys::generate();

    let wrong = gateway.sdk("connect", "valve-1", &other_key, 0).await;
    assert!(wrong.starts_with("refused"), "wrong key: {wrong}");
    let disabled = gateway.sdk("connect", "valve-2", &off_key, 0).await;
    assert!(disabled.starts_with("refused"), "disabled: {disabled}");
    let unknown = gateway.sdk("connect", "valve-9", &other_key, 0).await;
    assert!(unknown.starts_with("refused"), "unknown: {unknown}");
    let right = gateway.sdk("connect", "valve-1", &key, 0).await;
    assert_eq!(right.trim(), "connected");

    let failures = |reason: &str| {
        gateway.metric(
            "device_gateway_auth_failures_total",
            &[&format!(r#"reason="{reason}""#)],
        )
    };
    assert_eq!(failures("bad_signature"), 1.0);
    assert_eq!(failures("disabled"), 1.0);
    assert_eq!(failures("unknown_device"), 1.0);
    assert_eq!(gateway.metric("device_gateway_connects_total", &[]), 1.0);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_subscribing_to_another_devices_topics_is_disconnected() {
    let gateway = Gateway::start();
    let key = gateway.device("meter-1", Status::Enabled);
    gateway.device("meter-2", Status::Enabled);
    let (client, mut eventloop) = gateway.mqtt("meter-1", &key);
    client
        .subscribe("devices/meter-1/messages/devicebound/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    let own = until(&mut eventloop, |i| matches!(i, Incoming::SubAck(_))).await;
    assert!(own.is_some(), "its own topics are granted");
    client
        .subscribe("devices/meter-2/messages/devicebound/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    let foreign = until(&mut eventloop, |i| matches!(i, Incoming::SubAck(_))).await;
    assert!(foreign.is_none(), "no SUBACK: the connection is closed");
    assert_eq!(
        gateway.metric("device_gateway_topic_violations_total", &[]),
        1.0
    );
    assert!(gateway.disconnected("topic_violation").await);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_publishes_are_refused_and_a_second_connection_replaces_the_first() {
    let gateway = Gateway::start();
    let key = gateway.device("fan-3", Status::Enabled);
    let (client, mut eventloop) = gateway.mqtt("fan-3", &key);
    let topic = "devices/fan-3/messages/events/room=b";
    client
        .publish(
            topic,
            br#"{"rpm": 1}"#.to_vec(),
            PublishOptions::at_least_once(),
        )
        .await
        .unwrap();
    let acked = until(&mut eventloop, |i| matches!(i, Incoming::PubAck(_))).await;
    assert!(acked.is_some(), "QoS 1 is acknowledged");
    assert_eq!(
        gateway.out().len(),
        1,
        "acknowledged after the sink wrote it"
    );
    assert_eq!(gateway.out()[0]["meta"]["headers"]["room"], "b");

    client
        .publish(
            topic,
            br#"{"rpm": 2}"#.to_vec(),
            PublishOptions::exactly_once(),
        )
        .await
        .unwrap();
    let answer = until(&mut eventloop, |i| {
        matches!(i, Incoming::PubRec(_) | Incoming::PubAck(_))
    })
    .await;
    assert!(answer.is_none(), "QoS 2 closes the connection: {answer:?}");
    assert!(gateway.disconnected("qos2_refused").await);
    assert_eq!(gateway.out().len(), 1, "the QoS 2 reading went nowhere");

    // One connection per device: the second closes the first.
    let (_first, mut first_loop) = gateway.mqtt("fan-3", &key);
    assert!(
        until(&mut first_loop, |i| matches!(i, Incoming::ConnAck(_)))
            .await
            .is_some()
    );
    let (_second, mut second_loop) = gateway.mqtt("fan-3", &key);
    assert!(
        until(&mut second_loop, |i| matches!(i, Incoming::ConnAck(_)))
            .await
            .is_some()
    );
    let second = tokio::spawn(async move {
        // Keep the second connection served while the first is being closed.
        let _ = tokio::time::timeout(Duration::from_secs(3), async {
            while second_loop.poll().await.is_ok() {}
        })
        .await;
    });
    assert!(
        until(&mut first_loop, |_| false).await.is_none(),
        "the first connection is closed"
    );
    assert!(gateway.disconnected("replaced").await);
    let _ = second.await;
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_lost_on_its_way_is_never_acknowledged() {
    // Hot readings go to a route output nobody reads: lost, so their delivery fails.
    let gateway = Gateway::start_with(
        "transforms:
  split: { type: route, inputs: [devices], routes: { hot: 'temperature > 50' } }
sinks:
  out: { type: file, inputs: [split._unmatched], path: '{d}/out.ndjson' }
",
    );
    let key = gateway.device("oven-1", Status::Enabled);
    let (client, mut eventloop) = gateway.mqtt("oven-1", &key);
    let publish = |temperature: u32| {
        let reading = format!(r#"{{"temperature": {temperature}}}"#);
        publish_qos1(&client, "devices/oven-1/messages/events/", reading)
    };
    publish(20).await;
    let acked = until(&mut eventloop, |i| matches!(i, Incoming::PubAck(_))).await;
    assert!(acked.is_some(), "a committed reading is acknowledged");
    publish(90).await;
    let acked = until(&mut eventloop, |i| matches!(i, Incoming::PubAck(_))).await;
    assert!(acked.is_none(), "a lost reading is not: {acked:?}");
    assert!(gateway.disconnected("not_committed").await);
    assert_eq!(gateway.out().len(), 1);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_packet_size_and_keep_alive_are_bounded() {
    let gateway = Gateway::start();
    let key = gateway.device("tank-4", Status::Enabled);
    let (client, mut eventloop) = gateway.mqtt("tank-4", &key);
    // Five subscriptions at most; QoS 2 is granted as QoS 1.
    for n in 0..6 {
        let filter = format!("devices/tank-4/messages/devicebound/{n}");
        client.subscribe(filter, QoS::ExactlyOnce).await.unwrap();
    }
    let mut codes = Vec::new();
    while codes.len() < 6 {
        let Some(Incoming::SubAck(ack)) =
            until(&mut eventloop, |i| matches!(i, Incoming::SubAck(_))).await
        else {
            panic!("the connection closed while subscribing");
        };
        codes.extend(ack.return_codes);
    }
    let granted = rumqttc::SubscribeReasonCode::Success(QoS::AtLeastOnce);
    assert_eq!(codes[..5], [granted; 5]);
    assert_eq!(codes[5], rumqttc::SubscribeReasonCode::Failure);

    // A packet over max_packet_size (256 KiB by default) closes the connection.
    client
        .publish(
            "devices/tank-4/messages/events/",
            vec![b' '; 300 * 1024],
            PublishOptions::at_least_once(),
        )
        .await
        .unwrap();
    assert!(until(&mut eventloop, |_| false).await.is_none());
    assert!(gateway.disconnected("packet_too_large").await);

    // A device that asked for a 1 s keep-alive and stays silent is gone after 1.5 s.
    let connector = tokio_rustls::TlsConnector::from(client_tls(&gateway.ca));
    let tcp = tokio::net::TcpStream::connect((gateway.host, 8883))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::from(std::net::IpAddr::from(gateway.host));
    let mut tls = connector.connect(name, tcp).await.unwrap();
    let host = gateway.host;
    let expiry = jiff::Timestamp::now().as_second() as u64 + 3600;
    let token = weir::registry::sas::sign(
        &format!("{host}/devices/tank-4"),
        &weir::registry::keys::decode(&key).unwrap(),
        expiry,
    );
    let mut connect = rumqttc::mqttbytes::v4::Connect::new("tank-4");
    connect.keep_alive = 1;
    connect.set_credentials(format!("{host}/tank-4/?api-version=2021-04-12"), token);
    let mut buf = bytes::BytesMut::new();
    rumqttc::mqttbytes::v4::Packet::Connect(connect)
        .write(&mut buf, 1 << 20)
        .unwrap();
    tls.write_all(&buf).await.unwrap();
    let started = std::time::Instant::now();
    let mut connack = [0u8; 4];
    tls.read_exact(&mut connack).await.unwrap();
    assert_eq!(connack, [0x20, 2, 0, 0], "CONNACK accepted");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut rest)).await;
    let silent_for = started.elapsed();
    assert!(closed.is_ok(), "closed within 10 s");
    assert!(
        silent_for >= Duration::from_millis(1400),
        "not before 1.5 keep-alives: {silent_for:?}"
    );
    assert!(gateway.disconnected("keep_alive_expired").await);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sdk_device_holding_a_group_derived_key_registers_itself_at_connect() {
    let gateway = Gateway::start();
    let group = gateway
        .registry
        .create_group(weir::registry::GroupSpec {
            id: "plant-3".into(),
            fields: weir::registry::GroupPatch {
                tags: Some(serde_json::from_str(r#"{"site": "plant-3"}"#).unwrap()),
                ..Default::default()
            },
        })
        .unwrap();
    let group_key = weir::registry::keys::decode(group.key.expose_str()).unwrap();
    let derived = weir::registry::keys::derive(&group_key, "sensor-9");
    assert!(gateway.registry.get("sensor-9").is_none());
    let said = gateway.sdk("send", "sensor-9", &derived, 3).await;
    assert_eq!(said.trim(), "sent 3", "{said}");
    let device = gateway.registry.get("sensor-9").expect("registered");
    assert_eq!(device.enrollment_group.as_deref(), Some("plant-3"));
    assert_eq!(device.tags["site"], "plant-3");
    assert_eq!(gateway.out().len(), 3);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_leaves_the_gateway_unchanged_keeps_its_connections() {
    let mut gateway = Gateway::start();
    let key = gateway.device("pump-9", Status::Enabled);
    let (client, mut eventloop) = gateway.mqtt("pump-9", &key);
    let publish = |n: u32| {
        publish_qos1(
            &client,
            "devices/pump-9/messages/events/",
            format!(r#"{{"n": {n}}}"#),
        )
    };
    publish(1).await;
    assert!(
        until(&mut eventloop, |i| matches!(i, Incoming::PubAck(_)))
            .await
            .is_some()
    );
    // The same gateway, one more sink.
    let d = gateway.dir.path().display().to_string();
    let text = std::fs::read_to_string(gateway.dir.path().join("pipeline.yaml")).unwrap();
    let changed =
        format!("{text}  copy: {{ type: file, inputs: [devices], path: '{d}/copy.ndjson' }}\n");
    gateway.topology.reload(pipeline(&changed)).await.unwrap();
    publish(2).await;
    let acked = until(&mut eventloop, |i| {
        matches!(i, Incoming::PubAck(_) | Incoming::ConnAck(_))
    })
    .await;
    assert!(
        matches!(acked, Some(Incoming::PubAck(_))),
        "the same connection answers: {acked:?}"
    );
    assert_eq!(gateway.metric("device_gateway_connects_total", &[]), 1.0);
    assert_eq!(gateway.metric("device_gateway_disconnects_total", &[]), 0.0);
    assert_eq!(lines(&gateway.dir.path().join("copy.ndjson")).len(), 1);
    gateway.stop().await;
}
