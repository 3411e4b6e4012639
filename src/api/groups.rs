//! The registry's enrollment groups: `/v1/enrollment-groups` (answered as
//! [`super::devices`] answers, with `ETag` and `If-Match`).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::routes;

use super::ApiState;
use super::access::Routes;
use super::openapi::ErrorBody;
use super::records::{
    Answer, IfMatch, answer, blocking, change, error, parse, record, registry, removal,
};
use crate::registry::{EnrollmentGroup, GroupPatch, GroupSpec};

pub fn routes(routes: Routes) -> Routes {
    routes
        .route(routes!(list_groups))
        .route(routes!(create_group))
        .route(routes!(fetch_group))
        .route(routes!(update_group))
        .route(routes!(remove_group))
}

/// Every enrollment group.
#[derive(Serialize, ToSchema)]
struct GroupList {
    enrollment_groups: Vec<EnrollmentGroup>,
}

/// Creates an enrollment group; a missing key is generated.
#[utoipa::path(
    post,
    path = "/v1/enrollment-groups",
    operation_id = "create_enrollment_group",
    tag = "enrollment-groups",
    request_body = GroupSpec,
    responses(
        (status = 201, description = "Created", body = EnrollmentGroup),
        (status = 409, description = "A group with this id exists", body = ErrorBody),
    )
)]
async fn create_group(State(state): State<Arc<ApiState>>, body: Bytes) -> Response {
    answer(
        async {
            let spec: GroupSpec = parse(&body)?;
            let group = blocking(&state, move |r| r.create_group(spec)).await?;
            Ok(record(StatusCode::CREATED, &group, &group.etag))
        }
        .await,
    )
}

/// Every enrollment group, with its key.
#[utoipa::path(
    get,
    path = "/v1/enrollment-groups",
    operation_id = "list_enrollment_groups",
    tag = "enrollment-groups",
    responses(
        (status = 200, body = GroupList),
    )
)]
async fn list_groups(State(state): State<Arc<ApiState>>) -> Response {
    answer((|| {
        let groups = registry(&state)?.groups();
        Ok(Answer(
            StatusCode::OK,
            serde_json::to_value(GroupList {
                enrollment_groups: groups,
            })
            .unwrap_or(Value::Null),
            None,
        ))
    })())
}

/// One enrollment group, with its key.
#[utoipa::path(
    get,
    path = "/v1/enrollment-groups/{id}",
    operation_id = "get_enrollment_group",
    tag = "enrollment-groups",
    params(("id" = String, Path, description = "The group's id")),
    responses(
        (status = 200, body = EnrollmentGroup),
        (status = 404, description = "No such group", body = ErrorBody),
    )
)]
async fn fetch_group(State(state): State<Arc<ApiState>>, Path(id): Path<String>) -> Response {
    answer((|| {
        let group = registry(&state)?.group(&id).ok_or_else(|| {
            error(
                StatusCode::NOT_FOUND,
                format!("enrollment group `{id}` not found"),
            )
        })?;
        Ok(record(StatusCode::OK, &group, &group.etag))
    })())
}

/// Changes an enrollment group: each field given replaces the stored one.
#[utoipa::path(
    patch,
    path = "/v1/enrollment-groups/{id}",
    operation_id = "update_enrollment_group",
    tag = "enrollment-groups",
    params(
        ("id" = String, Path, description = "The group's id"),
        IfMatch,
    ),
    request_body = GroupPatch,
    responses(
        (status = 200, description = "Changed", body = EnrollmentGroup),
        (status = 404, description = "No such group", body = ErrorBody),
    )
)]
async fn update_group(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match parse::<GroupPatch>(&body) {
        Ok(patch) => {
            change(&state, id, &headers, None, move |r, id, tag| {
                r.update_group(id, patch, tag)
            })
            .await
        }
        Err(e) => e.into_response(),
    }
}

/// Deletes an enrollment group.
#[utoipa::path(
    delete,
    path = "/v1/enrollment-groups/{id}",
    operation_id = "delete_enrollment_group",
    tag = "enrollment-groups",
    params(
        ("id" = String, Path, description = "The group's id"),
        IfMatch,
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such group", body = ErrorBody),
    )
)]
async fn remove_group(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    removal(&state, id, &headers, |r, id, tag| r.delete_group(id, tag)).await
}
