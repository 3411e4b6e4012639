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
//! | 408 | the body did not arrive within `limits.body_timeout` |
//! | 413 | the body is larger than `max_body` |
//! | 429 + `Retry-After` | the device sent more than its `rate_limit` allows |
//! | 503 + `Retry-After` | the pipeline did not take (or, with `on_commit`, commit) the readings in time, `limits.requests_in_flight` or `limits.pending_bytes` is reached, or weir is stopping |
//! | 500 | a reading was lost on the way (e.g. a component failed): send the request again |
//!
//! Handlers wait for room downstream before answering, so a slow pipeline slows clients.
//!
//! With `iothub_transport: true` the source also takes what IoT hub device SDKs send over
//! their HTTPS transport, under the same `auth` ([`iothub`]).
//!
//! [`config`] holds the options, [`server`] listens and answers, [`limits`] bounds
//! connections, requests and client time, [`admission`] decides who may send and how much,
//! [`decode`] turns a body into events; this module follows one request through them.

mod admission;
mod config;
mod decode;
mod iothub;
mod limits;
mod server;

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use governor::DefaultKeyedRateLimiter;

pub use config::{AckMode, HttpAuth, HttpSourceConfig, RateLimit};

use super::gate::DeviceGate;
use crate::codecs::Decoder;
use crate::config::ComponentId;
use crate::event::{Delivery, DeliveryStatus, DeviceId, EventBatch};
use crate::registry::Registry;
use crate::telemetry::events::{ComponentError, ErrorType, EventsReceived, Stage};
use crate::telemetry::{ComponentTelemetry, InternalEvent};
use crate::topology::channel::Outputs;

/// What every request of one source shares: its settings, its gate, where events go.
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
    budget: limits::RequestBudget,
    body_timeout: std::time::Duration,
    headers: Vec<String>,
    /// With `iothub_transport`, the decoders a message's content type picks.
    iothub: Option<crate::sources::iothub::Decoders>,
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

impl Handler {
    /// One request, from who sent it to the commit of its readings: the number accepted,
    /// or why it was refused.
    async fn handle(
        &self,
        wire: iothub::Wire,
        params: HashMap<String, String>,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<usize, Rejection> {
        let Some(mut admitted) = self.budget.admit() else {
            return Err(self.reject(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorType::OverLimit,
                "`limits.requests_in_flight` requests are being handled; retry later".into(),
            ));
        };
        // Who is sending comes first: an unauthenticated body is not even read.
        if let Some(device) = params.get("device_id") {
            self.authorize(device.trim(), headers)?;
        }
        let read = axum::body::to_bytes(body, self.max_body);
        let body = match tokio::time::timeout(self.body_timeout, read).await {
            Ok(Ok(body)) => body,
            Ok(Err(_)) => {
                return Err(self.reject(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    ErrorType::Request,
                    format!("body is larger than max_body ({} bytes)", self.max_body),
                ));
            }
            Err(_) => {
                return Err(self.reject(
                    StatusCode::REQUEST_TIMEOUT,
                    ErrorType::OverLimit,
                    format!(
                        "the body did not arrive within `limits.body_timeout` ({:?})",
                        self.body_timeout
                    ),
                ));
            }
        };
        if !self
            .budget
            .reserve(&mut admitted, body.len(), self.queue_timeout)
            .await
        {
            return Err(self.reject(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorType::OverLimit,
                format!(
                    "`limits.pending_bytes` of requests wait for their commit, and no room came within {:?}; retry later",
                    self.queue_timeout
                ),
            ));
        }
        let path_device = params.get("device_id").map(|id| id.trim());
        let meta = Arc::new(match wire {
            iothub::Wire::Weir => self.meta(headers),
            iothub::Wire::IotHub => self.iothub_meta(headers, path_device.unwrap_or_default()),
        });
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

        let decoded = match wire {
            iothub::Wire::Weir => self.decode(&body, path_device, &meta),
            iothub::Wire::IotHub => self.iothub_decode(&body, path_device, headers, &meta),
        };
        let mut events = match decoded {
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
