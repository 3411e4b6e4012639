//! `mqtt`: subscribes to topics on an MQTT broker (5 or 3.1.1), acknowledging each QoS 1
//! publish only after every sink on its path has committed it.
//!
//! Acknowledgements are manual and go out in arrival order (MQTT requires PUBACKs in the
//! order publishes arrived): a queue of outcomes is worked from its head. With a persistent
//! session (`clean_session: false`, the default) the broker keeps what weir has not acked
//! across disconnects and crashes, and delivers it again. `max_inflight` bounds the
//! unacknowledged publishes; under MQTT 5 it is the receive maximum weir announces, so the
//! broker honours it, while a 3.1.1 broker uses its own setting (Mosquitto's
//! `max_inflight_messages`, 20 by default — the window that bounds throughput, since every
//! publish waits for its commit). The device id comes from the topic — a pattern such as
//! `devices/{device_id}/telemetry` or a template over `topic` — or from a field.
//!
//! [`session`] hides which protocol version a session speaks; this module is the part
//! that is the same for both.

mod session;

use std::sync::Arc;
use std::time::Duration as StdDuration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use self::session::{Ack, Client, EventLoop, Message, PollError, Polled, Settings};
use super::gate::{DeviceGate, UnknownDevices};
use super::{SourceComponent, SourceContext, reading};
use crate::codecs::{Decoder, DecodingConfig};
use crate::config::{ByteSize, Duration, FieldProblem, ServiceUse};
use crate::event::{Delivery, DeliveryStatus, DeviceId, Event, EventBatch, EventMeta};
use crate::telemetry::InternalEvent;
use crate::telemetry::events::{ComponentError, ErrorType, EventsReceived, Stage};
use crate::template::Template;
use crate::tls::TlsConfig;
use crate::topology::ComponentTask;

const DEVICE_ID_PARAM: &str = "{device_id}";

/// Subscribes to MQTT topics.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MqttSourceConfig {
    /// e.g. `mqtt://127.0.0.1:1883`, or `mqtts://broker:8883` (TLS).
    pub url: String,
    /// Topic filters, e.g. `devices/+/telemetry`.
    pub topics: Vec<String>,
    /// A topic pattern (`devices/{device_id}/telemetry`) or a template over `topic`
    /// (`{{ (topic | split('/'))[1] }}`); default: the reading's `device_id_field`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    #[serde(default = "default_device_field")]
    pub device_id_field: String,
    /// 0 (at most once) or 1 (at least once, acked after commit).
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// Default: `weir-<component id>`. Keep it stable: the persistent session is keyed by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Subscribe as `$share/<group>/<topic>`, so instances split the traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_group: Option<String>,
    /// `5` (the default) or `"3.1.1"`.
    #[serde(default)]
    pub protocol: MqttVersion,
    /// Start without the broker's stored session (drops what weir had not acked).
    #[serde(default)]
    pub clean_session: bool,
    /// MQTT 5, persistent sessions: how long the broker keeps the session, and what weir
    /// has not acknowledged, after weir disconnects. Default: for as long as it will.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_expiry: Option<Duration>,
    /// Largest packet weir takes: a message's payload with its topic and properties
    /// (default `1MiB`). MQTT 5 announces it as the maximum packet size, so the broker
    /// keeps larger messages back (Mosquitto drops them and logs it); a 3.1.1 broker sends
    /// them, and the connection breaks on each.
    #[serde(default = "default_max_packet")]
    pub max_packet: ByteSize,
    /// Publishes the broker may have unacknowledged with weir at once.
    #[serde(default = "default_inflight")]
    pub max_inflight: u16,
    #[serde(default)]
    pub decoding: DecodingConfig,
    /// Field holding the event time; default: arrival time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_time: Option<String>,
    /// Certificates for `mqtts://`: `ca_file` to trust the broker (default: the system's
    /// roots), `cert_file`/`key_file` for mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Devices the registry does not know: `accept` or `refuse` (to `<id>.errors`).
    /// Disabled devices are always refused when the pipeline has a `registry:`.
    #[serde(default, skip_serializing_if = "UnknownDevices::is_accept")]
    pub unknown_devices: UnknownDevices,
}

fn default_device_field() -> String {
    "device_id".into()
}
fn default_qos() -> u8 {
    1
}
fn default_inflight() -> u16 {
    100
}
fn default_max_packet() -> ByteSize {
    ByteSize::mib(1)
}

/// The MQTT protocol version a source speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MqttVersion {
    /// MQTT 3.1.1 (protocol level 4), for brokers without 5 (Azure IoT Hub, older ones).
    V3_1_1,
    /// MQTT 5: receive maximum, session expiry, reason codes, user properties.
    #[default]
    V5,
}

impl MqttVersion {
    const NAMES: &str = "expected `5` or `\"3.1.1\"`";
}

impl<'de> Deserialize<'de> for MqttVersion {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // YAML reads `5` as a number and `3.1.1` as text; take either spelling.
        let value = serde_json::Value::deserialize(deserializer)?;
        match &value {
            serde_json::Value::Number(n) if n.as_u64() == Some(5) => Ok(Self::V5),
            serde_json::Value::String(s) if s == "5" => Ok(Self::V5),
            serde_json::Value::String(s) if s == "3.1.1" => Ok(Self::V3_1_1),
            other => Err(serde::de::Error::custom(format!(
                "`{other}` is not an MQTT version: {}",
                Self::NAMES
            ))),
        }
    }
}

impl Serialize for MqttVersion {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::V3_1_1 => serializer.serialize_str("3.1.1"),
            Self::V5 => serializer.serialize_u8(5),
        }
    }
}

impl JsonSchema for MqttVersion {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "MqttVersion".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "MQTT protocol version: 5 or \"3.1.1\".",
            "enum": [5, "5", "3.1.1"]
        })
    }
}

/// Host, port, and whether the connection uses TLS, from an `mqtt://` or `mqtts://` URL.
pub(crate) fn broker_address(url: &str) -> Result<(String, u16, bool), String> {
    let (rest, secure) = match (url.strip_prefix("mqtt://"), url.strip_prefix("mqtts://")) {
        (Some(rest), _) => (rest, false),
        (_, Some(rest)) => (rest, true),
        _ => return Err("expected an `mqtt://host:port` or `mqtts://host:port` URL".into()),
    };
    let (host, port) = match rest.trim_end_matches('/').rsplit_once(':') {
        Some((host, port)) => (
            host,
            port.parse::<u16>()
                .map_err(|_| format!("`{port}` is not a port"))?,
        ),
        None => (rest.trim_end_matches('/'), if secure { 8883 } else { 1883 }),
    };
    if host.is_empty() {
        return Err("the URL has no host".into());
    }
    Ok((host.to_owned(), port, secure))
}

/// How the device id is found.
enum DeviceIdRule {
    /// The topic segment at this index.
    Segment(usize),
    Template(Template),
    Field(String),
}

impl MqttSourceConfig {
    /// Host, port, and whether the connection uses TLS.
    fn broker(&self) -> Result<(String, u16, bool), String> {
        broker_address(&self.url)
    }

    /// The packet size limit in bytes: at least a small packet, at most what MQTT's
    /// length field can say (256 MiB).
    fn max_packet_bytes(&self) -> Result<u32, String> {
        const MQTT_MAX: u64 = 268_435_455;
        match self.max_packet.get() {
            n if n < 128 => Err(format!(
                "{} is too small for an MQTT packet: expected at least 128B",
                self.max_packet
            )),
            n if n > MQTT_MAX => Err(format!(
                "{} is more than MQTT can carry (256MiB)",
                self.max_packet
            )),
            n => Ok(n as u32),
        }
    }

    fn device_rule(&self) -> Result<DeviceIdRule, String> {
        match &self.device_id {
            None => Ok(DeviceIdRule::Field(self.device_id_field.clone())),
            Some(text) if text.contains("{{") => {
                let template = Template::compile(text)?;
                if let Some(name) = template.variables().into_iter().find(|n| n != "topic") {
                    return Err(format!("`{name}` is not known here: the device id template can use `topic`"));
                }
                Ok(DeviceIdRule::Template(template))
            }
            Some(pattern) => pattern
                .split('/')
                .position(|segment| segment == DEVICE_ID_PARAM)
                .map(DeviceIdRule::Segment)
                .ok_or_else(|| format!("`{pattern}` is neither a topic pattern with `{DEVICE_ID_PARAM}` nor a template")),
        }
    }
}

impl SourceComponent for MqttSourceConfig {
    fn check(&self) -> Vec<FieldProblem> {
        let mut problems = Vec::new();
        match self.broker() {
            Err(message) => problems.push(FieldProblem::at(["url"], message)),
            Ok((_, _, false)) if self.tls.is_some() => {
                problems.push(FieldProblem::at(["tls"], "`tls` needs an `mqtts://` URL"));
            }
            Ok(_) => {}
        }
        if self.topics.is_empty() || self.topics.iter().any(String::is_empty) {
            problems.push(FieldProblem::at(
                ["topics"],
                "expected at least one topic filter",
            ));
        }
        if self.qos > 1 {
            problems.push(FieldProblem::at(["qos"], "expected 0 or 1"));
        }
        if self.max_inflight == 0 {
            problems.push(FieldProblem::at(["max_inflight"], "expected at least 1"));
        }
        if self.session_expiry.is_some() && self.protocol != MqttVersion::V5 {
            problems.push(FieldProblem::at(
                ["session_expiry"],
                "`session_expiry` needs MQTT 5 (`protocol: 5`); a 3.1.1 broker decides itself",
            ));
        }
        if self.session_expiry.is_some() && self.clean_session {
            problems.push(FieldProblem::at(
                ["session_expiry"],
                "a clean session is not kept: drop `session_expiry` or `clean_session`",
            ));
        }
        if let Err(message) = self.max_packet_bytes() {
            problems.push(FieldProblem::at(["max_packet"], message));
        }
        if let Err(message) = self.device_rule() {
            problems.push(FieldProblem::at(["device_id"], message));
        }
        if let Err(message) = self.decoding.check() {
            problems.push(FieldProblem::at(["decoding"], message));
        }
        problems
    }

    fn services(&self) -> Vec<ServiceUse> {
        self.unknown_devices.services()
    }

    fn build(&self, cx: SourceContext) -> anyhow::Result<ComponentTask> {
        let (host, port, secure) = self.broker().map_err(anyhow::Error::msg)?;
        let rule = self.device_rule().map_err(anyhow::Error::msg)?;
        let max_packet_bytes = self.max_packet_bytes().map_err(anyhow::Error::msg)?;
        // Certificates are read now, so a bad file fails the start (or rolls a reload back).
        let tls = match secure {
            true => Some(self.tls.clone().unwrap_or_default().client_config()?),
            false => None,
        };
        let gate = DeviceGate::new(cx.services.get(), self.unknown_devices)?;
        let settings = Settings {
            version: self.protocol,
            client_id: self
                .client_id
                .clone()
                .unwrap_or_else(|| format!("weir-{}", cx.id)),
            host,
            port,
            tls,
            clean: self.clean_session,
            session_expiry: self
                .session_expiry
                .map(|expiry| u32::try_from(expiry.get().as_secs()).unwrap_or(u32::MAX)),
            max_inflight: self.max_inflight,
            max_packet_bytes,
        };
        let config = self.clone();
        Ok(Box::pin(async move {
            run(config, settings, rule, gate, cx).await
        }))
    }
}

/// A QoS 1 publish waiting for its outcome, in arrival order. `None`: nothing to wait for
/// (it went to `<id>.errors`).
type Pending = (Ack, Option<oneshot::Receiver<DeliveryStatus>>);

async fn run(
    config: MqttSourceConfig,
    settings: Settings,
    rule: DeviceIdRule,
    gate: DeviceGate,
    cx: SourceContext,
) -> anyhow::Result<()> {
    let (client, eventloop) = session::open(settings);

    // Acks go out in arrival order: the head waits for its outcome before the next.
    let (pending_tx, pending_rx) = mpsc::unbounded_channel::<Pending>();
    let acks = tokio::spawn(acknowledge(
        pending_rx,
        client.clone(),
        cx.telemetry.pending_deliveries(),
    ));

    // The event loop is polled by its own task, so keep-alives and acks flow even while
    // the pipeline holds the source back; the broker's in-flight window (publishes not yet
    // acked) is what bounds the publishes waiting here.
    let (messages_tx, mut messages) = mpsc::channel::<Message>(1024);
    let stop_polling = tokio_util::sync::CancellationToken::new();
    let poller = tokio::spawn(poll(
        eventloop,
        client.clone(),
        config.clone(),
        cx.id.clone(),
        cx.telemetry.clone(),
        messages_tx,
        stop_polling.clone(),
    ));

    let decoder = config.decoding.decoder();
    let source = cx.id.as_arc();
    let mut batch = Vec::new();
    loop {
        let message = tokio::select! {
            _ = cx.shutdown.cancelled() => break,
            message = messages.recv() => match message {
                Some(message) => message,
                None => break,
            },
        };
        let mut next = Some(message);
        // Take what else has arrived, so publishes travel in batches.
        while let Some(message) = next {
            handle(
                message,
                &config,
                &rule,
                &decoder,
                &source,
                &cx,
                &pending_tx,
                &mut batch,
            )
            .await;
            next = match batch.len() < MAX_BATCH {
                true => messages.try_recv().ok(),
                false => None,
            };
        }
        // Disabled (and, if asked, unknown) devices go to `errors`, still acked with their message.
        let admitted = gate.screen(&cx, std::mem::take(&mut batch)).await;
        if !admitted.is_empty() {
            cx.out.send(EventBatch::new(admitted)).await;
        }
    }
    // Publishes not taken are not acked: the session redelivers them. Let the acks of what
    // was accepted go out, then leave.
    drop(messages);
    drop(pending_tx);
    let _ = tokio::time::timeout(StdDuration::from_secs(10), acks).await;
    client.disconnect().await;
    tokio::time::sleep(StdDuration::from_millis(100)).await;
    stop_polling.cancel();
    let _ = poller.await;
    Ok(())
}

/// Most publishes gathered into one batch.
const MAX_BATCH: usize = 512;

/// Sends each publish's acknowledgement once its outcome is known, in arrival order. A
/// lost publish is not acked: the persistent session delivers it again.
async fn acknowledge(
    mut pending: mpsc::UnboundedReceiver<Pending>,
    client: Client,
    waiting: prometheus_client::metrics::gauge::Gauge,
) {
    while let Some((ack, outcome)) = pending.recv().await {
        let committed = match outcome {
            Some(outcome) => {
                let committed = outcome.await == Ok(DeliveryStatus::Committed);
                waiting.dec();
                committed
            }
            None => true,
        };
        if committed && client.ack(ack).await.is_err() {
            break;
        }
    }
}

/// Drives the connection: (re)connects with backoff, subscribes, hands publishes over.
async fn poll(
    mut eventloop: EventLoop,
    client: Client,
    config: MqttSourceConfig,
    id: crate::config::ComponentId,
    telemetry: crate::telemetry::ComponentTelemetry,
    messages: mpsc::Sender<Message>,
    stop: tokio_util::sync::CancellationToken,
) {
    let connected = telemetry.connected();
    let mut backoff = StdDuration::from_millis(200);
    let report = |message: &str| {
        ComponentError {
            error_type: ErrorType::Io,
            stage: Stage::Receiving,
            message,
            count: 1,
        }
        .emit(&telemetry)
    };
    loop {
        let polled = tokio::select! {
            _ = stop.cancelled() => break,
            polled = eventloop.poll() => polled,
        };
        match polled {
            Ok(Polled::Connected { resumed }) => {
                connected.set(1);
                backoff = StdDuration::from_millis(200);
                for topic in &config.topics {
                    let filter = match &config.shared_group {
                        Some(group) => format!("$share/{group}/{topic}"),
                        None => topic.clone(),
                    };
                    if client.subscribe(filter, config.qos).await.is_err() {
                        return;
                    }
                }
                tracing::info!(component_id = %id, topics = ?config.topics, resumed, protocol = ?config.protocol, "subscribed over MQTT");
            }
            Ok(Polled::Message(message)) => {
                // Closed: the source is stopping; the publish stays unacked for redelivery.
                let _ = messages.send(message).await;
            }
            Ok(Polled::Refused(why)) => report(&format!("MQTT broker {}: {why}", config.url)),
            Ok(Polled::Nothing) => {}
            Err(PollError::Stopped) => break,
            Err(PollError::Failed(err)) => {
                connected.set(0);
                let hint = match (
                    config.protocol,
                    err.contains("protocol version") || err.contains("ProtocolVersion"),
                ) {
                    (MqttVersion::V5, true) => {
                        " (a broker without MQTT 5 needs `protocol: \"3.1.1\"`)"
                    }
                    _ => "",
                };
                report(&format!(
                    "MQTT connection to {} failed: {err}{hint}; retrying in {backoff:?}",
                    config.url
                ));
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.cancelled() => break,
                }
                backoff = (backoff * 2).min(StdDuration::from_secs(30));
            }
        }
    }
    connected.set(0);
}

#[allow(clippy::too_many_arguments)]
async fn handle(
    message: Message,
    config: &MqttSourceConfig,
    rule: &DeviceIdRule,
    decoder: &Decoder,
    source: &Arc<str>,
    cx: &SourceContext,
    pending: &mpsc::UnboundedSender<Pending>,
    batch: &mut Vec<Event>,
) {
    let Message {
        topic,
        payload,
        properties,
        ack,
    } = message;
    EventsReceived {
        count: 0,
        bytes: payload.len(),
    }
    .emit(&cx.telemetry);
    let topic = String::from_utf8_lossy(&topic).into_owned();
    let mut meta = EventMeta::received_by(Arc::clone(source));
    meta.headers = properties;
    let meta = Arc::new(EventMeta {
        topic: Some(topic),
        ..meta
    });
    let topic = meta.topic.as_deref().unwrap_or_default();
    match events_of(&payload, topic, config, rule, decoder, &meta) {
        Ok(mut events) => {
            EventsReceived {
                count: events.len(),
                bytes: 0,
            }
            .emit(&cx.telemetry);
            // At QoS 0 there is nobody to answer: the events travel without a delivery.
            if let Some(ack) = ack {
                let outcome = Delivery::attach_all(&mut events);
                cx.telemetry.pending_deliveries().inc();
                let _ = pending.send((ack, Some(outcome)));
            }
            batch.extend(events);
        }
        Err(reason) => {
            let origin = topic.to_owned();
            reading::refuse(cx, &payload, Arc::clone(&meta), &origin, reason).await;
            // Kept on `<id>.errors`: acknowledge, or the broker would send it forever.
            if let Some(ack) = ack {
                let _ = pending.send((ack, None));
            }
        }
    }
}

fn events_of(
    payload: &[u8],
    topic: &str,
    config: &MqttSourceConfig,
    rule: &DeviceIdRule,
    decoder: &Decoder,
    meta: &Arc<EventMeta>,
) -> Result<Vec<Event>, String> {
    let readings = decoder.decode(payload).map_err(|e| e.0)?;
    let from_topic: Option<DeviceId> = match rule {
        DeviceIdRule::Segment(index) => {
            let id = topic
                .split('/')
                .nth(*index)
                .filter(|s| !s.is_empty())
                .ok_or_else(|| format!("topic `{topic}` has no device id segment"))?;
            Some(id.into())
        }
        DeviceIdRule::Template(template) => {
            let id = template
                .render(&minijinja::context! { topic => topic })
                .map_err(|e| format!("device_id template failed: {e}"))?;
            Some(id.trim().into()).filter(|id: &DeviceId| !id.is_empty())
        }
        DeviceIdRule::Field(_) => None,
    };
    readings
        .into_iter()
        .enumerate()
        .map(|(n, fields)| {
            let device_id = match (&from_topic, rule) {
                (Some(id), _) => id.clone(),
                (None, DeviceIdRule::Field(field)) => reading::device_from_field(&fields, field)
                    .map_err(|e| format!("reading {n}: {e}"))?,
                (None, _) => return Err("the device id template gave an empty id".into()),
            };
            reading::event(fields, device_id, config.event_time.as_deref(), meta, n)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Result<MqttSourceConfig, serde_json::Error> {
        let json = format!(r#"{{"url": "mqtt://127.0.0.1:1883", "topics": ["t/+"]{extra}}}"#);
        serde_json::from_str(&json)
    }

    fn problems(extra: &str) -> Vec<String> {
        config(extra)
            .expect("parses")
            .check()
            .into_iter()
            .map(|p| format!("{p:?}"))
            .collect()
    }

    #[test]
    fn the_protocol_is_5_by_default_and_takes_either_spelling() {
        assert_eq!(config("").unwrap().protocol, MqttVersion::V5);
        assert_eq!(
            config(r#", "protocol": 5"#).unwrap().protocol,
            MqttVersion::V5
        );
        assert_eq!(
            config(r#", "protocol": "5""#).unwrap().protocol,
            MqttVersion::V5
        );
        assert_eq!(
            config(r#", "protocol": "3.1.1""#).unwrap().protocol,
            MqttVersion::V3_1_1
        );
        let err = config(r#", "protocol": 4"#).unwrap_err().to_string();
        assert!(err.contains("not an MQTT version"), "{err}");
    }

    #[test]
    fn session_expiry_needs_mqtt5_and_a_persistent_session() {
        assert!(problems(r#", "session_expiry": "1h""#).is_empty());
        let v3 = problems(r#", "session_expiry": "1h", "protocol": "3.1.1""#);
        assert!(v3.iter().any(|p| p.contains("needs MQTT 5")), "{v3:?}");
        let clean = problems(r#", "session_expiry": "1h", "clean_session": true"#);
        assert!(clean.iter().any(|p| p.contains("not kept")), "{clean:?}");
    }

    #[test]
    fn max_packet_fits_what_mqtt_can_carry() {
        assert!(problems(r#", "max_packet": "64KiB""#).is_empty());
        let small = problems(r#", "max_packet": "16B""#);
        assert!(small.iter().any(|p| p.contains("too small")), "{small:?}");
        let large = problems(r#", "max_packet": "1GiB""#);
        assert!(
            large.iter().any(|p| p.contains("more than MQTT")),
            "{large:?}"
        );
    }
}
