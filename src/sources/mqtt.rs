//! `mqtt`: subscribes to topics on an MQTT broker (3.1.1), acknowledging each QoS 1
//! publish only after every sink on its path has committed it.
//!
//! Acknowledgements are manual and go out in arrival order (MQTT requires PUBACKs in the
//! order publishes arrived): a queue of outcomes is worked from its head. With a persistent
//! session (`clean_session: false`, the default) the broker keeps what weir has not acked
//! across disconnects and crashes, and delivers it again. `max_inflight` bounds the
//! unacknowledged publishes. The device id comes from the topic — a pattern such as
//! `devices/{device_id}/telemetry` or a template over `topic` — or from a field.

use std::sync::Arc;
use std::time::Duration as StdDuration;

use rumqttc::{
    AckMode as MqttAckMode, AsyncClient, Event as MqttEvent, Incoming, MqttOptions, QoS,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::gate::{DeviceGate, UnknownDevices};
use super::{SourceComponent, SourceContext, reading};
use crate::codecs::{Decoder, DecodingConfig};
use crate::config::FieldProblem;
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
    /// Start without the broker's stored session (drops what weir had not acked).
    #[serde(default)]
    pub clean_session: bool,
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
        if let Err(message) = self.device_rule() {
            problems.push(FieldProblem::at(["device_id"], message));
        }
        if let Err(message) = self.decoding.check() {
            problems.push(FieldProblem::at(["decoding"], message));
        }
        problems
    }

    fn registry_option(&self) -> Option<&'static str> {
        (!self.unknown_devices.is_accept()).then_some("unknown_devices")
    }

    fn build(&self, cx: SourceContext) -> anyhow::Result<ComponentTask> {
        let (host, port, secure) = self.broker().map_err(anyhow::Error::msg)?;
        let rule = self.device_rule().map_err(anyhow::Error::msg)?;
        // Certificates are read now, so a bad file fails the start (or rolls a reload back).
        let tls = match secure {
            true => Some(self.tls.clone().unwrap_or_default().client_config()?),
            false => None,
        };
        let gate = DeviceGate::new(cx.registry.clone(), self.unknown_devices)?;
        let config = self.clone();
        Ok(Box::pin(async move {
            run(config, host, port, tls, rule, gate, cx).await
        }))
    }
}

async fn run(
    config: MqttSourceConfig,
    host: String,
    port: u16,
    tls: Option<Arc<rustls::ClientConfig>>,
    rule: DeviceIdRule,
    gate: DeviceGate,
    cx: SourceContext,
) -> anyhow::Result<()> {
    let client_id = config
        .client_id
        .clone()
        .unwrap_or_else(|| format!("weir-{}", cx.id));
    let mut options = MqttOptions::new(client_id, (host, port));
    options
        .set_keep_alive(30)
        .set_clean_session(config.clean_session)
        .set_inflight(config.max_inflight)
        .set_ack_mode(MqttAckMode::Manual);
    if let Some(tls) = tls {
        options.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(tls),
        ));
    }
    let (client, eventloop) = AsyncClient::builder(options).capacity(1024).build();
    let qos = if config.qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };

    // Acks go out in arrival order: the head waits for its outcome before the next.
    let (pending_tx, mut pending_rx) =
        mpsc::unbounded_channel::<(rumqttc::Publish, Option<oneshot::Receiver<DeliveryStatus>>)>();
    let acker = client.clone();
    let pending = cx.telemetry.pending_deliveries();
    let acks = tokio::spawn(async move {
        while let Some((publish, outcome)) = pending_rx.recv().await {
            let committed = match outcome {
                Some(outcome) => {
                    let committed = outcome.await == Ok(DeliveryStatus::Committed);
                    pending.dec();
                    committed
                }
                None => true,
            };
            if committed && acker.ack(&publish).await.is_err() {
                break;
            }
            // A lost reading is not acked: the persistent session redelivers it.
        }
    });

    // The event loop is polled by its own task, so keep-alives and acks flow even while
    // the pipeline holds the source back; the broker's in-flight window (publishes not yet
    // acked) is what bounds the publishes waiting here.
    let (publishes_tx, mut publishes) = mpsc::channel::<rumqttc::Publish>(1024);
    let stop_polling = tokio_util::sync::CancellationToken::new();
    let poller = tokio::spawn(poll(
        eventloop,
        client.clone(),
        config.clone(),
        qos,
        cx.id.clone(),
        cx.telemetry.clone(),
        publishes_tx,
        stop_polling.clone(),
    ));

    let decoder = config.decoding.decoder();
    let source = cx.id.as_arc();
    let mut batch = Vec::new();
    loop {
        let publish = tokio::select! {
            _ = cx.shutdown.cancelled() => break,
            publish = publishes.recv() => match publish {
                Some(publish) => publish,
                None => break,
            },
        };
        handle(
            publish,
            &config,
            &rule,
            &decoder,
            &source,
            &cx,
            &pending_tx,
            &mut batch,
        )
        .await;
        // Take what else has arrived, so publishes travel in batches.
        while batch.len() < MAX_BATCH {
            match publishes.try_recv() {
                Ok(publish) => {
                    handle(
                        publish,
                        &config,
                        &rule,
                        &decoder,
                        &source,
                        &cx,
                        &pending_tx,
                        &mut batch,
                    )
                    .await
                }
                Err(_) => break,
            }
        }
        // Disabled (and, if asked, unknown) devices go to `errors`, still acked with their message.
        let admitted = gate.screen(&cx, std::mem::take(&mut batch)).await;
        if !admitted.is_empty() {
            cx.out.send(EventBatch::new(admitted)).await;
        }
    }
    // Publishes not taken are not acked: the session redelivers them. Let the acks of what
    // was accepted go out, then leave.
    drop(publishes);
    drop(pending_tx);
    let _ = tokio::time::timeout(StdDuration::from_secs(10), acks).await;
    let _ = client.disconnect().await;
    tokio::time::sleep(StdDuration::from_millis(100)).await;
    stop_polling.cancel();
    let _ = poller.await;
    Ok(())
}

/// Most publishes gathered into one batch.
const MAX_BATCH: usize = 512;

/// Drives the connection: (re)connects with backoff, subscribes, hands publishes over.
#[allow(clippy::too_many_arguments)]
async fn poll(
    mut eventloop: rumqttc::EventLoop,
    client: AsyncClient,
    config: MqttSourceConfig,
    qos: QoS,
    id: crate::config::ComponentId,
    telemetry: crate::telemetry::ComponentTelemetry,
    publishes: mpsc::Sender<rumqttc::Publish>,
    stop: tokio_util::sync::CancellationToken,
) {
    let connected = telemetry.connected();
    let mut backoff = StdDuration::from_millis(200);
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => break,
            event = eventloop.poll() => event,
        };
        match event {
            Ok(MqttEvent::Incoming(Incoming::ConnAck(_))) => {
                connected.set(1);
                backoff = StdDuration::from_millis(200);
                for topic in &config.topics {
                    let filter = match &config.shared_group {
                        Some(group) => format!("$share/{group}/{topic}"),
                        None => topic.clone(),
                    };
                    if client.subscribe(filter, qos).await.is_err() {
                        return;
                    }
                }
                tracing::info!(component_id = %id, topics = ?config.topics, "subscribed over MQTT");
            }
            Ok(MqttEvent::Incoming(Incoming::Publish(publish))) => {
                // Closed: the source is stopping; the publish stays unacked for redelivery.
                let _ = publishes.send(publish).await;
            }
            Ok(_) => {}
            // The client disconnected on purpose: the source is stopping.
            Err(rumqttc::ConnectionError::RequestsDone) => break,
            Err(err) => {
                connected.set(0);
                let message = format!(
                    "MQTT connection to {} failed: {err}; retrying in {backoff:?}",
                    config.url
                );
                ComponentError {
                    error_type: ErrorType::Io,
                    stage: Stage::Receiving,
                    message: &message,
                    count: 1,
                }
                .emit(&telemetry);
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
    publish: rumqttc::Publish,
    config: &MqttSourceConfig,
    rule: &DeviceIdRule,
    decoder: &Decoder,
    source: &Arc<str>,
    cx: &SourceContext,
    pending: &mpsc::UnboundedSender<(rumqttc::Publish, Option<oneshot::Receiver<DeliveryStatus>>)>,
    batch: &mut Vec<Event>,
) {
    EventsReceived {
        count: 0,
        bytes: publish.payload.len(),
    }
    .emit(&cx.telemetry);
    let topic = String::from_utf8_lossy(&publish.topic).into_owned();
    let mut meta = EventMeta::received_by(Arc::clone(source));
    meta.topic = Some(topic.clone());
    let meta = Arc::new(meta);
    match events_of(&publish.payload, &topic, config, rule, decoder, &meta) {
        Ok(mut events) => {
            EventsReceived {
                count: events.len(),
                bytes: 0,
            }
            .emit(&cx.telemetry);
            let outcome = Delivery::attach_all(&mut events);
            batch.extend(events);
            cx.telemetry.pending_deliveries().inc();
            let _ = pending.send((publish, Some(outcome)));
        }
        Err(reason) => {
            reading::refuse(cx, &publish.payload, meta, &topic, reason).await;
            // Kept on `<id>.errors`: acknowledge, or the broker would send it forever.
            let _ = pending.send((publish, None));
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
