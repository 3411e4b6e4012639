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
//! [`session`] hides which protocol version a session speaks; the rest is the same for
//! both: [`config`] holds the options (the user name and password through
//! `broker::credentials`, shared with the `mqtt` sink and `mqtt_publish`), [`connection`]
//! drives the broker connection and gives up on a take-over loop ([`takeover`]), [`decode`]
//! turns a publish into events, and this module runs the source's loop and acknowledges in
//! order.

mod config;
mod connection;
mod decode;
mod session;
mod takeover;

use std::sync::Arc;
use std::time::Duration as StdDuration;

use tokio::sync::{mpsc, oneshot};

pub use config::{MqttSourceConfig, MqttVersion};

use self::decode::{DeviceIdRule, events_of};
use self::session::{Ack, Client, Message, Settings};
use super::gate::DeviceGate;
use super::{SourceContext, reading};
use crate::codecs::Decoder;
use crate::event::{Delivery, DeliveryStatus, Event, EventBatch, EventMeta};
use crate::telemetry::InternalEvent;
use crate::telemetry::events::EventsReceived;

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
    let client_id = settings.client_id.clone();
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
    let poller = tokio::spawn(connection::poll(
        eventloop,
        client.clone(),
        config.clone(),
        client_id,
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
    // A take-over loop ended the connection: the source fails with its reason.
    poller.await?
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
    meta.adopt_traceparent_header();
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
