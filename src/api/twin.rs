//! A device's twin as the service side of an IoT hub shows it: `GET
//! /v1/devices/{id}/twin` answers `{"desired": {…, "$version": n}, "reported": {…,
//! "$version": m}}`, and `PATCH /v1/devices/{id}/twin/desired` merges a JSON merge patch
//! into the desired properties (`null` deletes; `If-Match` honoured, as for every device
//! change), which bumps the desired `$version` and reaches the device if it is connected
//! to a device gateway and subscribed to desired changes. A device's reported properties
//! are its own: it changes them over its connection.

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use utoipa_axum::routes;

use super::access::Routes;
use super::openapi::ErrorBody;
use super::records::{Answer, IfMatch, answer, blocking, error, in_scope, parse, registry};
use super::{ApiState, Caller, scope};
use crate::registry::Properties;
use crate::registry::twin::{self, Side};
use crate::tokens::Role;

pub fn routes(routes: Routes) -> Routes {
    routes.route(routes!(fetch)).route(routes!(patch_desired))
}

/// The twin of a device: its desired and reported properties with their `$version`s;
/// `ETag` header.
#[utoipa::path(
    get,
    path = "/v1/devices/{id}/twin",
    operation_id = "get_device_twin",
    tag = "devices",
    params(("id" = String, Path, description = "The device's id")),
    responses(
        (status = 200, description = "The twin: `desired` and `reported`, each with its `$version`", body = Object),
        (status = 404, description = "No such device", body = ErrorBody),
    )
)]
async fn fetch(
    State(state): State<Arc<ApiState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    answer((|| {
        in_scope(&state, &caller, &id, Role::Viewer)?;
        let device = registry(&state)?
            .get(&id)
            .ok_or_else(|| error(StatusCode::NOT_FOUND, format!("device `{id}` not found")))?;
        Ok(Answer(
            StatusCode::OK,
            twin::document(&device),
            Some(device.etag),
        ))
    })())
}

/// Merges a patch into a device's desired properties (`null` deletes); the twin after
/// it. The device gets the patch with the new `$version` if it is connected.
#[utoipa::path(
    patch,
    path = "/v1/devices/{id}/twin/desired",
    operation_id = "patch_device_twin_desired",
    tag = "devices",
    params(
        ("id" = String, Path, description = "The device's id"),
        IfMatch,
    ),
    request_body(content = Object, description = "A JSON merge patch of the desired properties"),
    responses(
        (status = 200, description = "Changed: the twin", body = Object),
        (status = 400, description = "Not a JSON object, or a name starting with `$`", body = ErrorBody),
        (status = 404, description = "No such device", body = ErrorBody),
        (status = 412, description = "The device changed since the `If-Match` etag", body = ErrorBody),
    )
)]
async fn patch_desired(
    State(state): State<Arc<ApiState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let checked = (|| -> Result<_, Answer> {
        let checked = in_scope(&state, &caller, &id, Role::Operator)?;
        let patch: Properties = parse(&body)?;
        Ok((patch, checked))
    })();
    let (patch, checked) = match checked {
        Ok(checked) => checked,
        Err(refused) => return refused.into_response(),
    };
    let tag = scope::if_match(IfMatch::of(&headers).tag, checked);
    answer(
        blocking(&state, move |r| {
            r.patch_twin(&id, Side::Desired, patch, tag.as_deref())
        })
        .await
        .map(|device| Answer(StatusCode::OK, twin::document(&device), Some(device.etag))),
    )
}
