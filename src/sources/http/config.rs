//! The `http` source's options, their defaults, and the checks `validate` runs on them.

use std::net::SocketAddr;
use std::num::NonZeroU32;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::limits::Limits;
use crate::codecs::DecodingConfig;
use crate::config::{ByteSize, Duration, FieldProblem, Resource, ServiceUse};
use crate::event::DeviceId;
use crate::registry;
use crate::sources::gate::UnknownDevices;
use crate::sources::{SourceComponent, SourceContext};
use crate::tls::TlsConfig;
use crate::topology::ComponentTask;

const DEVICE_ID_PARAM: &str = "{device_id}";

/// Request headers that carry credentials: `headers` may not copy them into events.
const CREDENTIAL_HEADERS: &[&str] = &["authorization", "proxy-authorization", "cookie"];

/// Receives readings over HTTP.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpSourceConfig {
    /// Address to listen on, e.g. `0.0.0.0:8080`.
    pub listen: SocketAddr,
    /// Request path; `{device_id}` in it names the device.
    #[serde(default = "default_path")]
    pub path: String,
    /// Field of each reading that holds the device id, when the path has no `{device_id}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id_field: Option<String>,
    #[serde(default)]
    pub decoding: DecodingConfig,
    /// Field holding the event time (RFC 3339 or epoch s/ms/µs); default: arrival time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_time: Option<String>,
    /// Largest accepted body; larger ones get 413.
    #[serde(default = "default_max_body")]
    pub max_body: ByteSize,
    /// How long a request may wait for room in the pipeline before it gets 503.
    #[serde(default = "default_queue_timeout")]
    pub queue_timeout: Duration,
    /// When to answer 2xx: after every sink on the path committed the readings
    /// (`on_commit`, the default), or as soon as they entered the pipeline (`on_receive`).
    #[serde(default)]
    pub ack: AckMode,
    /// With `ack: on_commit`, how long a request waits for the commit before it gets 503.
    #[serde(default = "default_ack_timeout")]
    pub ack_timeout: Duration,
    /// Serve HTTPS with these certificates (with `ca_file`, clients must present a
    /// certificate signed by it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Per-device token bucket on readings: over it, 429 with `Retry-After`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Request headers copied into `meta.headers` (case-insensitive names).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<String>,
    /// `sas`: every request carries `Authorization: SharedAccessSignature sr=…&sig=…&se=…`
    /// signed with a key of the device in the path (needs `registry:` and `{device_id}` in
    /// `path`). `none`: no token; the registry (if any) still refuses disabled devices.
    #[serde(default)]
    pub auth: HttpAuth,
    /// With `auth: none`, devices the registry does not know: `accept` or `refuse` (401).
    #[serde(default, skip_serializing_if = "UnknownDevices::is_accept")]
    pub unknown_devices: UnknownDevices,
    /// Bounds on connections, requests in flight, client time and pending bytes.
    #[serde(default)]
    pub limits: Limits,
    /// Also take telemetry from IoT hub device SDKs over their HTTPS transport:
    /// `POST /devices/{device_id}/messages/events`, checked by the same `auth`, properties
    /// from `iothub-app-*` (and system) headers into `meta.headers`, answered 204.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub iothub_transport: bool,
}

/// How the `http` source authenticates devices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HttpAuth {
    #[default]
    None,
    /// Shared access signatures checked against the device's keys in the registry.
    Sas,
}

fn default_path() -> String {
    "/v1/devices/{device_id}/messages".into()
}
fn default_max_body() -> ByteSize {
    ByteSize::mib(1)
}
fn default_queue_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_ack_timeout() -> Duration {
    Duration::from_secs(30)
}

/// A token bucket per device.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Readings per second a device may send, on average.
    pub per_second: u32,
    /// Readings a device may send at once (default: one second's worth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

impl RateLimit {
    pub(super) fn limiter(&self) -> Option<DefaultKeyedRateLimiter<DeviceId>> {
        let rate = NonZeroU32::new(self.per_second)?;
        let burst = NonZeroU32::new(self.burst.unwrap_or(self.per_second))?;
        Some(RateLimiter::keyed(
            Quota::per_second(rate).allow_burst(burst),
        ))
    }
}

/// When a source acknowledges what it received.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AckMode {
    /// Once every sink downstream has committed it (or it was dropped on purpose).
    #[default]
    OnCommit,
    /// As soon as it entered the pipeline.
    OnReceive,
}

impl SourceComponent for HttpSourceConfig {
    fn check(&self) -> Vec<FieldProblem> {
        let mut problems = Vec::new();
        if !self.path.starts_with('/') {
            problems.push(FieldProblem::at(
                ["path"],
                "expected a path starting with `/`",
            ));
        }
        let params = self.path.matches('{').count();
        let has_device = self.path.contains(DEVICE_ID_PARAM);
        if params > usize::from(has_device) {
            problems.push(FieldProblem::at(
                ["path"],
                "the only placeholder a path may hold is `{device_id}`",
            ));
        }
        match (has_device, &self.device_id_field) {
            (false, None) => problems.push(FieldProblem::at(
                ["path"],
                "the device is unknown: put `{device_id}` in `path` or set `device_id_field`",
            )),
            (true, Some(_)) => problems.push(FieldProblem::at(
                ["device_id_field"],
                "`path` already names the device with `{device_id}`; remove one of them",
            )),
            _ => {}
        }
        if let Err(message) = self.decoding.check() {
            problems.push(FieldProblem::at(["decoding"], message));
        }
        if let Some(tls) = &self.tls {
            problems.extend(tls.check_server("tls"));
        }
        if self.auth == HttpAuth::Sas && !has_device {
            problems.push(FieldProblem::at(
                ["auth"],
                "`auth: sas` checks the token against the device in the path: put `{device_id}` in `path`",
            ));
        }
        if self.auth == HttpAuth::Sas && !self.unknown_devices.is_accept() {
            problems.push(FieldProblem::at(
                ["unknown_devices"],
                "with `auth: sas` unknown devices are always refused; remove `unknown_devices`",
            ));
        }
        for name in &self.headers {
            if CREDENTIAL_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                problems.push(FieldProblem::at(
                    ["headers"],
                    format!("`{name}` holds a credential: copied into `meta.headers`, it would travel with every event (sinks, dead letters, tap)"),
                ));
            }
        }
        if self.iothub_transport && self.path == super::iothub::PATH {
            problems.push(FieldProblem::at(
                ["path"],
                "`iothub_transport` serves this path already: pick another `path`",
            ));
        }
        problems.extend(self.limits.check(self.max_body));
        if let Some(limit) = &self.rate_limit
            && (limit.per_second == 0 || limit.burst == Some(0))
        {
            problems.push(FieldProblem::at(
                ["rate_limit"],
                "expected `per_second` and `burst` above zero",
            ));
        }
        problems
    }

    fn resources(&self) -> Vec<Resource> {
        vec![Resource::TcpPort(self.listen)]
    }

    fn ack_timeout(&self) -> Option<std::time::Duration> {
        (self.ack == AckMode::OnCommit).then(|| self.ack_timeout.get())
    }

    fn services(&self) -> Vec<ServiceUse> {
        match (self.auth, self.unknown_devices) {
            (HttpAuth::Sas, _) => vec![registry::used_by("auth")],
            (_, UnknownDevices::Refuse) => vec![registry::used_by("unknown_devices")],
            _ => Vec::new(),
        }
    }

    fn build(&self, cx: SourceContext) -> anyhow::Result<ComponentTask> {
        super::server::build(self, cx)
    }
}
