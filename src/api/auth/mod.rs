//! Authentication and authorization of every API request.
//!
//! The middleware finds the route's row in [`super::access::ACCESS`], and for a route
//! that needs a role reads `Authorization: Bearer <token>` (never a cookie: a browser
//! does not add this header to a forged request by itself), checks it against the
//! [`TokenStore`] (or, if it is shaped like a JWT and `api.auth.jwt` is set, checks it as
//! one: [`jwt`]), and hands the handler the [`Caller`] with its [`Grants`]. Every failure
//! gets the same 401, whatever went wrong, and is counted by reason in
//! `api_auth_failures_total`; an address that fails too often gets 429 for a while
//! ([`limit`]). A valid token with too small a role gets 403: on a route of
//! [`Access::Role`], its role on every device counts; on a device route
//! ([`Access::Device`]), any of its roles, and the handler checks the device's tags.

mod grants;
mod jwks;
mod jwt;
mod limit;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use self::jwt::{JwtRejection, JwtVerifier, looks_like_jwt};
use self::limit::FailureLimiter;
use super::ApiState;
use super::access::{self, Access};
use crate::telemetry::events::ApiAuthFailed;
use crate::tokens::{Grant, Role, TokenStore};

pub use self::grants::Grants;

/// Who is calling, as the handlers (and the audit log) see them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The token's name, or a JWT's `name`, `preferred_username` or `sub`.
    pub name: String,
    pub grants: Grants,
}

impl Caller {
    /// A caller with `role` on everything (the control socket).
    pub fn everywhere(name: &str, role: Role) -> Self {
        Self {
            name: name.to_owned(),
            grants: Grants::new(vec![Grant::everywhere(role)]),
        }
    }
}

/// What authentication needs: the tokens, the JWT checker, the limiter, the settings.
pub struct Auth {
    tokens: Option<Arc<TokenStore>>,
    jwt: Option<JwtVerifier>,
    limiter: FailureLimiter,
    public_metrics: bool,
}

impl Auth {
    /// With no `tokens` and no `jwt` settings, every route that needs a role is refused.
    /// Fails on `api.auth.jwt` settings that name no usable key source.
    pub fn new(
        tokens: Option<Arc<TokenStore>>,
        settings: &crate::config::ApiAuthConfig,
    ) -> Result<Self, String> {
        let jwt = settings.jwt.as_ref().map(JwtVerifier::new).transpose()?;
        Ok(Self {
            tokens,
            jwt,
            limiter: FailureLimiter::new(settings.failures_per_minute.get()),
            public_metrics: settings.public_metrics,
        })
    }

    pub fn tokens(&self) -> Option<&Arc<TokenStore>> {
        self.tokens.as_ref()
    }
}

fn refusal(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, axum::Json(json!({ "error": message.to_string() }))).into_response()
}

/// The one answer to every failed authentication.
fn unauthorized() -> Response {
    let mut response = refusal(
        StatusCode::UNAUTHORIZED,
        "authentication required: send `Authorization: Bearer <token>` with a valid API token",
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"weir\""),
    );
    response
}

/// The middleware.
pub async fn authenticate(
    State(state): State<Arc<ApiState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(path) = request.extensions().get::<MatchedPath>().cloned() else {
        // No route: the router's 404.
        return next.run(request).await;
    };
    let (needed, on_devices) = match access::lookup(request.method(), path.as_str()) {
        Some(Access::Public) => return next.run(request).await,
        Some(Access::Metrics) if state.auth.public_metrics => return next.run(request).await,
        Some(Access::Metrics) => (Role::Viewer, false),
        Some(Access::Role(role)) => (role, false),
        Some(Access::Device(role)) => (role, true),
        None if access::knows_path(path.as_str()) => return next.run(request).await,
        None => {
            tracing::error!(
                route = path.as_str(),
                "a route without a row in the access table"
            );
            return refusal(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the route {} has no access rule", path.as_str()),
            );
        }
    };
    let address = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
    let auth = &state.auth;
    let now = Instant::now();
    let failed = |reason: &'static str| {
        ApiAuthFailed { reason }.emit(state.telemetry.metrics());
        auth.limiter.failed(address, now);
        tracing::debug!(%address, reason, route = path.as_str(), "API authentication failed");
        unauthorized()
    };
    if let Some(left) = auth.limiter.blocked(address, now) {
        ApiAuthFailed {
            reason: "rate_limited",
        }
        .emit(state.telemetry.metrics());
        let mut response = refusal(
            StatusCode::TOO_MANY_REQUESTS,
            "too many failed authentications from this address: try again later",
        );
        if let Ok(value) = HeaderValue::from_str(&left.as_secs().max(1).to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        return response;
    }
    let presented = match request.headers().get(header::AUTHORIZATION) {
        None => return failed("missing"),
        Some(value) => match value.to_str().ok().and_then(bearer) {
            Some(token) => token.to_owned(),
            None => return failed("malformed"),
        },
    };
    let caller = match (&auth.jwt, looks_like_jwt(&presented)) {
        (Some(verifier), true) => match verifier.verify(&presented).await {
            Ok(found) => Caller {
                name: found.name,
                grants: Grants::new(found.grants),
            },
            Err(JwtRejection::Invalid(reason)) => return failed(reason),
            Err(JwtRejection::NoRole { caller }) => {
                tracing::debug!(%address, caller, "a valid JWT maps to no role");
                return refusal(
                    StatusCode::FORBIDDEN,
                    "the token maps to no role: see `api.auth.jwt.role_map`",
                );
            }
        },
        _ => {
            let Some(tokens) = auth.tokens.clone() else {
                return failed("unknown_token");
            };
            let (holder, persist) = match tokens.authenticate(&presented) {
                Ok(found) => found,
                Err(rejection) => return failed(rejection.reason()),
            };
            if persist {
                tokio::task::spawn_blocking(move || {
                    if let Err(e) = tokens.save() {
                        tracing::warn!("cannot note the last use of an API token: {e}");
                    }
                });
            }
            Caller {
                name: holder.name,
                grants: Grants::new(vec![holder.grant]),
            }
        }
    };
    // The answer names its caller too, for the audit log outside.
    // A scoped role reaches device routes only; the handler checks the device itself.
    let reach = match on_devices {
        true => caller.grants.highest(),
        false => caller.grants.everywhere(),
    };
    let mut response = if reach < Some(needed) {
        refusal(
            StatusCode::FORBIDDEN,
            format!(
                "this needs the `{needed}` role; the token `{}` has `{}`",
                caller.name,
                caller.grants.describe()
            ),
        )
    } else {
        request.extensions_mut().insert(caller.clone());
        next.run(request).await
    };
    response.extensions_mut().insert(caller);
    response
}

/// The token of `Bearer <token>` (the scheme in any case).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_and_other_schemes_are_not() {
        assert_eq!(bearer("Bearer weir_abc"), Some("weir_abc"));
        assert_eq!(bearer("bearer  weir_abc "), Some("weir_abc"));
        assert_eq!(bearer("Basic dXNlcjpwYXNz"), None);
        assert_eq!(bearer("Bearer"), None);
        assert_eq!(bearer("weir_abc"), None);
    }
}
