//! `POST /v1/devices/{id}/methods/{name}`: calls direct method `name` on a connected
//! device and answers with the device's `{status, payload}`.
//!
//! The body: `{"payload": any JSON, "response_timeout": 5..=300, "connect_timeout":
//! 0..=300}` (seconds; `payload` required, `null` allowed; defaults 30 and 0). The
//! request goes to the device's own connection only, through the `device_sessions`
//! service the device gateways register their devices in. 200 with the device's answer
//! (whatever status it chose); 404 when the device is not in the registry, or not
//! connected and subscribed to direct methods within `connect_timeout` (or disconnected
//! before answering); 504 when it does not answer within `response_timeout`; 503 while
//! no device gateway (nor `direct_method` action) runs.

use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::routes;

use super::access::Routes;
use super::openapi::ErrorBody;
use super::records::{Answer, error, in_scope, parse, registry};
use super::{ApiState, Caller};
use crate::device_sessions::{CallError, DeviceSessions};
use crate::tokens::Role;

pub fn routes(routes: Routes) -> Routes {
    routes.route(routes!(invoke))
}

/// A direct-method call.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct MethodCall {
    /// What the device gets as the method's payload (JSON; `null` for none).
    #[schema(value_type = Object)]
    payload: Value,
    /// Seconds to wait for the device's answer, 5 to 300 (default 30).
    #[serde(default = "default_response_timeout")]
    #[schema(minimum = 5, maximum = 300)]
    response_timeout: u64,
    /// Seconds to wait for the device to connect and subscribe to direct methods, 0 to
    /// 300 (default 0: it must be connected now).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 300)]
    connect_timeout: u64,
}

fn default_response_timeout() -> u64 {
    30
}

/// The device's answer.
#[derive(Serialize, ToSchema)]
struct MethodResult {
    /// The status the device answered with.
    status: i64,
    /// The device's payload: JSON, or its text when it is not JSON; `null` when empty.
    #[schema(value_type = Object)]
    payload: Value,
}

/// Calls a direct method on a connected device.
#[utoipa::path(
    post,
    path = "/v1/devices/{id}/methods/{name}",
    operation_id = "invoke_device_method",
    tag = "devices",
    params(
        ("id" = String, Path, description = "The device's id"),
        ("name" = String, Path, description = "The method's name"),
    ),
    request_body = MethodCall,
    responses(
        (status = 200, description = "The device answered", body = MethodResult),
        (status = 404, description = "No such device, or it is not connected", body = ErrorBody),
        (status = 504, description = "The device did not answer in time", body = ErrorBody),
    )
)]
async fn invoke(
    State(state): State<Arc<ApiState>>,
    Extension(caller): Extension<Caller>,
    Path((id, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let request = (|| -> Result<MethodCall, Answer> {
        in_scope(&state, &caller, &id, Role::Operator)?;
        let request: MethodCall = parse(&body)?;
        if !(5..=300).contains(&request.response_timeout) {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "`response_timeout` must be 5 to 300 seconds",
            ));
        }
        if request.connect_timeout > 300 {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "`connect_timeout` must be 0 to 300 seconds",
            ));
        }
        if registry(&state)?.lookup(&id).is_none() {
            return Err(error(
                StatusCode::NOT_FOUND,
                format!("device `{id}` not found"),
            ));
        }
        Ok(request)
    })();
    let request = match request {
        Ok(request) => request,
        Err(refused) => return refused.into_response(),
    };
    let Some(sessions) = state.service::<DeviceSessions>() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no device gateway runs: add a `device_gateway` source to the pipeline",
        )
        .into_response();
    };
    let called = sessions
        .call(
            &id,
            &name,
            &request.payload,
            Duration::from_secs(request.response_timeout),
            Duration::from_secs(request.connect_timeout),
        )
        .await;
    match called {
        Ok(answer) => (
            StatusCode::OK,
            axum::Json(MethodResult {
                status: answer.status,
                payload: answer.payload,
            }),
        )
            .into_response(),
        Err(e @ (CallError::NotConnected | CallError::Disconnected)) => {
            error(StatusCode::NOT_FOUND, format!("device `{id}`: {e}")).into_response()
        }
        Err(e @ CallError::Timeout) => error(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "device `{id}`: {e} ({} s); it may still act on the call",
                request.response_timeout
            ),
        )
        .into_response(),
    }
}
