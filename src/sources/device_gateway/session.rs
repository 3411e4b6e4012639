//! One device's connection, from its CONNECT to its end: admission, then a loop reading
//! its packets under the keep-alive, and acknowledgements in arrival order.
//!
//! Three tasks share a connection: this loop reads; [`wire::write_packets`] writes what
//! is queued for the device; [`acknowledge`] takes each QoS 1 publish's outcome in arrival
//! order (MQTT requires PUBACKs in that order) and queues its PUBACK once every sink has
//! committed it. A publish that fails or times out is never acknowledged: the connection
//! is closed, and the device sends it again when it reconnects.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{
    ConnAck, ConnectReturnCode, Packet, PubAck, Publish, SubAck, Subscribe, SubscribeReasonCode,
    UnsubAck,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::connections::Connections;
use super::devicebound::{Deliveries, is_devicebound_filter};
use super::rate::DeviceRate;
use super::telemetry;
use super::topics::{self, PublishTopic};
use super::wire::{self, PacketReader};
use super::x509::Thumbprints;
use super::{Gateway, auth, provisioning};
use crate::config::OutputName;
use crate::event::{Delivery, DeliveryStatus, EventBatch};
use crate::sources::reading;
use crate::telemetry::InternalEvent;
use crate::telemetry::events::{
    ComponentError, DeviceConnected, DeviceDisconnected, DeviceRefused, ErrorType, EventsReceived,
    Stage, TopicViolation,
};

/// A QoS 1 publish waiting for its PUBACK: its packet id and, unless it needs no commit
/// (it went to `<id>.errors`), the outcome of its readings.
type Pending = (u16, Option<oneshot::Receiver<DeliveryStatus>>);

/// Serves one accepted (TLS) connection until it ends.
pub(super) async fn serve<S>(gateway: Arc<Gateway>, stream: S, certificate: Option<Thumbprints>)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (read, write) = tokio::io::split(stream);
    let mut reader = PacketReader::new(read, gateway.max_packet_size);
    let (out_tx, out_rx) = mpsc::channel::<Packet>(gateway.max_inflight + 8);
    let writer = tokio::spawn(wire::write_packets(write, out_rx));

    let first = tokio::time::timeout(gateway.connect_timeout, reader.next()).await;
    let Ok(Ok(Packet::Connect(connect))) = first else {
        // Not MQTT, too slow, or not a CONNECT first: nothing to answer.
        return;
    };
    if provisioning::is_registration(&connect) {
        provisioning::serve(&gateway, &connect, &mut reader, out_tx).await;
        let _ = writer.await;
        return;
    }
    let device_id = connect.client_id.clone();
    if let Err(refusal) = auth::admit(&gateway.registry, &connect, certificate.as_ref()) {
        DeviceRefused {
            device_id: &device_id,
            reason: refusal.reason,
            detail: &refusal.detail,
        }
        .emit(&gateway.metrics);
        let _ = out_tx
            .send(Packet::ConnAck(ConnAck::new(refusal.code, false)))
            .await;
        drop(out_tx);
        let _ = writer.await;
        return;
    }
    let claim = gateway.connections.claim(&device_id);
    let _ = out_tx
        .send(Packet::ConnAck(ConnAck::new(
            ConnectReturnCode::Success,
            false,
        )))
        .await;
    DeviceConnected {
        device_id: &device_id,
        connected: gateway.connections.len(),
    }
    .emit(&gateway.metrics);

    let keep_alive = match connect.keep_alive {
        0 => gateway.max_keep_alive,
        secs => Duration::from_secs(secs.into()).min(gateway.max_keep_alive),
    };
    let (broken, stop_acks) = (CancellationToken::new(), CancellationToken::new());
    let (pending_tx, pending_rx) = mpsc::channel::<Pending>(gateway.max_inflight);
    let acks = tokio::spawn(acknowledge(
        pending_rx,
        out_tx.clone(),
        gateway.ack_timeout,
        Cut {
            broken: broken.clone(),
            stop: stop_acks.clone(),
        },
        gateway.telemetry.pending_deliveries(),
    ));
    let mut session = Session {
        gateway: &gateway,
        device_id: &device_id,
        out: out_tx,
        pending: pending_tx,
        subscriptions: BTreeSet::new(),
        deliveries: None,
        rate: gateway.rates.as_ref().map(|rates| rates.of(&device_id)),
    };
    let reason = session
        .run(&mut reader, keep_alive * 3 / 2, &claim.replaced, &broken)
        .await;
    let Session {
        out,
        pending,
        deliveries,
        ..
    } = session;
    // A message in flight stays queued for the next connection.
    drop(deliveries);
    // Stopping, let what the pipeline took be acknowledged (within `ack_timeout`) before
    // closing; otherwise the device is gone and nothing more can reach it.
    drop(pending);
    if reason != "shutdown" {
        stop_acks.cancel();
    }
    let _ = acks.await;
    drop(out);
    let _ = writer.await;
    let connections: &Connections = &gateway.connections;
    connections.release(&device_id, claim.serial);
    DeviceDisconnected {
        device_id: &device_id,
        reason,
        connected: connections.len(),
    }
    .emit(&gateway.metrics);
}

/// An admitted device's connection.
struct Session<'a> {
    gateway: &'a Gateway,
    device_id: &'a str,
    out: mpsc::Sender<Packet>,
    pending: mpsc::Sender<Pending>,
    subscriptions: BTreeSet<String>,
    /// Cloud-to-device delivery, once the device subscribed to it.
    deliveries: Option<Deliveries>,
    /// The device's telemetry rate limit, when the gateway has one.
    rate: Option<DeviceRate>,
}

impl Session<'_> {
    /// Reads and handles packets until the connection must end; the reason it ended.
    async fn run<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut PacketReader<R>,
        idle_limit: Duration,
        replaced: &CancellationToken,
        broken: &CancellationToken,
    ) -> &'static str {
        loop {
            let packet = tokio::select! {
                _ = self.gateway.shutdown.cancelled() => return "shutdown",
                _ = replaced.cancelled() => return "replaced",
                _ = broken.cancelled() => return "not_committed",
                read = tokio::time::timeout(idle_limit, reader.next()) => match read {
                    Err(_) => return "keep_alive_expired",
                    Ok(Err(e)) => return e.reason(),
                    Ok(Ok(packet)) => packet,
                },
            };
            let handled = match packet {
                Packet::Publish(publish) => self.publish(publish).await,
                Packet::Subscribe(subscribe) => self.subscribe(subscribe).await,
                Packet::Unsubscribe(unsubscribe) => {
                    for filter in &unsubscribe.topics {
                        self.subscriptions.remove(filter);
                        if is_devicebound_filter(self.device_id, filter) {
                            self.deliveries = None;
                        }
                    }
                    self.send(Packet::UnsubAck(UnsubAck::new(unsubscribe.pkid)))
                        .await
                }
                Packet::PingReq => self.send(Packet::PingResp).await,
                Packet::Disconnect => Err("client_disconnect"),
                Packet::PubAck(ack) => {
                    if let Some(deliveries) = &self.deliveries {
                        deliveries.acknowledge(ack.pkid);
                    }
                    Ok(())
                }
                _ => Err("protocol_violation"),
            };
            if let Err(reason) = handled {
                return reason;
            }
        }
    }

    async fn send(&self, packet: Packet) -> Result<(), &'static str> {
        self.out.send(packet).await.map_err(|_| "connection_lost")
    }

    /// Telemetry becomes events; QoS 2, another device's topic or a `$iothub` request
    /// (not served yet) end the connection.
    async fn publish(&mut self, publish: Publish) -> Result<(), &'static str> {
        if publish.qos == QoS::ExactlyOnce {
            return Err("qos2_refused");
        }
        let topic = String::from_utf8_lossy(&publish.topic).into_owned();
        let properties = match topics::publish_topic(self.device_id, &topic) {
            PublishTopic::Telemetry(properties) => properties,
            PublishTopic::Hub => return Err("unsupported_topic"),
            PublishTopic::Foreign => {
                TopicViolation {
                    device_id: self.device_id,
                    topic: &topic,
                }
                .emit(&self.gateway.metrics);
                return Err("topic_violation");
            }
        };
        if let Some(rate) = &self.rate {
            rate.admit().await;
        }
        let gateway = self.gateway;
        EventsReceived {
            count: 0,
            bytes: publish.payload.len(),
        }
        .emit(&gateway.telemetry);
        let meta = Arc::new(telemetry::meta(
            &gateway.source,
            self.device_id,
            &topic,
            properties,
        ));
        let ack = (publish.qos == QoS::AtLeastOnce).then_some(publish.pkid);
        match telemetry::events(&gateway.decoders, self.device_id, &publish.payload, &meta) {
            Ok(mut events) => {
                EventsReceived {
                    count: events.len(),
                    bytes: 0,
                }
                .emit(&gateway.telemetry);
                // At QoS 0 nobody waits for the commit: the events travel without a delivery.
                let outcome = ack.map(|_| Delivery::attach_all(&mut events));
                if let Some(pkid) = ack {
                    let waiting = gateway.telemetry.pending_deliveries();
                    waiting.inc();
                    if let Err(reason) = self.queue_ack(pkid, outcome).await {
                        waiting.dec();
                        return Err(reason);
                    }
                }
                gateway.out.send(EventBatch::new(events)).await;
            }
            Err(reason) => {
                let message = format!("undecodable telemetry on {topic}: {reason}");
                ComponentError {
                    error_type: ErrorType::Decode,
                    stage: Stage::Receiving,
                    message: &message,
                    count: 1,
                }
                .emit(&gateway.telemetry);
                let dead = reading::dead_letter(
                    &publish.payload,
                    Some(self.device_id.into()),
                    meta,
                    &gateway.source,
                    reason,
                );
                gateway
                    .out
                    .send_named(OutputName::ERRORS, EventBatch::new(vec![dead]))
                    .await;
                // Kept on `<id>.errors`: acknowledged, or the device would send it forever.
                if let Some(pkid) = ack {
                    self.queue_ack(pkid, None).await?;
                }
            }
        }
        Ok(())
    }

    async fn queue_ack(
        &self,
        pkid: u16,
        outcome: Option<oneshot::Receiver<DeliveryStatus>>,
    ) -> Result<(), &'static str> {
        self.pending
            .send((pkid, outcome))
            .await
            .map_err(|_| "not_committed")
    }

    /// Grants filters in the device's own topics (QoS 1 at most, as a hub does), up to
    /// five subscriptions; a filter outside them ends the connection.
    async fn subscribe(&mut self, subscribe: Subscribe) -> Result<(), &'static str> {
        if let Some(foreign) = subscribe
            .filters
            .iter()
            .find(|f| !topics::may_subscribe(self.device_id, &f.path))
        {
            TopicViolation {
                device_id: self.device_id,
                topic: &foreign.path,
            }
            .emit(&self.gateway.metrics);
            return Err("topic_violation");
        }
        let mut codes = Vec::with_capacity(subscribe.filters.len());
        for filter in subscribe.filters {
            let room = self.subscriptions.len() < super::config::MAX_SUBSCRIPTIONS;
            if room || self.subscriptions.contains(&filter.path) {
                if is_devicebound_filter(self.device_id, &filter.path) && self.deliveries.is_none()
                {
                    self.deliveries = Some(Deliveries::start(
                        std::sync::Arc::clone(&self.gateway.devicebound),
                        self.device_id,
                        self.out.clone(),
                    ));
                }
                self.subscriptions.insert(filter.path);
                let qos = match filter.qos {
                    QoS::AtMostOnce => QoS::AtMostOnce,
                    _ => QoS::AtLeastOnce,
                };
                codes.push(SubscribeReasonCode::Success(qos));
            } else {
                codes.push(SubscribeReasonCode::Failure);
            }
        }
        self.send(Packet::SubAck(SubAck::new(subscribe.pkid, codes)))
            .await
    }
}

/// How [`acknowledge`] ends early: it fires `broken` when a publish was not committed,
/// and stops when `stop` fires (the connection is gone).
struct Cut {
    broken: CancellationToken,
    stop: CancellationToken,
}

/// Queues each publish's PUBACK once its readings are committed, in arrival order. A
/// publish lost on the way, or not committed within `timeout`, breaks the connection
/// instead, so the device sends it (and what followed it) again.
async fn acknowledge(
    mut pending: mpsc::Receiver<Pending>,
    out: mpsc::Sender<Packet>,
    timeout: Duration,
    cut: Cut,
    waiting: prometheus_client::metrics::gauge::Gauge,
) {
    loop {
        let next = tokio::select! {
            _ = cut.stop.cancelled() => break,
            next = pending.recv() => next,
        };
        let Some((pkid, outcome)) = next else { break };
        let committed = match outcome {
            Some(outcome) => {
                let status = tokio::select! {
                    _ = cut.stop.cancelled() => None,
                    status = tokio::time::timeout(timeout, outcome) => Some(status),
                };
                waiting.dec();
                matches!(status, Some(Ok(Ok(DeliveryStatus::Committed))))
            }
            None => true,
        };
        if !committed {
            cut.broken.cancel();
            break;
        }
        if out.send(Packet::PubAck(PubAck::new(pkid))).await.is_err() {
            break;
        }
    }
    // What is still queued will not be acknowledged: lower the gauge for it.
    pending.close();
    while let Some((_, outcome)) = pending.recv().await {
        if outcome.is_some() {
            waiting.dec();
        }
    }
}
