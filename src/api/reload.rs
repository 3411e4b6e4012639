//! `POST /v1/reload`, and the request it hands the daemon loop, which owns the topology.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::oneshot;

use super::ApiState;
use super::openapi::ErrorBody;
use crate::config::ComponentId;
use crate::topology::Diff;
use crate::topology::leftovers::Discard;

/// What a reload did, as the API reports it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ReloadOutcome {
    Applied {
        generation: u64,
        diff: Diff,
    },
    Unchanged {
        generation: u64,
    },
    /// Nothing changed: the running topology goes on.
    Rejected {
        reason: String,
        errors: Vec<String>,
    },
}

/// A reload asked for through the API.
pub struct ReloadRequest {
    /// Disk buffers the reload may delete with their events (see
    /// [`crate::topology::leftovers`]).
    pub discard: Discard,
    pub respond: oneshot::Sender<ReloadOutcome>,
}

/// `POST /v1/reload?wait=false` asks for a reload without waiting for its outcome;
/// `discard_buffers=a,b` lets it delete the disk buffers of the components `a` and `b`,
/// which it removes, with the events they hold.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ReloadParams {
    /// Whether to answer with the outcome (default) or as soon as the reload is queued.
    #[serde(default = "wait_by_default")]
    #[param(default = true)]
    wait: bool,
    /// Components (`a,b`) whose disk buffers the reload may delete, with their events.
    #[serde(default)]
    discard_buffers: Option<String>,
}

/// The answer to `?wait=false`.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct ReloadQueued {
    /// `requested`.
    status: &'static str,
}

fn wait_by_default() -> bool {
    true
}

/// Reloads the pipeline files: 200 with the diff applied, 422 with the validation errors
/// (nothing changed), 409 when a setting cannot change at run time, 500 when a component
/// could not start (rolled back). With `?wait=false`: 202 once the reload is queued (the
/// outcome is in the log and `/metrics`).
#[utoipa::path(
    post,
    path = "/v1/reload",
    operation_id = "reload",
    tag = "reload",
    params(ReloadParams),
    responses(
        (status = 200, description = "Applied, or nothing to change", body = ReloadOutcome),
        (status = 202, description = "Queued (`wait=false`)", body = ReloadQueued),
        (status = 404, description = "This weir offers no reloading", body = ErrorBody),
        (status = 409, description = "A setting that cannot change at run time, or buffers not empty", body = ReloadOutcome),
        (status = 422, description = "The pipeline files are invalid: nothing changed", body = ReloadOutcome),
        (status = 500, description = "A component could not start: rolled back", body = ReloadOutcome),
        (status = 503, description = "weir is stopping", body = ErrorBody),
    )
)]
pub(super) async fn reload(
    State(state): State<Arc<ApiState>>,
    Query(params): Query<ReloadParams>,
) -> impl IntoResponse {
    let Some(sender) = &state.reload else {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(json!({ "error": "reloading is not available" })),
        );
    };
    let discard = params
        .discard_buffers
        .iter()
        .flat_map(|ids| ids.split(','))
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .map(ComponentId::new)
        .collect();
    let (respond, outcome) = oneshot::channel();
    if sender
        .send(ReloadRequest { discard, respond })
        .await
        .is_err()
    {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "error": "weir is stopping" })),
        );
    }
    if !params.wait {
        // The daemon's answer goes nowhere: dropping the receiver is fine for it.
        drop(outcome);
        return (
            StatusCode::ACCEPTED,
            axum::Json(json!(ReloadQueued {
                status: "requested"
            })),
        );
    }
    match outcome.await {
        Ok(outcome) => {
            let status = match &outcome {
                ReloadOutcome::Applied { .. } | ReloadOutcome::Unchanged { .. } => StatusCode::OK,
                ReloadOutcome::Rejected { reason, .. } if reason == "invalid" => {
                    StatusCode::UNPROCESSABLE_ENTITY
                }
                ReloadOutcome::Rejected { reason, .. }
                    if reason == "not_reloadable" || reason == "buffers_not_empty" =>
                {
                    StatusCode::CONFLICT
                }
                ReloadOutcome::Rejected { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            };
            (
                status,
                axum::Json(serde_json::to_value(&outcome).unwrap_or_default()),
            )
        }
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "error": "weir is stopping" })),
        ),
    }
}
