//! One MQTT session, whichever protocol version it speaks.
//!
//! rumqttc comes as two crates, one per protocol version (3.1.1 and 5), with the same
//! shape but distinct types. This module is the only place that knows both: it connects
//! with the options the source asked for and turns what each event loop yields into the
//! few things the source cares about — connected, a message, a refusal — so the source's
//! loop is written once.

use std::sync::Arc;

use bytes::Bytes;
use rumqttc_v5 as v5;

use super::MqttVersion;
use crate::broker::credentials::Credentials;

/// What the source asks of a session.
pub(super) struct Settings {
    pub version: MqttVersion,
    pub client_id: String,
    pub host: String,
    pub port: u16,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Start without the broker's stored session.
    pub clean: bool,
    /// MQTT 5: how long the broker keeps the session after a disconnect (seconds).
    pub session_expiry: Option<u32>,
    /// Publishes the broker may have unacknowledged with weir at once (MQTT 5 announces
    /// it as the receive maximum).
    pub max_inflight: u16,
    /// Largest packet weir accepts.
    pub max_packet_bytes: u32,
    /// The user name and password of the CONNECT, if the broker wants them.
    pub credentials: Option<Credentials>,
}

/// Requests queued towards the event loop before the caller waits.
const REQUEST_CAPACITY: usize = 4096;

/// Opens a session: the client half (subscribe, acknowledge, disconnect) and the event
/// loop, which connects on its first poll and reconnects on the polls after a failure.
pub(super) fn open(settings: Settings) -> (Client, EventLoop) {
    let Settings {
        version,
        client_id,
        host,
        port,
        tls,
        clean,
        session_expiry,
        max_inflight,
        max_packet_bytes,
        credentials,
    } = settings;
    match version {
        MqttVersion::V3_1_1 => {
            let mut options = rumqttc::MqttOptions::new(client_id, (host, port));
            options
                .set_keep_alive(30)
                .set_clean_session(clean)
                .set_inflight(max_inflight)
                .set_max_packet_size(max_packet_bytes as usize, max_packet_bytes as usize)
                .set_ack_mode(rumqttc::AckMode::Manual);
            if let Some(credentials) = &credentials {
                credentials.apply_v4(&mut options);
            }
            if let Some(tls) = tls {
                options.set_transport(rumqttc::Transport::tls_with_config(
                    rumqttc::TlsConfiguration::Rustls(tls),
                ));
            }
            let (client, eventloop) = rumqttc::AsyncClient::builder(options)
                .capacity(REQUEST_CAPACITY)
                .build();
            (Client::V4(client), EventLoop::V4(Box::new(eventloop)))
        }
        MqttVersion::V5 => {
            let mut options = v5::MqttOptions::new(client_id, (host, port));
            options
                .set_keep_alive(30)
                .set_session_mode(match clean {
                    true => v5::SessionMode::Clean,
                    false => v5::SessionMode::Persistent,
                })
                .set_receive_maximum(Some(max_inflight))
                .set_max_packet_size(Some(max_packet_bytes))
                .set_ack_mode(v5::AckMode::Manual);
            if let Some(credentials) = &credentials {
                credentials.apply_v5(&mut options);
            }
            if !clean && session_expiry.is_some() {
                options.set_session_expiry_interval(session_expiry);
            }
            if !clean {
                let store = SubscriberSession::of(&options);
                options.set_session_store(store);
            }
            if let Some(tls) = tls {
                options.set_transport(v5::Transport::tls_with_config(
                    v5::TlsConfiguration::Rustls(tls),
                ));
            }
            let (client, eventloop) = v5::AsyncClient::builder(options)
                .capacity(REQUEST_CAPACITY)
                .build();
            (Client::V5(client), EventLoop::V5(Box::new(eventloop)))
        }
    }
}

/// rumqttc's record of an MQTT 5 session's client side, for a client that only
/// subscribes: always empty, so it needs no storage.
///
/// rumqttc resumes a session the broker kept only if it can also restore the client's
/// half — the packet identifiers of the client's own unacknowledged PUBLISH, PUBREL,
/// SUBSCRIBE and UNSUBSCRIBE packets, and incoming QoS 2 flows — because new packets must
/// not reuse an identifier still in flight. Without it, rumqttc either refuses the kept
/// session (its strict default: a restarted weir would never connect) or takes the
/// broker's publishes but rejects every SUBSCRIBE (its broker-only mode: a topic added to
/// the pipeline would never be subscribed).
/// The source publishes nothing, receives at QoS 1 at most, and a broker keeps no
/// SUBSCRIBE in a session (it answers them at once), so the client half of every session
/// it resumes is exactly this empty record, whether weir stopped cleanly or crashed.
#[derive(Debug)]
struct SubscriberSession(v5::PersistedSession);

/// What a [`v5::SessionStore`] method returns (rumqttc does not export the alias).
type StoreFuture<'a, T> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<T, v5::SessionStoreError>> + Send + 'a>,
>;

impl SubscriberSession {
    fn of(options: &v5::MqttOptions) -> Self {
        Self(v5::PersistedSession {
            format_version: 1,
            client_id: options.client_id(),
            clean_start: options.clean_start(),
            session_expiry_interval: options.session_expiry_interval(),
            outgoing_inflight_upper_limit: options.get_outgoing_inflight_upper_limit(),
            ack_mode: match options.ack_mode() {
                v5::AckMode::Manual => v5::PersistedAckMode::Manual,
                _ => v5::PersistedAckMode::Automatic,
            },
            last_pkid: 0,
            last_puback: 0,
            replay: Vec::new(),
            incoming_qos2: Vec::new(),
        })
    }
}

impl v5::SessionStore for SubscriberSession {
    fn load<'a>(
        &'a self,
        _: &'a v5::SessionStoreKey,
    ) -> StoreFuture<'a, Option<v5::PersistedSession>> {
        Box::pin(std::future::ready(Ok(Some(self.0.clone()))))
    }

    fn save<'a>(
        &'a self,
        _: &'a v5::SessionStoreKey,
        _: &'a v5::PersistedSession,
    ) -> StoreFuture<'a, ()> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn clear<'a>(&'a self, _: &'a v5::SessionStoreKey) -> StoreFuture<'a, ()> {
        Box::pin(std::future::ready(Ok(())))
    }
}

/// The half of a session that sends: subscriptions, acknowledgements, the goodbye.
#[derive(Clone)]
pub(super) enum Client {
    V4(rumqttc::AsyncClient),
    V5(v5::AsyncClient),
}

/// The acknowledgement a QoS 1 publish is owed.
pub(super) enum Ack {
    V4(rumqttc::ManualAck),
    V5(v5::ManualAck),
}

/// The client's request queue is gone: the event loop stopped.
#[derive(Debug)]
pub(super) struct Closed;

impl Client {
    pub async fn subscribe(&self, filter: String, qos: u8) -> Result<(), Closed> {
        match self {
            Client::V4(client) => client
                .subscribe(filter, v4_qos(qos))
                .await
                .map_err(|_| Closed),
            Client::V5(client) => client
                .subscribe(filter, v5_qos(qos))
                .await
                .map_err(|_| Closed),
        }
    }

    pub async fn ack(&self, ack: Ack) -> Result<(), Closed> {
        match (self, ack) {
            (Client::V4(client), Ack::V4(ack)) => client.manual_ack(ack).await.map_err(|_| Closed),
            (Client::V5(client), Ack::V5(ack)) => client.manual_ack(ack).await.map_err(|_| Closed),
            // A session only hands out acks of its own version.
            _ => Err(Closed),
        }
    }

    pub async fn disconnect(&self) {
        let _ = match self {
            Client::V4(client) => client.disconnect().await.map_err(drop),
            Client::V5(client) => client.disconnect().await.map_err(drop),
        };
    }
}

fn v4_qos(qos: u8) -> rumqttc::QoS {
    match qos {
        0 => rumqttc::QoS::AtMostOnce,
        _ => rumqttc::QoS::AtLeastOnce,
    }
}

fn v5_qos(qos: u8) -> v5::QoS {
    match qos {
        0 => v5::QoS::AtMostOnce,
        _ => v5::QoS::AtLeastOnce,
    }
}

/// A publish the broker delivered.
pub(super) struct Message {
    pub topic: Bytes,
    pub payload: Bytes,
    /// MQTT 5 user properties, and the content type as `content-type`.
    pub properties: Vec<(String, String)>,
    /// What to send once the message is safe; `None` for QoS 0.
    pub ack: Option<Ack>,
}

/// What one poll of the event loop meant to the source.
pub(super) enum Polled {
    /// The broker accepted the connection (and kept the session, if `resumed`).
    Connected {
        resumed: bool,
    },
    Message(Message),
    /// The broker answered a subscription: granted, or refused (why).
    Subscribed(Result<(), String>),
    /// The broker said why it is closing the connection.
    Refused(String),
    /// Pings, acks of our own packets: nothing to do.
    Nothing,
}

/// Why polling ended.
pub(super) enum PollError {
    /// The client disconnected on purpose.
    Stopped,
    /// The connection failed; the next poll reconnects.
    Failed(Failure),
}

/// A failed connection: what the client said, and what it means.
pub(super) struct Failure {
    pub message: String,
    pub kind: FailureKind,
}

/// The failures the source treats apart from the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum FailureKind {
    /// MQTT 5: the broker said another client connected with this client id (0x8E).
    TakenOver,
    /// The broker closed the connection without a word: how a 3.1.1 broker ends a
    /// session another client took over (and how it ends others).
    ClosedByBroker,
    /// The broker refused the user name and password, or refused this user.
    Unauthorized,
    Other,
}

/// The half of a session that drives the connection. Boxed: the event loops are large and
/// the enum moves into a task.
pub(super) enum EventLoop {
    V4(Box<rumqttc::EventLoop>),
    V5(Box<v5::EventLoop>),
}

impl EventLoop {
    pub async fn poll(&mut self) -> Result<Polled, PollError> {
        match self {
            EventLoop::V4(eventloop) => match eventloop.poll().await {
                Ok(rumqttc::Event::Incoming(packet)) => Ok(v4_polled(packet)),
                Ok(rumqttc::Event::Outgoing(_)) => Ok(Polled::Nothing),
                Err(rumqttc::ConnectionError::RequestsDone) => Err(PollError::Stopped),
                Err(err) => Err(PollError::Failed(Failure {
                    kind: v4_failure(&err),
                    message: err.to_string(),
                })),
            },
            EventLoop::V5(eventloop) => match eventloop.poll().await {
                Ok(v5::Event::Incoming(packet)) => Ok(v5_polled(packet)),
                Ok(_) => Ok(Polled::Nothing),
                Err(v5::ConnectionError::RequestsDone) => Err(PollError::Stopped),
                Err(err) => Err(PollError::Failed(Failure {
                    kind: v5_failure(&err),
                    message: err.to_string(),
                })),
            },
        }
    }
}

fn v4_failure(err: &rumqttc::ConnectionError) -> FailureKind {
    use rumqttc::{ConnectReturnCode, ConnectionError, StateError};
    match err {
        ConnectionError::ConnectionRefused(
            ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized,
        ) => FailureKind::Unauthorized,
        ConnectionError::MqttState(StateError::ConnectionAborted) => FailureKind::ClosedByBroker,
        ConnectionError::MqttState(StateError::Io(io)) | ConnectionError::Io(io) => io_failure(io),
        _ => FailureKind::Other,
    }
}

fn v5_failure(err: &v5::ConnectionError) -> FailureKind {
    use v5::{ConnectReturnCode, ConnectionError, DisconnectReasonCode, StateError};
    match err {
        ConnectionError::ConnectionRefused(
            ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized,
        ) => FailureKind::Unauthorized,
        ConnectionError::MqttState(StateError::ServerDisconnect {
            reason_code: DisconnectReasonCode::SessionTakenOver,
            ..
        }) => FailureKind::TakenOver,
        ConnectionError::MqttState(StateError::ConnectionAborted) => FailureKind::ClosedByBroker,
        ConnectionError::MqttState(StateError::Io(io)) | ConnectionError::Io(io) => io_failure(io),
        _ => FailureKind::Other,
    }
}

/// A socket error that says the other end went away.
fn io_failure(err: &std::io::Error) -> FailureKind {
    use std::io::ErrorKind;
    match err.kind() {
        ErrorKind::ConnectionReset
        | ErrorKind::ConnectionAborted
        | ErrorKind::UnexpectedEof
        | ErrorKind::BrokenPipe => FailureKind::ClosedByBroker,
        _ => FailureKind::Other,
    }
}

fn v4_polled(packet: rumqttc::Incoming) -> Polled {
    use rumqttc::{Incoming, SubscribeReasonCode};
    match packet {
        Incoming::ConnAck(connack) => Polled::Connected {
            resumed: connack.session_present,
        },
        Incoming::Publish(publish) => Polled::Message(Message {
            ack: v4_ack(&publish),
            topic: publish.topic,
            payload: publish.payload,
            properties: Vec::new(),
        }),
        Incoming::SubAck(suback) => Polled::Subscribed(
            match suback
                .return_codes
                .iter()
                .any(|code| matches!(code, SubscribeReasonCode::Failure))
            {
                true => Err("the broker refused a subscription".into()),
                false => Ok(()),
            },
        ),
        _ => Polled::Nothing,
    }
}

fn v5_polled(packet: v5::Incoming) -> Polled {
    use v5::SubscribeReasonCode;
    match packet {
        v5::Incoming::ConnAck(connack) => Polled::Connected {
            resumed: connack.session_present,
        },
        v5::Incoming::Publish(publish) => {
            let ack = v5_ack(&publish);
            let properties = match publish.properties {
                Some(properties) => {
                    let mut pairs = properties.user_properties;
                    if let Some(content_type) = properties.content_type {
                        pairs.push(("content-type".into(), content_type));
                    }
                    pairs
                }
                None => Vec::new(),
            };
            Polled::Message(Message {
                topic: publish.topic,
                payload: publish.payload,
                properties,
                ack,
            })
        }
        v5::Incoming::SubAck(suback) => {
            let refused: Vec<String> = suback
                .return_codes
                .iter()
                .filter(|code| !matches!(code, SubscribeReasonCode::Success(_)))
                .map(|code| format!("{code:?}"))
                .collect();
            Polled::Subscribed(match refused.is_empty() {
                true => Ok(()),
                false => Err(format!(
                    "the broker refused a subscription: {}",
                    refused.join(", ")
                )),
            })
        }
        v5::Incoming::Disconnect(disconnect) => Polled::Refused(format!(
            "the broker is disconnecting: {:?}",
            disconnect.reason_code
        )),
        _ => Polled::Nothing,
    }
}

/// What a publish is owed: nothing at QoS 0, a PUBACK at 1, a PUBREC at 2 (weir subscribes
/// at 1 at most, but a broker's downgrade is its own business).
fn v4_ack(publish: &rumqttc::Publish) -> Option<Ack> {
    use rumqttc::{ManualAck, PubAck, PubRec, QoS};
    match publish.qos {
        QoS::AtMostOnce => None,
        QoS::AtLeastOnce => Some(Ack::V4(ManualAck::PubAck(PubAck::new(publish.pkid)))),
        QoS::ExactlyOnce => Some(Ack::V4(ManualAck::PubRec(PubRec::new(publish.pkid)))),
    }
}

fn v5_ack(publish: &v5::Publish) -> Option<Ack> {
    use v5::{ManualAck, PubAck, PubRec, QoS};
    match publish.qos {
        QoS::AtMostOnce => None,
        QoS::AtLeastOnce => Some(Ack::V5(ManualAck::PubAck(PubAck::new(publish.pkid, None)))),
        QoS::ExactlyOnce => Some(Ack::V5(ManualAck::PubRec(PubRec::new(publish.pkid, None)))),
    }
}
