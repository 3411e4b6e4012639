//! `/v1/alarms`: list the active alarms of every `alarm` transform and acknowledge them.
//!
//! - `GET /v1/alarms` — every active alarm (`?severity=major` narrows it down).
//! - `GET /v1/alarms/{id}` — one alarm.
//! - `POST /v1/alarms/{id}/ack` — acknowledge it, as the caller: the alarm's `by` is the
//!   name of the caller's token, not text the caller chose. The alarm transform emits an
//!   `acknowledged` transition. 200 with the alarm, 404 when no such alarm is active, 409
//!   when it was acknowledged already.

use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::routes;

use super::access::Routes;
use super::openapi::ErrorBody;
use super::{ApiState, Caller};
use crate::alarms::{AckOutcome, AlarmSummary, Severity};

pub fn routes(routes: Routes) -> Routes {
    routes
        .route(routes!(list))
        .route(routes!(one))
        .route(routes!(acknowledge))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only alarms of this severity.
    severity: Option<Severity>,
}

/// The active alarms.
#[derive(Serialize, ToSchema)]
struct AlarmList {
    alarms: Vec<AlarmSummary>,
}

/// An acknowledgement of an alarm acknowledged before.
#[derive(Serialize, ToSchema)]
struct AckConflict {
    error: &'static str,
    alarm: AlarmSummary,
}

/// Every active alarm, by component and key.
#[utoipa::path(
    get,
    path = "/v1/alarms",
    operation_id = "list_alarms",
    tag = "alarms",
    params(ListQuery),
    responses((status = 200, body = AlarmList))
)]
async fn list(
    State(state): State<Arc<ApiState>>,
    Query(query): Query<ListQuery>,
) -> impl IntoResponse {
    let mut alarms = state.alarm_board().map(|b| b.list()).unwrap_or_default();
    if let Some(severity) = query.severity {
        alarms.retain(|a| a.severity == severity);
    }
    alarms.sort_by(|a, b| (&a.component, &a.key).cmp(&(&b.component, &b.key)));
    axum::Json(AlarmList { alarms })
}

/// One active alarm.
#[utoipa::path(
    get,
    path = "/v1/alarms/{id}",
    operation_id = "get_alarm",
    tag = "alarms",
    params(("id" = String, Path, description = "The alarm's id")),
    responses(
        (status = 200, body = AlarmSummary),
        (status = 404, description = "No such alarm is active", body = ErrorBody),
    )
)]
async fn one(State(state): State<Arc<ApiState>>, Path(id): Path<String>) -> impl IntoResponse {
    let found = state
        .alarm_board()
        .and_then(|b| b.list().into_iter().find(|a| a.id == id));
    match found {
        Some(alarm) => (StatusCode::OK, axum::Json(json!(alarm))),
        None => not_found(&id),
    }
}

/// Acknowledges an alarm, as the caller (its `acknowledged_by` is the caller's name).
#[utoipa::path(
    post,
    path = "/v1/alarms/{id}/ack",
    operation_id = "acknowledge_alarm",
    tag = "alarms",
    params(("id" = String, Path, description = "The alarm's id")),
    responses(
        (status = 200, description = "Acknowledged", body = AlarmSummary),
        (status = 404, description = "No such alarm is active", body = ErrorBody),
        (status = 409, description = "Acknowledged before", body = AckConflict),
    )
)]
async fn acknowledge(
    State(state): State<Arc<ApiState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> impl IntoResponse {
    let Some(board) = state.alarm_board() else {
        return not_found(&id);
    };
    match board.acknowledge(&id, Some(caller.name)).await {
        Some(AckOutcome::Acknowledged(alarm)) => (StatusCode::OK, axum::Json(json!(alarm))),
        Some(AckOutcome::AlreadyAcknowledged(alarm)) => (
            StatusCode::CONFLICT,
            axum::Json(json!(AckConflict {
                error: "the alarm was acknowledged already",
                alarm
            })),
        ),
        Some(AckOutcome::NotFound) | None => not_found(&id),
    }
}

fn not_found(id: &str) -> (StatusCode, axum::Json<serde_json::Value>) {
    (
        StatusCode::NOT_FOUND,
        axum::Json(json!({ "error": format!("no active alarm has id `{id}`") })),
    )
}
