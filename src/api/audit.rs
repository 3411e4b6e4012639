//! Auditing every change made through the API, and `GET /v1/audit` to read it back.
//!
//! The middleware sits outside authentication: it sees every request that is not a read
//! (`GET`/`HEAD`), and writes an [`AuditEvent`] for each one a caller was known for —
//! served, refused (403) or failed; a request without a valid token (401, 429) is counted
//! by the authentication instead. Each event is also a log event (target `weir::audit`)
//! and a count in `api_audit_events_total`.
//!
//! - `GET /v1/audit?since=2026-01-01T00:00:00Z&limit=1000` — events at or after `since`
//!   (default: all), oldest first, at most `limit` (1 to 10000, default 1000).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, MatchedPath, Query, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use percent_encoding::percent_decode_str;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::routes;

use super::access::Routes;
use super::openapi::ErrorBody;
use super::{ApiState, Caller};
use crate::audit::AuditEvent;
use crate::telemetry::events::ApiAuditEvent;

/// Most of a creation's body read to name its target.
const TARGET_BODY_LIMIT: usize = 64 * 1024;
/// Most of a body held while a request without a target in its path is served.
const BODY_LIMIT: usize = 64 * 1024 * 1024;

pub fn routes(routes: Routes) -> Routes {
    routes.route(routes!(read))
}

/// The `{…}` segment of `pattern` in `path`, decoded.
fn path_target(pattern: &str, path: &str) -> Option<String> {
    pattern
        .split('/')
        .zip(path.split('/'))
        .find(|(p, _)| p.starts_with('{'))
        .map(|(_, segment)| percent_decode_str(segment).decode_utf8_lossy().into_owned())
}

/// The `id` (or `name`) of the record a `POST` to a collection creates.
fn body_target(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    ["id", "name"]
        .iter()
        .find_map(|key| value[key].as_str().map(str::to_owned))
}

/// The record's etag before the change, for the routes of one device or group.
fn etag_of(state: &ApiState, pattern: &str, target: Option<&str>) -> Option<String> {
    let (registry, target) = (state.registry()?, target?);
    if pattern.starts_with("/v1/devices/{id}") {
        registry.get(target).map(|d| d.etag.clone())
    } else if pattern.starts_with("/v1/enrollment-groups/{id}") {
        registry.group(target).map(|g| g.etag.clone())
    } else {
        None
    }
}

/// The middleware.
pub async fn record(State(state): State<Arc<ApiState>>, request: Request, next: Next) -> Response {
    let reads = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    let (Some(log), Some(pattern), false) = (
        state.audit.clone(),
        request.extensions().get::<MatchedPath>().cloned(),
        reads,
    ) else {
        return next.run(request).await;
    };
    let pattern = pattern.as_str().to_owned();
    let route = format!("{} {pattern}", request.method());
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    let local_caller = request.extensions().get::<Caller>().cloned();
    let mut target = path_target(&pattern, request.uri().path());
    let request = match target {
        Some(_) => request,
        None => {
            let (parts, body) = request.into_parts();
            let bytes = match axum::body::to_bytes(body, BODY_LIMIT).await {
                Ok(bytes) => bytes,
                Err(e) => {
                    return (
                        StatusCode::PAYLOAD_TOO_LARGE,
                        axum::Json(json!({ "error": format!("cannot read the body: {e}") })),
                    )
                        .into_response();
                }
            };
            if bytes.len() <= TARGET_BODY_LIMIT {
                target = body_target(&bytes);
            }
            Request::from_parts(parts, Body::from(bytes))
        }
    };
    let etag_before = etag_of(&state, &pattern, target.as_deref());
    let response = next.run(request).await;
    let Some(caller) = response
        .extensions()
        .get::<Caller>()
        .cloned()
        .or(local_caller)
    else {
        return response;
    };
    let status = response.status().as_u16();
    let etag_after = response
        .headers()
        .get(header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim_matches('"').to_owned());
    let event = AuditEvent {
        time: jiff::Timestamp::now(),
        who: caller.name,
        role: Some(caller.grants.describe()),
        route,
        target,
        status,
        outcome: AuditEvent::outcome_of(status).to_owned(),
        etag_before,
        etag_after,
        client,
    };
    tracing::info!(
        target: "weir::audit",
        who = %event.who,
        role = event.role.as_deref().unwrap_or_default(),
        route = %event.route,
        target = event.target.as_deref().unwrap_or_default(),
        status,
        outcome = %event.outcome,
        "API change"
    );
    ApiAuditEvent {
        outcome: AuditEvent::outcome_of(status),
    }
    .emit(state.telemetry.metrics());
    match tokio::task::spawn_blocking(move || log.append(&event)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!("{e}"),
        Err(e) => tracing::error!("cannot write the audit log: {e}"),
    }
    response
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    /// Events at or after this time (default: all).
    #[param(value_type = Option<String>, format = DateTime)]
    since: Option<jiff::Timestamp>,
    /// Most events answered.
    #[param(minimum = 1, maximum = 10000, default = 1000)]
    limit: Option<usize>,
}

/// Audit events.
#[derive(Serialize, ToSchema)]
struct AuditEvents {
    events: Vec<AuditEvent>,
}

/// The audit log: every change made through the API, oldest first.
#[utoipa::path(
    get,
    path = "/v1/audit",
    operation_id = "read_audit_log",
    tag = "audit",
    params(AuditQuery),
    responses(
        (status = 200, body = AuditEvents),
        (status = 500, description = "The audit log cannot be read", body = ErrorBody),
    )
)]
async fn read(State(state): State<Arc<ApiState>>, Query(query): Query<AuditQuery>) -> Response {
    let limit = query.limit.unwrap_or(1000);
    if !(1..=10_000).contains(&limit) {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({ "error": "`limit` must be 1 to 10000" })),
        )
            .into_response();
    }
    let Some(log) = state.audit.clone() else {
        return axum::Json(AuditEvents { events: Vec::new() }).into_response();
    };
    let since = query.since.unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    match tokio::task::spawn_blocking(move || log.read_since(since, limit)).await {
        Ok(Ok(events)) => axum::Json(AuditEvents { events }).into_response(),
        Ok(Err(e)) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(json!({ "error": e })),
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(json!({ "error": e.to_string() })),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_come_from_the_path_or_the_created_record() {
        assert_eq!(
            path_target("/v1/devices/{id}/enable", "/v1/devices/pump%2F1/enable").as_deref(),
            Some("pump/1")
        );
        assert_eq!(path_target("/v1/reload", "/v1/reload"), None);
        assert_eq!(
            body_target(br#"{"id": "pump-1"}"#).as_deref(),
            Some("pump-1")
        );
        assert_eq!(
            body_target(br#"{"name": "ci", "role": "viewer"}"#).as_deref(),
            Some("ci")
        );
        assert_eq!(body_target(b"[1, 2]"), None);
    }
}
