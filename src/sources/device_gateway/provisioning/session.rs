//! One registration connection: admission by the enrollment groups, then the requests of
//! the provisioning protocol until the device hangs up.

use std::collections::VecDeque;
use std::time::Duration;

use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{
    ConnAck, Connect, ConnectAuth, ConnectReturnCode, Packet, PubAck, Publish, SubAck,
    SubscribeReasonCode, UnsubAck,
};

use super::answers::{self, Outcome};
use super::topics::{self, Request};
use super::{ProvisioningConfig, registration_username};
use crate::registry::ProvisionError;
use crate::sources::device_gateway::Gateway;
use crate::sources::device_gateway::auth::{Refusal, check_client_id};
use crate::sources::device_gateway::wire::PacketStream;
use crate::telemetry::events::{DeviceRefused, TopicViolation};

/// Finished operations one connection remembers for polling (an SDK polls the one it
/// started; a few cover retries).
const OPERATIONS_KEPT: usize = 4;

/// What the device is told to wait before polling.
const POLL_AFTER_SECS: u32 = 1;

/// An admitted registration connection.
struct Registration<'a> {
    gateway: &'a Gateway,
    settings: &'a ProvisioningConfig,
    registration_id: &'a str,
    group_id: String,
    stream: &'a mut PacketStream,
    operations: VecDeque<(String, Outcome)>,
}

/// Serves the registration connection that sent `connect` (a provisioning username, see
/// [`registration_username`]) until it ends.
pub(in crate::sources::device_gateway) async fn serve(
    gateway: &Gateway,
    connect: &Connect,
    stream: &mut PacketStream,
) {
    let registration_id = connect.client_id.as_str();
    let admitted = admit(gateway, connect);
    let (settings, group_id) = match admitted {
        Ok(admitted) => admitted,
        Err(refusal) => {
            DeviceRefused {
                device_id: registration_id,
                reason: refusal.reason,
                detail: &refusal.detail,
            }
            .emit(&gateway.metrics);
            let _ = stream.queue(&Packet::ConnAck(ConnAck::new(refusal.code, false)));
            return;
        }
    };
    let accepted = ConnAck::new(ConnectReturnCode::Success, false);
    if stream.send(&Packet::ConnAck(accepted)).await.is_err() {
        return;
    }
    tracing::debug!(registration_id, group = %group_id, "registration connection admitted");
    let keep_alive = match connect.keep_alive {
        0 => gateway.max_keep_alive,
        secs => Duration::from_secs(secs.into()).min(gateway.max_keep_alive),
    };
    let mut registration = Registration {
        gateway,
        settings,
        registration_id,
        group_id,
        stream,
        operations: VecDeque::new(),
    };
    let reason = registration.run(keep_alive * 3 / 2).await;
    tracing::debug!(registration_id, reason, "registration connection ended");
}

/// The gateway's provisioning settings and the enrollment group whose derived key signed
/// the CONNECT's token, or why it is refused.
fn admit<'a>(
    gateway: &'a Gateway,
    connect: &Connect,
) -> Result<(&'a ProvisioningConfig, String), Refusal> {
    let registration_id = connect.client_id.as_str();
    check_client_id(registration_id).map_err(|detail| Refusal {
        code: ConnectReturnCode::BadClientId,
        reason: "bad_client_id",
        detail,
    })?;
    let Some(settings) = &gateway.provisioning else {
        return Err(Refusal::not_authorized(
            "provisioning_not_served",
            format!("registration `{registration_id}`: this gateway has no `provisioning`"),
        ));
    };
    let ConnectAuth::UsernamePassword { username, password } = &connect.auth else {
        return Err(Refusal::not_authorized(
            "missing_token",
            format!("registration `{registration_id}` sent no username and password"),
        ));
    };
    match registration_username(username) {
        Some((scope, id)) if scope == settings.id_scope && id == registration_id => {}
        _ => {
            return Err(Refusal::not_authorized(
                "bad_username",
                format!(
                    "registration `{registration_id}`: username `{username}` is not `{}/registrations/{registration_id}/…`",
                    settings.id_scope
                ),
            ));
        }
    }
    let token = std::str::from_utf8(password).map_err(|_| {
        Refusal::not_authorized(
            "malformed_token",
            format!("registration `{registration_id}`: the password is not UTF-8"),
        )
    })?;
    let resource = format!("{}/registrations/{registration_id}", settings.id_scope);
    let group = gateway
        .registry
        .enrollment_of(registration_id, &resource, token)
        .map_err(|e| {
            Refusal::not_authorized(e.reason(), format!("registration `{registration_id}`: {e}"))
        })?;
    Ok((settings, group.id))
}

impl Registration<'_> {
    /// Reads and answers requests until the connection must end; the reason it ended.
    async fn run(&mut self, idle_limit: Duration) -> &'static str {
        loop {
            let packet = tokio::select! {
                _ = self.gateway.shutdown.cancelled() => return "shutdown",
                read = tokio::time::timeout(idle_limit, self.stream.next()) => match read {
                    Err(_) => return "keep_alive_expired",
                    Ok(Err(e)) => return e.reason(),
                    Ok(Ok(packet)) => packet,
                },
            };
            let handled = match packet {
                Packet::Publish(publish) => self.publish(publish).await,
                Packet::Subscribe(subscribe) => {
                    if let Some(foreign) = subscribe
                        .filters
                        .iter()
                        .find(|f| !topics::may_subscribe(&f.path))
                    {
                        self.violation(&foreign.path);
                        return "topic_violation";
                    }
                    let codes = subscribe
                        .filters
                        .iter()
                        .map(|f| match f.qos {
                            QoS::AtMostOnce => SubscribeReasonCode::Success(QoS::AtMostOnce),
                            _ => SubscribeReasonCode::Success(QoS::AtLeastOnce),
                        })
                        .collect();
                    self.send(Packet::SubAck(SubAck::new(subscribe.pkid, codes)))
                        .await
                }
                Packet::Unsubscribe(unsubscribe) => {
                    self.send(Packet::UnsubAck(UnsubAck::new(unsubscribe.pkid)))
                        .await
                }
                Packet::PingReq => self.send(Packet::PingResp).await,
                Packet::Disconnect => Err("client_disconnect"),
                // Answers go out at QoS 0: nothing of ours to acknowledge.
                _ => Err("protocol_violation"),
            };
            if let Err(reason) = handled {
                return reason;
            }
        }
    }

    async fn send(&mut self, packet: Packet) -> Result<(), &'static str> {
        self.stream
            .send(&packet)
            .await
            .map_err(|_| "connection_lost")
    }

    fn violation(&self, topic: &str) {
        TopicViolation {
            device_id: self.registration_id,
            topic,
        }
        .emit(&self.gateway.metrics);
    }

    /// Answers one request; a topic the service has not, or QoS 2, ends the connection.
    async fn publish(&mut self, publish: Publish) -> Result<(), &'static str> {
        if publish.qos == QoS::ExactlyOnce {
            return Err("qos2_refused");
        }
        let topic = String::from_utf8_lossy(&publish.topic);
        let Some(request) = topics::request(&topic) else {
            self.violation(&topic);
            return Err("topic_violation");
        };
        if publish.qos == QoS::AtLeastOnce {
            self.send(Packet::PubAck(PubAck::new(publish.pkid))).await?;
        }
        let (topic, body) = match request {
            Request::Register { rid } => self.register(&rid, &publish.payload),
            Request::OperationStatus { rid, operation_id } => {
                match self.operations.iter().find(|(id, _)| *id == operation_id) {
                    Some((id, outcome)) => (
                        topics::response(200, &rid, None),
                        answers::finished(id, self.registration_id, outcome),
                    ),
                    None => (
                        topics::response(404, &rid, None),
                        answers::error(404_201, "no such registration operation"),
                    ),
                }
            }
        };
        self.send(Packet::Publish(Publish::new(topic, QoS::AtMostOnce, body)))
            .await
    }

    /// Registers the device now and answers `202 assigning`: the outcome waits for the
    /// device's poll.
    fn register(&mut self, rid: &str, payload: &[u8]) -> (String, Vec<u8>) {
        let named = serde_json::from_slice::<serde_json::Value>(payload)
            .ok()
            .and_then(|body| body.get("registrationId")?.as_str().map(str::to_owned));
        if named.as_deref() != Some(self.registration_id) {
            return (
                topics::response(400, rid, None),
                answers::error(
                    400_004,
                    "the body's registrationId is not the connection's registration id",
                ),
            );
        }
        let outcome = match self
            .gateway
            .registry
            .provision(self.registration_id, &self.group_id)
        {
            Ok(provisioned) => {
                tracing::info!(
                    registration_id = self.registration_id,
                    group = %self.group_id,
                    created = provisioned.created,
                    "device provisioned"
                );
                Outcome::assigned(&provisioned.device, &self.settings.assigned_hub)
            }
            Err(ProvisionError::GroupDisabled(_)) => Outcome::Disabled,
            Err(e) => {
                tracing::warn!(registration_id = self.registration_id, error = %e, "registration failed");
                Outcome::Failed {
                    code: 400_209,
                    message: e.to_string(),
                }
            }
        };
        self.gateway.metrics.registrations(outcome.status()).inc();
        let operation_id = new_operation_id();
        if self.operations.len() == OPERATIONS_KEPT {
            self.operations.pop_front();
        }
        let body = answers::assigning(&operation_id);
        self.operations.push_back((operation_id, outcome));
        (topics::response(202, rid, Some(POLL_AFTER_SECS)), body)
    }
}

/// A fresh operation id, unguessable and unique as the service's are (`4.` and random hex).
fn new_operation_id() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 12];
    rand::rng().fill_bytes(&mut bytes);
    format!("4.{}", hex::encode(bytes))
}
