//! `http`: devices POST readings.
//!
//! `POST /v1/devices/{device_id}/messages` with a JSON object, an array of objects or
//! NDJSON (or the configured codec). The answer says what happened:
//!
//! | status | meaning |
//! | --- | --- |
//! | 200 `{"accepted": n}` | with `ack: on_commit` (the default): every sink on the readings' path has committed them (a file written, ...), so a 200 means durable; with `ack: on_receive`: the readings entered the pipeline |
//! | 400 `{"error": ...}` | the body or device id is malformed; the body goes to `<id>.errors` |
//! | 401 | `auth: sas` and the `Authorization` token is missing, malformed, expired, for another device or signed with neither key; or the device is unknown (to the registry) |
//! | 403 | the device is disabled in the registry |
//! | 404 / 405 | wrong path or method |
//! | 413 | the body is larger than `max_body` |
//! | 429 + `Retry-After` | the device sent more than its `rate_limit` allows |
//! | 503 + `Retry-After` | the pipeline did not take (or, with `on_commit`, commit) the readings in time, or weir is stopping |
//! | 500 | a reading was lost on the way (e.g. a component failed): send the request again |
//!
//! Handlers wait for room downstream before answering, so a slow pipeline slows clients.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::gate::{DeviceGate, UnknownDevices};
use super::{SourceComponent, SourceContext, reading};
use crate::codecs::{Decoder, DecodingConfig};
use crate::config::ServiceUse;
use crate::registry::{self, Registry};
use std::num::NonZeroU32;

use axum_server::tls_rustls::RustlsConfig;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::{ByteSize, ComponentId, Duration, FieldProblem, OutputName, Resource};
use crate::event::DeviceId;
use crate::event::{Delivery, DeliveryStatus, Event, EventBatch, EventMeta};
use crate::telemetry::events::{ComponentError, ErrorType, EventsReceived, HttpResponse, Stage};
use crate::telemetry::{ComponentTelemetry, InternalEvent};
use crate::tls::TlsConfig;
use crate::topology::ComponentTask;
use crate::topology::channel::Outputs;

const DEVICE_ID_PARAM: &str = "{device_id}";

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
    fn limiter(&self) -> Option<DefaultKeyedRateLimiter<DeviceId>> {
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
        let listener = std::net::TcpListener::bind(self.listen)
            .map_err(|err| anyhow::anyhow!("cannot listen on {}: {err}", self.listen))?;
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let registry = cx.services.get::<Registry>();
        let sas = match (self.auth, &registry) {
            (HttpAuth::None, _) => None,
            (HttpAuth::Sas, Some(registry)) => Some(Arc::clone(registry)),
            (HttpAuth::Sas, None) => {
                anyhow::bail!("`auth: sas` needs the device registry: add a `registry:` section")
            }
        };
        let listening = cx.telemetry.connected();
        let state = Arc::new(Handler {
            sas,
            gate: DeviceGate::new(registry, self.unknown_devices)?,
            id: cx.id.clone(),
            source: cx.id.as_arc(),
            decoder: self.decoding.decoder(),
            device_id_field: self.device_id_field.clone(),
            event_time: self.event_time.clone(),
            max_body: self.max_body.get() as usize,
            queue_timeout: self.queue_timeout.get(),
            ack: self.ack,
            ack_timeout: self.ack_timeout.get(),
            limiter: self.rate_limit.as_ref().and_then(RateLimit::limiter),
            headers: self
                .headers
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            out: cx.out,
            telemetry: cx.telemetry,
        });
        let router = Router::new()
            .route(&self.path, post(receive))
            .with_state(state);
        let tls = self
            .tls
            .as_ref()
            .map(TlsConfig::server_config)
            .transpose()?;
        let shutdown = cx.shutdown;
        let listen = self.listen;
        // `source_connected` reads 1 while the port is open, as a broker source's does while
        // it is connected; the guard lowers it however serving ends.
        let listening = ListeningGauge::raise(listening);
        Ok(Box::pin(async move {
            let _listening = listening;
            tracing::info!(component_id = %cx.id, %listen, tls = tls.is_some(), "http source listening");
            match tls {
                None => {
                    axum::serve(listener, router)
                        .with_graceful_shutdown(async move { shutdown.cancelled().await })
                        .await?;
                }
                Some(tls) => {
                    // Graceful: stop accepting, let requests in flight (and their acks) finish.
                    let handle = axum_server::Handle::new();
                    let stopper = handle.clone();
                    tokio::spawn(async move {
                        shutdown.cancelled().await;
                        stopper.graceful_shutdown(None);
                    });
                    axum_server::from_tcp_rustls(
                        listener.into_std()?,
                        RustlsConfig::from_config(tls),
                    )?
                    .handle(handle)
                    .serve(router.into_make_service())
                    .await?;
                }
            }
            Ok(())
        }))
    }
}

/// Holds `source_connected` at 1 while it lives.
struct ListeningGauge(prometheus_client::metrics::gauge::Gauge);

impl ListeningGauge {
    fn raise(gauge: prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.set(1);
        Self(gauge)
    }
}

impl Drop for ListeningGauge {
    fn drop(&mut self) {
        self.0.set(0);
    }
}

struct Handler {
    /// With `auth: sas`, the registry that checks tokens.
    sas: Option<Arc<Registry>>,
    gate: DeviceGate,
    id: ComponentId,
    source: Arc<str>,
    decoder: Decoder,
    device_id_field: Option<String>,
    event_time: Option<String>,
    max_body: usize,
    queue_timeout: std::time::Duration,
    ack: AckMode,
    ack_timeout: std::time::Duration,
    limiter: Option<DefaultKeyedRateLimiter<DeviceId>>,
    headers: Vec<String>,
    out: Outputs,
    telemetry: ComponentTelemetry,
}

/// A request the source refused, with the reason the client is told.
struct Rejection {
    status: StatusCode,
    reason: String,
    /// Seconds for `Retry-After`, when the client should come back.
    retry_after: Option<u64>,
}

async fn receive(
    State(handler): State<Arc<Handler>>,
    Path(params): Path<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let outcome = handler.handle(params, &headers, body).await;
    let (status, response) = match outcome {
        Ok(accepted) => (
            StatusCode::OK,
            (StatusCode::OK, axum::Json(json!({ "accepted": accepted }))).into_response(),
        ),
        Err(rejection) => {
            let mut response = (
                rejection.status,
                axum::Json(json!({ "error": rejection.reason })),
            )
                .into_response();
            if let Some(seconds) = rejection.retry_after {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            }
            (rejection.status, response)
        }
    };
    HttpResponse {
        status: status.as_u16(),
    }
    .emit(&handler.telemetry);
    response
}

impl Handler {
    async fn handle(
        &self,
        params: HashMap<String, String>,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<usize, Rejection> {
        // Who is sending comes first: an unauthenticated body is not even read.
        if let Some(device) = params.get("device_id") {
            self.authorize(device.trim(), headers)?;
        }
        let body = axum::body::to_bytes(body, self.max_body)
            .await
            .map_err(|_| {
                self.reject(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    ErrorType::Request,
                    format!("body is larger than max_body ({} bytes)", self.max_body),
                )
            })?;
        let meta = Arc::new(self.meta(headers));
        let path_device = params.get("device_id").map(|id| id.trim());
        if path_device.is_some_and(|id| id.is_empty() || id.len() > 256) {
            return Err(self.reject(
                StatusCode::BAD_REQUEST,
                ErrorType::Request,
                "device id in the path must be 1 to 256 characters".into(),
            ));
        }
        EventsReceived {
            count: 0,
            bytes: body.len(),
        }
        .emit(&self.telemetry);

        let mut events = match self.decode(&body, path_device, &meta) {
            Ok(events) => events,
            Err(reason) => {
                self.dead_letter(&body, path_device, &meta, &reason).await;
                return Err(self.reject(StatusCode::BAD_REQUEST, ErrorType::Decode, reason));
            }
        };
        if !params.contains_key("device_id") {
            for event in &events {
                if let Some(device) = &event.device_id {
                    self.authorize(device, headers)?;
                }
            }
        }
        self.check_rate(&events)?;
        let accepted = events.len();
        EventsReceived {
            count: accepted,
            bytes: 0,
        }
        .emit(&self.telemetry);
        let outcome = match self.ack {
            AckMode::OnCommit => Some(Delivery::attach_all(&mut events)),
            AckMode::OnReceive => None,
        };
        let send = self.out.send(EventBatch::new(events));
        if tokio::time::timeout(self.queue_timeout, send)
            .await
            .is_err()
        {
            return Err(self.reject(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorType::Request,
                format!(
                    "the pipeline did not accept the readings within {:?}; retry later",
                    self.queue_timeout
                ),
            ));
        }
        let Some(outcome) = outcome else {
            return Ok(accepted);
        };
        let pending = self.telemetry.pending_deliveries();
        pending.inc();
        let outcome = tokio::time::timeout(self.ack_timeout, outcome).await;
        pending.dec();
        match outcome {
            Ok(Ok(DeliveryStatus::Committed)) => Ok(accepted),
            Ok(Ok(DeliveryStatus::Failed) | Err(_)) => Err(self.reject(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorType::Request,
                "a reading was lost on its way to the sinks; send the request again".into(),
            )),
            Err(_) => Err(self.reject(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorType::Request,
                format!(
                    "the sinks did not commit the readings within {:?}; retry later",
                    self.ack_timeout
                ),
            )),
        }
    }

    /// Checks the device's token (`auth: sas`) or that the registry lets it in: 401 for a
    /// bad token or an unknown device, 403 for a disabled one; counted by reason.
    fn authorize(&self, device_id: &str, headers: &HeaderMap) -> Result<(), Rejection> {
        let verdict = match &self.sas {
            Some(registry) => {
                let token = headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok());
                registry.authenticate(device_id, token).map(drop)
            }
            None => self.gate.admit(device_id),
        };
        verdict.map_err(|refusal| {
            let status = match refusal.is_forbidden() {
                true => StatusCode::FORBIDDEN,
                false => StatusCode::UNAUTHORIZED,
            };
            self.reject(status, ErrorType::Unauthorized, refusal.to_string())
        })
    }

    /// Takes each device's readings from its bucket; refuses the request (429) if any
    /// device has too few tokens, telling the client when to come back.
    fn check_rate(&self, events: &[Event]) -> Result<(), Rejection> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        let mut per_device: HashMap<&DeviceId, u32> = HashMap::new();
        for event in events {
            if let Some(device) = &event.device_id {
                *per_device.entry(device).or_default() += 1;
            }
        }
        for (device, count) in per_device {
            let Some(count) = NonZeroU32::new(count) else {
                continue;
            };
            match limiter.check_key_n(device, count) {
                Ok(Ok(())) => {}
                Ok(Err(not_until)) => {
                    let wait = not_until.wait_time_from(DefaultClock::default().now());
                    let mut rejection = self.reject(
                        StatusCode::TOO_MANY_REQUESTS,
                        ErrorType::RateLimited,
                        format!(
                            "device `{device}` is over its rate limit; retry in {:.1} s",
                            wait.as_secs_f64()
                        ),
                    );
                    rejection.retry_after = Some(wait.as_secs().max(1));
                    return Err(rejection);
                }
                Err(_) => {
                    return Err(self.reject(StatusCode::TOO_MANY_REQUESTS, ErrorType::RateLimited, format!("the request holds {count} readings of device `{device}`, more than its rate limit's burst")));
                }
            }
        }
        if limiter.len() > 100_000 {
            limiter.retain_recent();
        }
        Ok(())
    }

    fn meta(&self, headers: &HeaderMap) -> EventMeta {
        let mut meta = EventMeta::received_by(Arc::clone(&self.source));
        for name in &self.headers {
            if let Some(value) = headers.get(name).and_then(|v| v.to_str().ok()) {
                meta.headers.push((name.clone(), value.to_owned()));
            }
        }
        meta.trace_id = headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        meta
    }

    /// Decodes the body into events; any bad reading rejects the whole request, so a client
    /// can retry it as a unit.
    fn decode(
        &self,
        body: &Bytes,
        path_device: Option<&str>,
        meta: &Arc<EventMeta>,
    ) -> Result<Vec<Event>, String> {
        let readings = self.decoder.decode(body).map_err(|e| e.0)?;
        let mut events = Vec::with_capacity(readings.len());
        // One shared id for every reading of a request to a device's path.
        let path_device: Option<crate::event::DeviceId> = path_device.map(Into::into);
        for (n, fields) in readings.into_iter().enumerate() {
            let device_id = match (&path_device, &self.device_id_field) {
                (Some(id), _) => id.clone(),
                (None, Some(field)) => reading::device_from_field(&fields, field)
                    .map_err(|e| format!("reading {n}: {e}"))?,
                (None, None) => return Err("no device id".into()),
            };
            events.push(reading::event(
                fields,
                device_id,
                self.event_time.as_deref(),
                meta,
                n,
            )?);
        }
        Ok(events)
    }

    /// Keeps a refused body on `<id>.errors` (truncated to 64 KiB) for inspection.
    async fn dead_letter(
        &self,
        body: &Bytes,
        path_device: Option<&str>,
        meta: &Arc<EventMeta>,
        reason: &str,
    ) {
        let event = reading::dead_letter(
            body,
            path_device.map(Into::into),
            Arc::clone(meta),
            &self.source,
            reason,
        );
        let send = self
            .out
            .send_named(OutputName::ERRORS, EventBatch::new(vec![event]));
        // A dead letter must not hold the client hostage to a stalled error branch.
        let _ = tokio::time::timeout(self.queue_timeout, send).await;
    }

    fn reject(&self, status: StatusCode, error_type: ErrorType, reason: String) -> Rejection {
        let message = format!("{}: rejected request with {status}: {reason}", self.id);
        ComponentError {
            error_type,
            stage: Stage::Receiving,
            message: &message,
            count: 1,
        }
        .emit(&self.telemetry);
        let retry_after = matches!(
            status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::INTERNAL_SERVER_ERROR
        )
        .then_some(1);
        Rejection {
            status,
            reason,
            retry_after,
        }
    }
}
