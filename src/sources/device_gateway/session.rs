//! One device's connection, from its CONNECT to its end: admission, then one loop that
//! reads the device's packets under the keep-alive, writes what goes to it, and sends
//! PUBACKs in arrival order as the readings are committed ([`Acks`]).
//!
//! One task per connection, and nothing allocated for an idle one beyond its TLS state
//! (measured by `benches/device_gateway.rs`, idle part): the loop selects over the
//! device's packets, the next PUBACK due, the requests for the device (direct methods,
//! desired changes) and its cloud-to-device messages. A slow commit holds back later
//! acknowledgements (as MQTT requires) but never the reading of pings; `max_inflight`
//! publishes waiting for their commit stop the reading, which slows the device. A publish
//! that fails or times out is never acknowledged: the connection is closed, and the
//! device sends it again when it reconnects.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{
    ConnAck, ConnectReturnCode, Packet, PubAck, Publish, SubAck, Subscribe, SubscribeReasonCode,
    UnsubAck,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::acks::Acks;
use super::connections::Connections;
use super::devicebound::{Deliveries, is_devicebound_filter};
use super::hub::{self, HubRequest};
use super::rate::DeviceRate;
use super::telemetry;
use super::tls::TlsStream;
use super::topics::{self, PublishTopic};
use super::wire::PacketStream;
use super::x509::Thumbprints;
use super::{Gateway, auth, methods, provisioning, twin};
use crate::config::OutputName;
use crate::device_sessions::{Registration, ToDevice};
use crate::event::{Delivery, EventBatch};
use crate::sources::reading;
use crate::telemetry::InternalEvent;
use crate::telemetry::events::{
    ComponentError, DeviceConnected, DeviceDisconnected, DeviceRefused, ErrorType, EventsReceived,
    Stage, TopicViolation,
};

/// How long the last packets and the TLS close_notify may take to go out when a
/// connection ends (a device that reads nothing must not hold its session forever).
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Serves one accepted TLS connection until it ends.
pub(super) async fn serve(gateway: Arc<Gateway>, tls: TlsStream, certificate: Option<Thumbprints>) {
    let mut stream = PacketStream::new(tls, gateway.max_packet_size);
    let first = tokio::time::timeout(gateway.connect_timeout, stream.next()).await;
    let Ok(Ok(Packet::Connect(connect))) = first else {
        // Not MQTT, too slow, or not a CONNECT first: nothing to answer.
        return;
    };
    if provisioning::is_registration(&connect) {
        provisioning::serve(&gateway, &connect, &mut stream).await;
        close(&mut stream).await;
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
        let refused = Packet::ConnAck(ConnAck::new(refusal.code, false));
        if stream.queue(&refused).is_ok() {
            close(&mut stream).await;
        }
        return;
    }
    let claim = gateway.connections.claim(&device_id);
    // A failed write shows as a lost connection at the first read.
    let accepted = Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, false));
    let _ = stream.send(&accepted).await;
    DeviceConnected {
        device_id: &device_id,
        connected: gateway.connections.len(),
    }
    .emit(&gateway.metrics);

    let keep_alive = match connect.keep_alive {
        0 => gateway.max_keep_alive,
        secs => Duration::from_secs(secs.into()).min(gateway.max_keep_alive),
    };
    let mut session = Session {
        gateway: &gateway,
        device_id: &device_id,
        stream,
        acks: Acks::new(gateway.ack_timeout, gateway.telemetry.pending_deliveries()),
        subscriptions: BTreeSet::new(),
        deliveries: None,
        link: None,
        rate: gateway.rates.as_ref().map(|rates| rates.of(&device_id)),
        held: None,
    };
    let reason = session.run(keep_alive * 3 / 2, &claim.replaced).await;
    let Session {
        mut stream,
        mut acks,
        deliveries,
        link,
        ..
    } = session;
    // Unreachable from now on: calls waiting for its answers end.
    drop(link);
    // A message in flight stays queued for the next connection.
    drop(deliveries);
    // Stopping, let what the pipeline took be acknowledged (within `ack_timeout`) before
    // closing; otherwise the device is gone and nothing more can reach it.
    if reason == "shutdown" {
        while acks.len() > 0 {
            let Ok(pkid) = acks.next().await else { break };
            if queue_pubacks(&mut stream, &mut acks, pkid).is_err() || stream.flush().await.is_err()
            {
                break;
            }
        }
    }
    drop(acks);
    close(&mut stream).await;
    let connections: &Connections = &gateway.connections;
    connections.release(&device_id, claim.serial);
    DeviceDisconnected {
        device_id: &device_id,
        reason,
        connected: connections.len(),
    }
    .emit(&gateway.metrics);
}

/// Sends what is queued and the TLS close_notify, within [`CLOSE_GRACE`].
async fn close(stream: &mut PacketStream) {
    let _ = tokio::time::timeout(CLOSE_GRACE, stream.close()).await;
}

/// Queues the PUBACK of `pkid` and of the publishes after it that are committed already.
fn queue_pubacks(stream: &mut PacketStream, acks: &mut Acks, pkid: u16) -> std::io::Result<()> {
    stream.queue(&Packet::PubAck(PubAck::new(pkid)))?;
    while let Some(pkid) = acks.ready() {
        stream.queue(&Packet::PubAck(PubAck::new(pkid)))?;
    }
    Ok(())
}

/// A telemetry publish waiting for the device's rate limit to let it in.
struct Held {
    publish: Publish,
    topic: String,
    properties: Vec<(String, String)>,
}

/// What woke the session up.
enum Wake {
    Read(Packet),
    Acked(u16),
    Request(ToDevice),
    Deliver(Publish),
    Admitted,
}

/// An admitted device's connection.
struct Session<'a> {
    gateway: &'a Gateway,
    device_id: &'a str,
    stream: PacketStream,
    /// QoS 1 publishes waiting for their PUBACK.
    acks: Acks,
    subscriptions: BTreeSet<String>,
    /// Cloud-to-device delivery, once the device subscribed to it.
    deliveries: Option<Deliveries>,
    /// The device's place in the `device_sessions` service, and the requests (direct
    /// methods, desired changes) coming from it: made when the device first subscribes
    /// to them, so that a device that only sends telemetry costs nothing there.
    link: Option<(Registration, mpsc::Receiver<ToDevice>)>,
    /// The device's telemetry rate limit, when the gateway has one.
    rate: Option<DeviceRate>,
    /// A publish over the rate: nothing more is read until it is let in.
    held: Option<Held>,
}

impl Session<'_> {
    /// Serves the connection until it must end; the reason it ended.
    async fn run(&mut self, idle_limit: Duration, replaced: &CancellationToken) -> &'static str {
        // Requests sent to the device do not count as the device being alive.
        let mut idle_until = tokio::time::Instant::now() + idle_limit;
        loop {
            let reading = self.held.is_none() && self.acks.len() < self.gateway.max_inflight;
            if !reading {
                // Not reading is weir's doing, not the device's silence.
                idle_until = tokio::time::Instant::now() + idle_limit;
            }
            let wake = tokio::select! {
                _ = self.gateway.shutdown.cancelled() => return "shutdown",
                _ = replaced.cancelled() => return "replaced",
                acked = self.acks.next() => match acked {
                    Ok(pkid) => Wake::Acked(pkid),
                    Err(_) => return "not_committed",
                },
                Some(request) = next_request(&mut self.link) => Wake::Request(request),
                publish = next_delivery(&mut self.deliveries) => Wake::Deliver(publish),
                () = admitted(self.rate.as_ref()), if self.held.is_some() => Wake::Admitted,
                read = tokio::time::timeout_at(idle_until, self.stream.next()), if reading => {
                    match read {
                        Err(_) => return "keep_alive_expired",
                        Ok(Err(e)) => return e.reason(),
                        Ok(Ok(packet)) => {
                            idle_until = tokio::time::Instant::now() + idle_limit;
                            Wake::Read(packet)
                        }
                    }
                }
            };
            let handled = match wake {
                Wake::Read(packet) => self.packet(packet).await,
                Wake::Acked(pkid) => match queue_pubacks(&mut self.stream, &mut self.acks, pkid) {
                    Ok(()) => self.flush().await,
                    Err(_) => Err("connection_lost"),
                },
                // A request for the device (a direct method, a desired change).
                Wake::Request(request) => self.send(to_device(request)).await,
                Wake::Deliver(publish) => self.send(Packet::Publish(publish)).await,
                Wake::Admitted => match self.held.take() {
                    Some(held) => self.telemetry(held).await,
                    None => Ok(()),
                },
            };
            if let Err(reason) = handled {
                return reason;
            }
        }
    }

    /// Handles one packet from the device.
    async fn packet(&mut self, packet: Packet) -> Result<(), &'static str> {
        match packet {
            Packet::Publish(publish) => self.publish(publish).await,
            Packet::Subscribe(subscribe) => self.subscribe(subscribe).await,
            Packet::Unsubscribe(unsubscribe) => {
                for filter in &unsubscribe.topics {
                    self.subscriptions.remove(filter);
                    for kind in hub::subscriptions(filter) {
                        if let Some((registration, _)) = &self.link {
                            registration.set(kind, false);
                        }
                    }
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
                if let Some(deliveries) = &mut self.deliveries {
                    deliveries.acknowledge(ack.pkid);
                }
                Ok(())
            }
            _ => Err("protocol_violation"),
        }
    }

    async fn send(&mut self, packet: Packet) -> Result<(), &'static str> {
        self.stream
            .send(&packet)
            .await
            .map_err(|_| "connection_lost")
    }

    async fn flush(&mut self) -> Result<(), &'static str> {
        self.stream.flush().await.map_err(|_| "connection_lost")
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
            PublishTopic::Hub => return self.hub(&topic, publish).await,
            PublishTopic::Foreign => {
                TopicViolation {
                    device_id: self.device_id,
                    topic: &topic,
                }
                .emit(&self.gateway.metrics);
                return Err("topic_violation");
            }
        };
        let held = Held {
            publish,
            topic,
            properties,
        };
        if self.rate.as_ref().is_some_and(|rate| !rate.try_admit()) {
            // Over its rate: read nothing more until it is let in (PUBACKs still go).
            self.held = Some(held);
            return Ok(());
        }
        self.telemetry(held).await
    }

    /// A telemetry publish, admitted by the rate limit, becomes events.
    async fn telemetry(&mut self, held: Held) -> Result<(), &'static str> {
        let Held {
            publish,
            topic,
            properties,
        } = held;
        let gateway = self.gateway;
        let ack = (publish.qos == QoS::AtLeastOnce).then_some(publish.pkid);
        let mid = properties
            .iter()
            .find(|(name, _)| name == "$.mid")
            .map(|(_, mid)| mid.clone());
        if let Some(mid) = &mid
            && gateway.seen.contains(self.device_id, mid)
        {
            gateway.metrics.duplicates_dropped.inc();
            if let Some(pkid) = ack {
                self.acks.push(pkid, None, None);
            }
            return Ok(());
        }
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
                    let remember = gateway.seen.remember_later(self.device_id, mid.as_deref());
                    self.acks.push(pkid, outcome, remember);
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
                    self.acks.push(pkid, None, None);
                }
            }
        }
        Ok(())
    }

    /// A request on a `$iothub/…` topic: answered (twins) or handed to its caller (a
    /// direct method's answer), then acknowledged in order; an unknown one ends the
    /// connection.
    async fn hub(&mut self, topic: &str, publish: Publish) -> Result<(), &'static str> {
        let (gateway, device_id) = (self.gateway, self.device_id);
        match hub::request(topic) {
            HubRequest::MethodAnswer { status, rid } => {
                methods::answer(gateway, device_id, status, &rid, &publish.payload);
            }
            HubRequest::TwinGet { rid } => self.send(twin::get(gateway, device_id, &rid)).await?,
            HubRequest::TwinReported { rid } => {
                let answer = twin::patch_reported(gateway, device_id, &rid, &publish.payload).await;
                self.send(answer).await?;
            }
            HubRequest::Unknown => return Err("unsupported_topic"),
        }
        if publish.qos == QoS::AtLeastOnce {
            self.acks.push(publish.pkid, None, None);
        }
        Ok(())
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
                        Arc::clone(&self.gateway.devicebound),
                        self.device_id,
                    ));
                }
                for kind in hub::subscriptions(&filter.path) {
                    let gateway = self.gateway;
                    let (registration, _) = self.link.get_or_insert_with(|| {
                        let source = std::sync::Arc::clone(&gateway.source);
                        gateway.sessions.register(self.device_id, source)
                    });
                    registration.set(kind, true);
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

/// The next request for the device, once it has a place in the `device_sessions`
/// service (never, until then).
async fn next_request(
    link: &mut Option<(Registration, mpsc::Receiver<ToDevice>)>,
) -> Option<ToDevice> {
    match link {
        Some((_, requests)) => requests.recv().await,
        None => std::future::pending().await,
    }
}

/// The packet that carries a request of the `device_sessions` service to the device.
fn to_device(request: ToDevice) -> Packet {
    match request {
        ToDevice::Method { rid, name, payload } => methods::request(&name, rid, payload),
        ToDevice::Desired { version, patch } => twin::desired(version, patch),
    }
}

/// The next cloud-to-device message to send, once the device subscribed to them (never,
/// until then).
async fn next_delivery(deliveries: &mut Option<Deliveries>) -> Publish {
    match deliveries {
        Some(deliveries) => deliveries.next().await,
        None => std::future::pending().await,
    }
}

/// Resolves when the rate limit lets the held publish in.
async fn admitted(rate: Option<&DeviceRate>) {
    match rate {
        Some(rate) => rate.ready().await,
        None => std::future::pending().await,
    }
}
