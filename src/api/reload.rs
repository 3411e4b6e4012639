//! `POST /v1/reload`, and the request it hands the daemon loop, which owns the topology.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Serialize;
use serde_json::json;
use tokio::sync::oneshot;

use super::ApiState;
use crate::topology::Diff;

/// What a reload did, as the API reports it.
#[derive(Debug, Serialize)]
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
    pub respond: oneshot::Sender<ReloadOutcome>,
}

/// Reloads the pipeline files: 200 with the diff applied, 422 with the validation errors
/// (nothing changed), 409 when a setting cannot change at run time, 500 when a component
/// could not start (rolled back).
pub(super) async fn reload(State(state): State<Arc<ApiState>>) -> impl IntoResponse {
    let Some(sender) = &state.reload else {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(json!({ "error": "reloading is not available" })),
        );
    };
    let (respond, outcome) = oneshot::channel();
    if sender.send(ReloadRequest { respond }).await.is_err() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "error": "weir is stopping" })),
        );
    }
    match outcome.await {
        Ok(outcome) => {
            let status = match &outcome {
                ReloadOutcome::Applied { .. } | ReloadOutcome::Unchanged { .. } => StatusCode::OK,
                ReloadOutcome::Rejected { reason, .. } if reason == "invalid" => {
                    StatusCode::UNPROCESSABLE_ENTITY
                }
                ReloadOutcome::Rejected { reason, .. } if reason == "not_reloadable" => {
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
