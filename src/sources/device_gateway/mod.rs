//! `device_gateway`: devices written against an IoT hub's device SDKs (Microsoft's
//! `azure-iot-device` and its siblings) connect to weir unchanged, over the hub's MQTT
//! device protocol.
//!
//! # What a device sees
//!
//! MQTT 3.1.1 over TLS (default `0.0.0.0:8883`, the port the SDKs dial). The CONNECT's
//! client id is the device id, its username `{host}/{device id}/?api-version=…` and its
//! password a SAS token, checked by the device registry exactly as the `http` source's
//! `auth: sas` checks it (constant time, expiry, both keys; an unknown device is
//! registered when an enrollment group's derived key signed the token). A refused device
//! gets CONNACK 5 ("not authorized"; 2 for a client id that cannot be a device id). One
//! connection per device: a new one closes the old. A device silent for 1.5 times its
//! keep-alive is disconnected. QoS 2 publishes end the connection (a hub refuses QoS 2
//! too); subscriptions are granted at QoS 1 at most, five per connection.
//!
//! Telemetry is a PUBLISH to `devices/{id}/messages/events/{property bag}`: its readings
//! become events of that device, the URL-decoded property bag becomes `meta.headers`
//! (with `iothub-connection-device-id` and `iothub-enqueuedtime` added, as a hub adds
//! them), and `$.ct` picks the codec (JSON, MessagePack, octet-stream) over the
//! configured `decoding`. A QoS 1 publish is acknowledged (PUBACK) only once every sink
//! on its path has committed its readings: acknowledged end to end, from the device. A
//! device that publishes or subscribes outside its own topics (`devices/{its id}/…`,
//! `$iothub/…`) is disconnected and counted.
//!
//! A publish whose `$.mid` the gateway committed lately for that device is acknowledged
//! and dropped as a duplicate ([`dedupe`], bounded by `dedupe.window`).
//!
//! Cloud-to-device messages queued through the API or the `device_message` action (the
//! `devicebound` service; this gateway's queues are `data_dir/devicebound/<id>.json`) go
//! out on `devices/{id}/messages/devicebound/{property bag}` at QoS 1, one at a time,
//! once the device subscribes to them, and leave the queue on its PUBACK
//! ([`devicebound`]). A timer expires them as their time to live passes; the outcomes
//! their `ack` asks for come out on `<id>.feedback`, and every expired or
//! undeliverable message on `<id>.devicebound_dead_letters` ([`settlement`]).
//!
//! Provisioning: with `provisioning`, the same listener serves the provisioning
//! service's protocol to devices holding an enrollment group's derived key
//! ([`provisioning`]). X.509: with `client_auth: optional`, a device may authenticate
//! with a certificate whose thumbprint is its `x509_thumbprint` ([`x509`]). A
//! `rate_limit` slows a device's telemetry to its rate ([`rate`]); `$.ce` must be
//! `utf-8` or absent ([`content_encoding`]).
//!
//! Direct methods: a device subscribed to `$iothub/methods/POST/#` is reachable through
//! the `device_sessions` service (registered by its session); a call goes out on
//! `$iothub/methods/POST/{name}/?$rid=…` and the device's `$iothub/methods/res/{status}/`
//! answer goes back to the caller ([`methods`]). Twins ([`twin`]): `$iothub/twin/GET/`
//! answers the registry's properties with their `$version`s, a reported PATCH merges into
//! the registry, and each desired change the registry announces is pushed to a subscribed
//! device on `$iothub/twin/PATCH/properties/desired/?$version=n`. Any other `$iothub/…`
//! publish closes the connection ([`hub`]).
//!
//! Not served yet: CA-signed X.509 certificates, MQTT over WebSocket, modules. AMQP is out of scope.
//!
//! # How it is built
//!
//! weir's own server logic on rumqttc's `mqttbytes::v4` packet codec (no broker): the
//! [`listener`] accepts TLS connections (rustls's unbuffered API, the shared `tls`
//! options: [`tls`], so an idle connection holds no buffer), each runs one [`session`]
//! task that admits the device ([`auth`]), reads and writes its packets ([`wire`]) under
//! the keep-alive and classifies topics ([`topics`]); [`telemetry`] turns a publish into
//! events, and [`connections`] keeps one connection per device. A session's PUBACKs go
//! out in arrival order as commits come in ([`acks`]), so a slow commit holds back later
//! acknowledgements (as MQTT requires) but never the reading of pings; `max_inflight`
//! publishes waiting for their commit stop the reading, which slows the device.

mod acks;
mod auth;
mod config;
mod connections;
mod content_encoding;
mod dedupe;
mod devicebound;
mod hub;
mod listener;
mod methods;
mod provisioning;
mod rate;
mod session;
mod settlement;
mod telemetry;
mod tls;
mod topics;
mod twin;
mod wire;
mod x509;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use config::DeviceGatewayConfig;

use crate::device_sessions::DeviceSessions;
use crate::devicebound::Queues;
use crate::registry::Registry;
use crate::telemetry::{ComponentTelemetry, GatewayMetrics};
use crate::topology::channel::Outputs;

/// What every session of one gateway shares.
struct Gateway {
    registry: Arc<Registry>,
    devicebound: Arc<Queues>,
    /// Where direct methods and desired changes for its devices come from.
    sessions: Arc<DeviceSessions>,
    seen: Arc<dedupe::SeenMessages>,
    decoders: telemetry::Decoders,
    source: Arc<str>,
    out: Outputs,
    telemetry: ComponentTelemetry,
    metrics: GatewayMetrics,
    connections: connections::Connections,
    max_packet_size: usize,
    max_keep_alive: Duration,
    connect_timeout: Duration,
    max_inflight: usize,
    ack_timeout: Duration,
    provisioning: Option<provisioning::ProvisioningConfig>,
    rates: Option<Arc<rate::DeviceRates>>,
    shutdown: CancellationToken,
}
