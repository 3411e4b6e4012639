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
use serde::Deserialize;
use serde_json::json;

use super::access::Routes;
use super::{ApiState, Caller};
use crate::alarms::{AckOutcome, Severity};

pub fn routes(routes: Routes) -> Routes {
    routes
        .get("/v1/alarms", list)
        .get("/v1/alarms/{id}", one)
        .post("/v1/alarms/{id}/ack", acknowledge)
}

#[derive(Deserialize)]
struct ListQuery {
    severity: Option<Severity>,
}

async fn list(
    State(state): State<Arc<ApiState>>,
    Query(query): Query<ListQuery>,
) -> impl IntoResponse {
    let mut alarms = state.alarm_board().map(|b| b.list()).unwrap_or_default();
    if let Some(severity) = query.severity {
        alarms.retain(|a| a.severity == severity);
    }
    alarms.sort_by(|a, b| (&a.component, &a.key).cmp(&(&b.component, &b.key)));
    axum::Json(json!({ "alarms": alarms }))
}

async fn one(State(state): State<Arc<ApiState>>, Path(id): Path<String>) -> impl IntoResponse {
    let found = state
        .alarm_board()
        .and_then(|b| b.list().into_iter().find(|a| a.id == id));
    match found {
        Some(alarm) => (StatusCode::OK, axum::Json(json!(alarm))),
        None => not_found(&id),
    }
}

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
            axum::Json(json!({ "error": "the alarm was acknowledged already", "alarm": alarm })),
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
