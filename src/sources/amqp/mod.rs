//! `amqp`: consumes a RabbitMQ (AMQP 0-9-1) queue, acknowledging each message only after
//! every sink on its path has committed it.
//!
//! Each delivery becomes a [`Delivery`]: its readings travel with it, and when the last of
//! them is committed (or intentionally dropped) the message is acked; if one is lost it is
//! nacked and requeued, so the broker delivers it again. A crash loses nothing the broker
//! delivered: unacked messages return to the queue. `prefetch` bounds how many messages
//! are unacknowledged at once, which is also how backpressure reaches the broker. An
//! undecodable message goes to `<id>.errors` and is rejected without requeue (so a broker
//! dead-letter exchange, if configured, keeps it) or acked, per `on_undecodable`. The
//! connection is re-established with exponential backoff after any failure.
//!
//! [`declare`] holds what the source declares before consuming: its queue, or its share
//! of a stream partitioned across instances (`partition`).

mod declare;

use std::sync::Arc;
use std::time::Duration as StdDuration;

use futures::{FutureExt, StreamExt};
use lapin::Connection;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions,
    QueueDeclareOptions,
};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::{AMQPValue, FieldTable};
use prometheus_client::metrics::gauge::Gauge;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

pub use self::declare::{Declare, Partition};
use super::gate::{DeviceGate, UnknownDevices};
use super::{SourceComponent, SourceContext, reading};
use crate::codecs::{Decoder, DecodingConfig};
use crate::config::{FieldProblem, RedactedUrl, ServiceUse};
use crate::event::{Delivery, DeliveryStatus, DeviceId, Event, EventBatch, EventMeta};
use crate::telemetry::InternalEvent;
use crate::telemetry::events::{ComponentError, ErrorType, EventsReceived, Stage};
use crate::template::Template;
use crate::tls::TlsConfig;
use crate::topology::ComponentTask;

/// Consumes an AMQP queue.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AmqpSourceConfig {
    /// e.g. `amqp://guest:guest@127.0.0.1:5672/%2f` (or `amqps://`).
    pub url: RedactedUrl,
    pub queue: String,
    /// Messages the broker may have unacknowledged with weir at once.
    #[serde(default = "default_prefetch")]
    pub prefetch: u16,
    /// Declare the queue (and bind it) before consuming.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub declare: Option<Declare>,
    /// Consume this instance's share of a stream partitioned by device id: a queue
    /// `<queue>.<instance>` bound to a consistent-hash exchange (see [`Partition`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<Partition>,
    #[serde(default)]
    pub decoding: DecodingConfig,
    /// Field holding the event time; default: arrival time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_time: Option<String>,
    /// Template for the device id; `routing_key` and `headers` are its names, e.g.
    /// `{{ (routing_key | split('.'))[1] }}`. Default: the reading's `device_id_field`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<Template>,
    #[serde(default = "default_device_field")]
    pub device_id_field: String,
    /// What happens to a message that cannot be decoded (it also goes to `<id>.errors`).
    #[serde(default)]
    pub on_undecodable: Undecodable,
    /// Certificates for `amqps://`: `ca_file` to trust the broker (default: the system's
    /// roots), `cert_file`/`key_file` (PEM, PKCS#8 key) for mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Devices the registry does not know: `accept` or `refuse` (to `<id>.errors`).
    /// Disabled devices are always refused when the pipeline has a `registry:`.
    #[serde(default, skip_serializing_if = "UnknownDevices::is_accept")]
    pub unknown_devices: UnknownDevices,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Undecodable {
    /// Reject without requeue: the broker's dead-letter exchange gets it, if there is one.
    #[default]
    Reject,
    /// Acknowledge: weir's `<id>.errors` output is the only copy.
    Ack,
}

/// Most messages gathered into one batch.
const MAX_BATCH: usize = 512;

fn default_prefetch() -> u16 {
    1000
}
fn default_device_field() -> String {
    "device_id".into()
}

impl SourceComponent for AmqpSourceConfig {
    fn check(&self) -> Vec<FieldProblem> {
        let mut problems = Vec::new();
        problems.extend(crate::broker::amqp::check_url(&self.url, self.tls.as_ref()));
        if self.queue.is_empty() {
            problems.push(FieldProblem::at(["queue"], "expected a queue name"));
        }
        if self.prefetch == 0 {
            problems.push(FieldProblem::at(["prefetch"], "expected at least 1"));
        }
        if let Some(template) = &self.device_id {
            for name in template.variables() {
                if name != "routing_key" && name != "headers" {
                    problems.push(FieldProblem::at(["device_id"], format!("`{name}` is not known here: the device id template can use `routing_key` and `headers`")));
                }
            }
        }
        if let Some(declare) = &self.declare {
            problems.extend(declare.check());
        }
        if let Some(partition) = &self.partition {
            problems.extend(partition.check());
            if self.declare.is_some() {
                problems.push(FieldProblem::at(
                    ["partition"],
                    "a partition declares its own queue and exchange: remove `declare`",
                ));
            }
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
        // Certificates are read now, so a bad file fails the start (or rolls a reload back).
        let tls = crate::broker::amqp::tls(self.tls.as_ref())?;
        let gate = DeviceGate::new(cx.services.get(), self.unknown_devices)?;
        let mut config = self.clone();
        if let Some(partition) = &self.partition {
            // The running copy names the queue it consumes: this instance's.
            config.queue = partition.queue(&self.queue, || {
                Ok(cx.instance_id.get()?.as_str().to_owned())
            })?;
        }
        Ok(Box::pin(async move { run(config, tls, gate, cx).await }))
    }
}

async fn run(
    config: AmqpSourceConfig,
    tls: OwnedTLSConfig,
    gate: DeviceGate,
    cx: SourceContext,
) -> anyhow::Result<()> {
    let connected = cx.telemetry.connected();
    let decoder = config.decoding.decoder();
    let mut backoff = StdDuration::from_millis(200);
    while !cx.shutdown.is_cancelled() {
        match consume(&config, &tls, &cx, &decoder, &gate, &mut backoff).await {
            Ok(()) => break,
            Err(err) => {
                connected.set(0);
                let message = format!(
                    "AMQP connection to {} failed: {err:#}; retrying in {backoff:?}",
                    config.url.redacted()
                );
                ComponentError {
                    error_type: ErrorType::Io,
                    stage: Stage::Receiving,
                    message: &message,
                    count: 1,
                }
                .emit(&cx.telemetry);
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = cx.shutdown.cancelled() => break,
                }
                backoff = (backoff * 2).min(StdDuration::from_secs(30));
            }
        }
    }
    connected.set(0);
    Ok(())
}

/// One connection's life: consume until shutdown (`Ok`) or a failure (`Err`).
async fn consume(
    config: &AmqpSourceConfig,
    tls: &OwnedTLSConfig,
    cx: &SourceContext,
    decoder: &Decoder,
    gate: &DeviceGate,
    backoff: &mut StdDuration,
) -> anyhow::Result<()> {
    let connection = crate::broker::amqp::connect(&config.url, tls).await?;
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(config.prefetch, BasicQosOptions::default())
        .await?;
    if let Some(declare) = &config.declare {
        declare.declare(&channel, &config.queue).await?;
    }
    if let Some(partition) = &config.partition {
        partition.declare(&channel, &config.queue).await?;
    }
    let tag = format!("weir-{}", cx.id);
    let mut consumer = channel
        .basic_consume(
            config.queue.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    cx.telemetry.connected().set(1);
    *backoff = StdDuration::from_millis(200);
    tracing::info!(component_id = %cx.id, queue = %config.queue, "consuming from AMQP");

    let source = cx.id.as_arc();
    let (acks, pending) = mpsc::unbounded_channel();
    let acknowledger = tokio::spawn(acknowledge(pending, cx.telemetry.pending_deliveries()));
    // The queue depth is asked on a channel of its own: an RPC on the consuming channel
    // would hold up the deliveries behind its reply.
    let lag_probe = LagProbe::spawn(&connection, config.queue.clone(), cx.telemetry.lag()).await?;
    let result = loop {
        tokio::select! {
            _ = cx.shutdown.cancelled() => break Ok(()),
            next = consumer.next() => match next {
                None => break Err(anyhow::anyhow!("the broker ended the consumer")),
                Some(Err(err)) => break Err(err.into()),
                Some(Ok(message)) => {
                    // Take what else has already arrived, so messages travel in batches.
                    let mut batch = Vec::new();
                    handle(message, config, cx, decoder, &source, &acks, &mut batch).await;
                    while batch.len() < MAX_BATCH {
                        match consumer.next().now_or_never() {
                            Some(Some(Ok(message))) => handle(message, config, cx, decoder, &source, &acks, &mut batch).await,
                            _ => break,
                        }
                    }
                    // Disabled (and, if asked, unknown) devices go to `errors`, acked with their message.
                    let admitted = gate.screen(cx, batch).await;
                    // Waits for room downstream: the broker stops delivering at `prefetch`.
                    if !admitted.is_empty() {
                        cx.out.send(EventBatch::new(admitted)).await;
                    }
                }
            },
        }
    };
    drop(lag_probe);
    // Messages in flight are acked as their readings are committed; wait for them (a crash
    // here would only mean redelivery).
    drop(acks);
    let _ = tokio::time::timeout(StdDuration::from_secs(30), acknowledger).await;
    let _ = channel.close(200, "weir is stopping".into()).await;
    let _ = connection.close(200, "weir is stopping".into()).await;
    result
}

async fn handle(
    message: lapin::message::Delivery,
    config: &AmqpSourceConfig,
    cx: &SourceContext,
    decoder: &Decoder,
    source: &Arc<str>,
    acks: &mpsc::UnboundedSender<PendingAck>,
    batch: &mut Vec<Event>,
) {
    EventsReceived {
        count: 0,
        bytes: message.data.len(),
    }
    .emit(&cx.telemetry);
    let mut meta = EventMeta::received_by(Arc::clone(source));
    meta.routing_key = Some(message.routing_key.to_string());
    if let Some(headers) = message.properties.headers() {
        meta.headers = headers
            .into_iter()
            .map(|(k, v)| (k.to_string(), header_text(v)))
            .collect();
        meta.adopt_traceparent_header();
    }
    let meta = Arc::new(meta);
    match events_of(&message.data, config, decoder, &meta) {
        Ok(mut events) => {
            EventsReceived {
                count: events.len(),
                bytes: 0,
            }
            .emit(&cx.telemetry);
            let outcome = Delivery::attach_all(&mut events);
            batch.extend(events);
            cx.telemetry.pending_deliveries().inc();
            let _ = acks.send((message.acker, outcome));
        }
        Err(reason) => {
            reading::refuse(cx, &message.data, meta, &config.queue, reason).await;
            let _ = match config.on_undecodable {
                Undecodable::Reject => {
                    message
                        .acker
                        .reject(BasicRejectOptions { requeue: false })
                        .await
                }
                Undecodable::Ack => message.acker.ack(BasicAckOptions::default()).await,
            };
        }
    }
}

/// Reads the queue depth every few seconds into `source_lag_messages`, on a channel of its
/// own, until dropped.
struct LagProbe(tokio::task::JoinHandle<()>);

impl LagProbe {
    const EVERY: StdDuration = StdDuration::from_secs(5);

    async fn spawn(connection: &Connection, queue: String, lag: Gauge) -> lapin::Result<Self> {
        let channel = connection.create_channel().await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        Ok(Self(tokio::spawn(async move {
            // Not at once: a broker that has just started may still be recovering the queue.
            let first = tokio::time::Instant::now() + Self::EVERY;
            let mut ticker = tokio::time::interval_at(first, Self::EVERY);
            loop {
                ticker.tick().await;
                // A failed probe ends with the channel; the consumer notices a dead
                // connection on its own and reconnects.
                match channel
                    .queue_declare(queue.as_str().into(), passive, FieldTable::default())
                    .await
                {
                    Ok(queue) => {
                        lag.set(i64::from(queue.message_count()));
                    }
                    Err(_) => break,
                }
            }
        })))
    }
}

impl Drop for LagProbe {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A message waiting for the outcome of its readings.
type PendingAck = (lapin::Acker, oneshot::Receiver<DeliveryStatus>);

/// Most committed messages covered by one acknowledgement.
const ACK_RUN: usize = 256;

/// Settles messages in delivery order: a run of committed ones with one `multiple` ack (on
/// its last message, which acks every earlier one on the channel — all of them settled by
/// then), a lost one with a nack that requeues it.
async fn acknowledge(mut pending: mpsc::UnboundedReceiver<PendingAck>, waiting: Gauge) {
    let multiple = BasicAckOptions { multiple: true };
    let mut run: Option<lapin::Acker> = None;
    let mut run_length = 0;
    while let Some((acker, outcome)) = pending.recv().await {
        let status = outcome.await;
        waiting.dec();
        if status == Ok(DeliveryStatus::Committed) {
            run = Some(acker);
            run_length += 1;
        } else {
            if let Some(last) = run.take() {
                let _ = last.ack(multiple).await;
            }
            run_length = 0;
            let _ = acker
                .nack(BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await;
        }
        if run_length >= ACK_RUN || (pending.is_empty() && run.is_some()) {
            if let Some(last) = run.take() {
                let _ = last.ack(multiple).await;
            }
            run_length = 0;
        }
    }
    if let Some(last) = run {
        let _ = last.ack(multiple).await;
    }
}

fn events_of(
    payload: &[u8],
    config: &AmqpSourceConfig,
    decoder: &Decoder,
    meta: &Arc<EventMeta>,
) -> Result<Vec<Event>, String> {
    let readings = decoder.decode(payload).map_err(|e| e.0)?;
    let from_template: Option<DeviceId> = match &config.device_id {
        Some(template) => {
            let headers: std::collections::BTreeMap<String, String> =
                meta.headers.iter().cloned().collect();
            let context = minijinja::context! { routing_key => meta.routing_key.as_deref().unwrap_or_default(), headers => headers };
            let id = template
                .render(&context)
                .map_err(|e| format!("device_id template failed: {e}"))?;
            if id.trim().is_empty() {
                return Err("the device_id template gave an empty id".into());
            }
            Some(id.trim().into())
        }
        None => None,
    };
    readings
        .into_iter()
        .enumerate()
        .map(|(n, fields)| {
            let device_id = match &from_template {
                Some(id) => id.clone(),
                None => reading::device_from_field(&fields, &config.device_id_field)
                    .map_err(|e| format!("reading {n}: {e}"))?,
            };
            reading::event(fields, device_id, config.event_time.as_deref(), meta, n)
        })
        .collect()
}

fn header_text(value: &AMQPValue) -> String {
    match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.to_string(),
        other => format!("{other:?}"),
    }
}
