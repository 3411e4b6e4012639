//! `POST /v1/devices/{id}/messages/devicebound`: queues a cloud-to-device message for a
//! device of the registry, delivered by a `device_gateway` while the device is connected
//! and subscribed.
//!
//! The body: `{"payload": "text" | any JSON, "properties": {"name": "value"}, "ttl": "1h"}`
//! (`payload` required; a JSON value that is not a string is sent as its JSON text;
//! `ttl` defaults to 1 h). 202 with `{"message_id", "expires_at", "queued"}`; 404 for a
//! device the registry does not know; 409 when 50 messages already wait for it; 503
//! without a registry or a device gateway.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::ApiState;
use super::access::Routes;
use crate::devicebound::{Devicebound, QueueError};

pub fn routes(routes: Routes) -> Routes {
    routes.post("/v1/devices/{id}/messages/devicebound", send)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    payload: Value,
    #[serde(default)]
    properties: BTreeMap<String, String>,
    #[serde(default = "default_ttl")]
    ttl: crate::config::Duration,
}

fn default_ttl() -> crate::config::Duration {
    crate::config::Duration::from_secs(3600)
}

fn refuse(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, axum::Json(json!({ "error": message.to_string() }))).into_response()
}

async fn send(State(state): State<Arc<ApiState>>, Path(id): Path<String>, body: Bytes) -> Response {
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
    let Some(queue) = state.service::<Devicebound>() else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "no device gateway runs: add a `device_gateway` source to the pipeline",
        );
    };
    let payload = match request.payload {
        Value::String(text) => text,
        other => other.to_string(),
    };
    let properties = request.properties.into_iter().collect();
    match queue.enqueue(&id, payload, properties, request.ttl.get()) {
        Ok(message) => (
            StatusCode::ACCEPTED,
            axum::Json(json!({
                "message_id": message.id,
                "expires_at": message.expires_at,
                "queued": queue.depth(&id),
            })),
        )
            .into_response(),
        Err(e @ QueueError::Full(_)) => refuse(StatusCode::CONFLICT, e),
        Err(e @ QueueError::Store(_)) => refuse(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}
