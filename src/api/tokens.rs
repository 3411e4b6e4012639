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
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use utoipa_axum::routes;

use super::ApiState;
use super::access::Routes;
use super::openapi::ErrorBody;
use crate::tokens::{Grant, Role, Scope, TokenError, TokenInfo, TokenStore};

pub fn routes(routes: Routes) -> Routes {
    routes
        .route(routes!(list))
        .route(routes!(create))
        .route(routes!(revoke))
}

/// A token to make.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewToken {
    /// 1 to 64 of `A-Z a-z 0-9 . _ -`.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    name: String,
    role: Role,
    /// Device tags the role is limited to (`{"site": "plant-3"}`); none: every device.
    #[serde(default)]
    scope: Scope,
    /// How long the token is valid (`90d`, `12h`); forever without.
    #[serde(default)]
    #[schema(value_type = Option<String>, pattern = r"^[0-9]+(ms|s|m|h|d)$")]
    ttl: Option<crate::config::Duration>,
}

/// Every token.
#[derive(Serialize, ToSchema)]
struct TokenList {
    tokens: Vec<TokenInfo>,
}

/// A token made: its value, shown this once.
#[derive(Serialize, ToSchema)]
struct MadeToken {
    token: String,
    info: TokenInfo,
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

/// Every API token (no values, no hashes).
#[utoipa::path(
    get,
    path = "/v1/tokens",
    operation_id = "list_tokens",
    tag = "tokens",
    responses(
        (status = 200, body = TokenList),
        (status = 500, description = "This weir keeps no API tokens", body = ErrorBody),
    )
)]
async fn list(State(state): State<Arc<ApiState>>) -> Response {
    match store(&state) {
        Ok(store) => axum::Json(TokenList {
            tokens: store.list(),
        })
        .into_response(),
        Err(e) => e.into_response(),
    }
}

/// Makes an API token.
#[utoipa::path(
    post,
    path = "/v1/tokens",
    operation_id = "create_token",
    tag = "tokens",
    request_body = NewToken,
    responses(
        (status = 201, description = "Made: the value is shown this once", body = MadeToken),
        (status = 409, description = "A token of this name exists", body = ErrorBody),
    )
)]
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
            axum::Json(MadeToken {
                token: secret.expose().to_owned(),
                info,
            }),
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

/// Revokes a token: refused from the next request on.
#[utoipa::path(
    delete,
    path = "/v1/tokens/{name}",
    operation_id = "revoke_token",
    tag = "tokens",
    params(("name" = String, Path, description = "The token's name")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 404, description = "No token has this name", body = ErrorBody),
    )
)]
async fn revoke(State(state): State<Arc<ApiState>>, Path(name): Path<String>) -> Response {
    match blocking(&state, move |store| store.revoke(&name)).await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}
