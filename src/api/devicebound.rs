//! `POST /v1/devices/{id}/messages/devicebound`: queues a cloud-to-device message for a
//! device of the registry, delivered by a `device_gateway` while the device is connected
//! and subscribed.
//!
//! The body: `{"payload": "text" | any JSON, "properties": {"name": "value"}, "ttl": "1h",
//! "ack": "none" | "positive" | "negative" | "full"}` (`payload` required; a JSON value
//! that is not a string is sent as its JSON text; `ttl` defaults to 1 h, `ack` to none:
//! the feedback the gateway emits on `<gateway>.feedback`). With several gateways in the
//! topology, `?gateway=<component id>` picks one (400 naming them when it is missing or
//! names none). 202 with `{"message_id", "expires_at", "queued"}`; 404 for a device the
//! registry does not know; 409 when the device's queue is full; 503 without a registry
//! or a device gateway.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;
use utoipa_axum::routes;

use super::ApiState;
use super::access::Routes;
use super::openapi::ErrorBody;
use crate::devicebound::{Ack, Devicebound, NewMessage, NoGateway, QueueError};

pub fn routes(routes: Routes) -> Routes {
    routes.route(routes!(send))
}

/// A cloud-to-device message to queue.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct Request {
    /// The message body: a string as it is, any other JSON value as its JSON text.
    #[schema(value_type = Object)]
    payload: Value,
    /// Application properties, sent in the topic's property bag.
    #[serde(default)]
    properties: BTreeMap<String, String>,
    /// How long the message may wait for the device (default 1h).
    #[serde(default = "default_ttl")]
    #[schema(value_type = Option<String>, pattern = r"^[0-9]+(ms|s|m|h|d)$")]
    ttl: crate::config::Duration,
    /// Which outcomes come out as feedback events on the gateway's `<id>.feedback`.
    #[serde(default)]
    ack: Ack,
}

/// Which gateway queues the message.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct Target {
    /// The `device_gateway` source's component id; required when the topology has more
    /// than one.
    gateway: Option<String>,
}

/// A queued cloud-to-device message.
#[derive(Serialize, ToSchema)]
struct Queued {
    /// Its id (`$.mid` on the wire).
    message_id: String,
    /// When it expires unsent, RFC 3339.
    expires_at: String,
    /// How many messages wait for the device now, this one included.
    queued: usize,
}

fn default_ttl() -> crate::config::Duration {
    crate::config::Duration::from_secs(3600)
}

fn refuse(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, axum::Json(json!({ "error": message.to_string() }))).into_response()
}

/// Queues a cloud-to-device message for a device.
#[utoipa::path(
    post,
    path = "/v1/devices/{id}/messages/devicebound",
    operation_id = "send_devicebound_message",
    tag = "devices",
    params(("id" = String, Path, description = "The device's id"), Target),
    request_body = Request,
    responses(
        (status = 202, description = "Queued", body = Queued),
        (status = 400, description = "A malformed body, or no gateway named where several run", body = ErrorBody),
        (status = 404, description = "No such device", body = ErrorBody),
        (status = 409, description = "The device's queue is full (`max_queued_per_device`, 50 by default)", body = ErrorBody),
        (status = 500, description = "The queue could not be stored", body = ErrorBody),
    )
)]
async fn send(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
    Query(target): Query<Target>,
    body: Bytes,
) -> Response {
    let request: Request = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e),
    };
    let Some(registry) = state.registry() else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "this weir has no device registry: add a `registry:` section to the pipeline",
        );
    };
    if registry.lookup(&id).is_none() {
        return refuse(StatusCode::NOT_FOUND, format!("device `{id}` not found"));
    }
    let picked = match state.service::<Devicebound>() {
        Some(gateways) => gateways.gateway(target.gateway.as_deref()),
        None => Err(NoGateway::None),
    };
    let queue = match picked {
        Ok(queue) => queue,
        Err(e @ NoGateway::None) => return refuse(StatusCode::SERVICE_UNAVAILABLE, e),
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e),
    };
    let payload = match request.payload {
        Value::String(text) => text,
        other => other.to_string(),
    };
    let properties = request.properties.into_iter().collect();
    let new = NewMessage {
        id: None,
        payload,
        properties,
        ttl: request.ttl.get(),
        ack: request.ack,
    };
    match queue.enqueue(&id, new) {
        Ok(queued) => (
            StatusCode::ACCEPTED,
            axum::Json(Queued {
                message_id: queued.message.id,
                expires_at: queued.message.expires_at.to_string(),
                queued: queued.depth,
            }),
        )
            .into_response(),
        Err(e @ QueueError::Full { .. }) => refuse(StatusCode::CONFLICT, e),
        Err(e @ QueueError::Store(_)) => refuse(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}
