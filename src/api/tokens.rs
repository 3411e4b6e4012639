//! `/v1/tokens`: API tokens, for admins, while weir runs.
//!
//! - `GET /v1/tokens` — every token: name, role, created, expires, last used (no hashes).
//! - `POST /v1/tokens` — `{"name": "ci", "role": "viewer", "ttl": "90d"}` (ttl optional;
//!   `"scope": {"site": "plant-3"}` limits the role to devices with those tags): 201 with
//!   the token's value, shown this once.
//! - `DELETE /v1/tokens/{name}` — revoke: 204; refused from the next request on.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::ApiState;
use super::access::Routes;
use crate::tokens::{Grant, Role, Scope, TokenError, TokenStore};

pub fn routes(routes: Routes) -> Routes {
    routes
        .get("/v1/tokens", list)
        .post("/v1/tokens", create)
        .delete("/v1/tokens/{name}", revoke)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    name: String,
    role: Role,
    #[serde(default)]
    scope: Scope,
    #[serde(default)]
    ttl: Option<crate::config::Duration>,
}

fn failure(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, axum::Json(json!({ "error": message.to_string() }))).into_response()
}

impl IntoResponse for TokenError {
    fn into_response(self) -> Response {
        let status = match &self {
            TokenError::Invalid(_) => StatusCode::BAD_REQUEST,
            TokenError::Exists(_) => StatusCode::CONFLICT,
            TokenError::NotFound(_) => StatusCode::NOT_FOUND,
            TokenError::Locked(_) | TokenError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        failure(status, self)
    }
}

fn store(state: &ApiState) -> Result<Arc<TokenStore>, TokenError> {
    state
        .auth
        .tokens()
        .cloned()
        .ok_or_else(|| TokenError::Io("this weir keeps no API tokens".into()))
}

/// Runs a store change (which fsyncs) off the async threads.
async fn blocking<T: Send + 'static>(
    state: &ApiState,
    work: impl FnOnce(&TokenStore) -> Result<T, TokenError> + Send + 'static,
) -> Result<T, TokenError> {
    let store = store(state)?;
    tokio::task::spawn_blocking(move || work(&store))
        .await
        .map_err(|e| TokenError::Io(e.to_string()))?
}

async fn list(State(state): State<Arc<ApiState>>) -> Response {
    match store(&state) {
        Ok(store) => axum::Json(json!({ "tokens": store.list() })).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn create(State(state): State<Arc<ApiState>>, body: Bytes) -> Response {
    let new: NewToken = match serde_json::from_slice(&body) {
        Ok(new) => new,
        Err(e) => {
            return failure(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"name\", \"role\", \"scope\", \"ttl\"}}: {e}"),
            );
        }
    };
    let made = blocking(&state, move |store| {
        let grant = Grant {
            role: new.role,
            scope: new.scope,
        };
        store.create_with(&new.name, grant, new.ttl.map(|t| t.get()))
    })
    .await;
    match made {
        Ok((secret, info)) => (
            StatusCode::CREATED,
            axum::Json(json!({ "token": secret.expose(), "info": info })),
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

async fn revoke(State(state): State<Arc<ApiState>>, Path(name): Path<String>) -> Response {
    match blocking(&state, move |store| store.revoke(&name)).await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}
