//! The `device_gateway` source's options, their defaults, and the checks `validate` runs.

use std::net::SocketAddr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::provisioning::ProvisioningConfig;
use super::rate::RateLimit;
use super::x509::ClientAuth;
use crate::codecs::DecodingConfig;
use crate::config::{ByteSize, Duration, FieldProblem, Resource, ServiceUse};
use crate::registry;
use crate::sources::{SourceComponent, SourceContext};
use crate::tls::TlsConfig;
use crate::topology::ComponentTask;

/// Devices connect with an IoT hub's device protocol: MQTT 3.1.1 over TLS, SAS tokens
/// checked against the device registry.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceGatewayConfig {
    /// Address to listen on; device SDKs dial port 8883.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The server certificate and key devices verify (`cert_file`, `key_file`).
    pub tls: TlsConfig,
    /// How a payload becomes readings when the device does not name a content type
    /// (`$.ct` in the topic's property bag) weir knows.
    #[serde(default)]
    pub decoding: DecodingConfig,
    /// Largest MQTT packet a device may send; a larger one closes its connection.
    #[serde(default = "default_max_packet_size")]
    pub max_packet_size: ByteSize,
    /// The longest keep-alive a device may ask for (also used when it asks for none): a
    /// device silent for 1.5 times its keep-alive is disconnected.
    #[serde(default = "default_max_keep_alive")]
    pub max_keep_alive: Duration,
    /// How long a new connection may take to send its CONNECT.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Duration,
    /// QoS 1 publishes of one connection waiting for their commit; a device over it waits
    /// (its connection is not read).
    #[serde(default = "default_max_inflight")]
    pub max_inflight: usize,
    /// How long a QoS 1 publish waits for every sink to commit it; without a commit in
    /// time (or with a failed one) the device is disconnected unacknowledged, so it sends
    /// the publish again.
    #[serde(default = "default_ack_timeout")]
    pub ack_timeout: Duration,
    /// Serve the device provisioning service's protocol on this listener too (devices
    /// holding an enrollment group's derived key register themselves); without it,
    /// registration connections are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioning: Option<ProvisioningConfig>,
    /// Whether the TLS handshake asks devices for an X.509 client certificate, which then
    /// authenticates a CONNECT without a SAS token when its thumbprint is the device's
    /// `x509_thumbprint`.
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// The telemetry rate one device may send at; a faster device is slowed down (its
    /// connection is not read), never cut off. None: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

/// Subscriptions one connection may hold, as an IoT hub allows.
pub(super) const MAX_SUBSCRIPTIONS: usize = 5;

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8883))
}
fn default_max_packet_size() -> ByteSize {
    ByteSize::kib(256)
}
fn default_max_keep_alive() -> Duration {
    // What an IoT hub allows: 29.45 minutes.
    Duration::from_secs(1767)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_inflight() -> usize {
    100
}
fn default_ack_timeout() -> Duration {
    Duration::from_secs(30)
}

impl SourceComponent for DeviceGatewayConfig {
    fn check(&self) -> Vec<FieldProblem> {
        let mut problems = self.tls.check_server("tls");
        if let Err(message) = self.decoding.check() {
            problems.push(FieldProblem::at(["decoding"], message));
        }
        if self.max_packet_size.get() < 128 || self.max_packet_size.get() > 268_435_455 {
            problems.push(FieldProblem::at(
                ["max_packet_size"],
                "expected between 128 B and 256 MiB (MQTT's largest packet)",
            ));
        }
        if self.max_keep_alive.get().as_secs() == 0 || self.max_keep_alive.get().as_secs() > 65535 {
            problems.push(FieldProblem::at(
                ["max_keep_alive"],
                "expected between 1 s and 65535 s (MQTT's largest keep-alive)",
            ));
        }
        if self.max_inflight == 0 {
            problems.push(FieldProblem::at(["max_inflight"], "expected at least 1"));
        }
        if self.client_auth == ClientAuth::Optional && self.tls.ca_file.is_some() {
            problems.push(FieldProblem::at(
                ["tls", "ca_file"],
                "`client_auth: optional` matches certificates by thumbprint; a `ca_file` would require every device to present one",
            ));
        }
        problems.extend(self.provisioning.iter().flat_map(ProvisioningConfig::check));
        problems.extend(self.rate_limit.iter().flat_map(RateLimit::check));
        problems
    }

    fn resources(&self) -> Vec<Resource> {
        vec![Resource::TcpPort(self.listen)]
    }

    fn ack_timeout(&self) -> Option<std::time::Duration> {
        Some(self.ack_timeout.get())
    }

    fn services(&self) -> Vec<ServiceUse> {
        vec![registry::used_by("type")]
    }

    fn build(&self, cx: SourceContext) -> anyhow::Result<ComponentTask> {
        super::listener::build(self, cx)
    }
}
