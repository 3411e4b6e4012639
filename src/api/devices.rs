//! The registry's admin API: `/v1/devices` (and the answers it shares with
//! `/v1/enrollment-groups`, [`super::groups`]).
//!
//! | method and path | does |
//! | --- | --- |
//! | `POST /v1/devices` | create (201, the record with its keys) |
//! | `GET /v1/devices?after=ID&limit=N&tag=key=value` | list in id order, paged, filtered by tags (keys left out) |
//! | `GET /v1/devices/{id}` | the record with its keys; `ETag` header |
//! | `PATCH /v1/devices/{id}` | change fields; `If-Match: <etag>` or 412 |
//! | `DELETE /v1/devices/{id}` | remove (204); `If-Match` honoured |
//! | `POST /v1/devices/{id}/enable`, `/disable`, `/rotate-key` | as named; `If-Match` honoured |
//! | `POST /v1/devices/import` | `[{...}, ...]`: one transaction; one outcome per row |
//! | `POST/GET /v1/enrollment-groups`, `GET/PATCH/DELETE /v1/enrollment-groups/{id}` | the same for groups |
//!
//! Errors are `{"error": "..."}` with 400 (bad request), 404, 409 (exists), 412 (etag),
//! 500 (the store failed) or 503 (no `registry:` section in the pipeline); the answers
//! themselves are made in [`super::records`]. A caller whose role is limited to devices by
//! tag sees and acts on the devices in scope only (see [`super::scope`]).

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use percent_encoding::percent_decode_str;
use serde::Serialize;
use serde_json::{Value, json};

use utoipa::ToSchema;
use utoipa_axum::router::UtoipaMethodRouter;
use utoipa_axum::routes;

use super::access::{Routes, patch_field_role};
use super::openapi::ErrorBody;
use super::records::{
    Answer, IfMatch, answer, blocking, change, error, in_scope, parse, record, registry, removal,
};
use super::{ApiState, Caller, scope};
use crate::registry::{Device, DevicePatch, DeviceSpec, ImportOutcome, Page, Status};
use crate::tokens::Role;

/// Most devices a list page holds.
const MAX_PAGE: usize = 1000;
/// Most rows one import request may carry (the CLI sends chunks).
const MAX_IMPORT_ROWS: usize = 50_000;
/// Most bytes one import request may carry: 50 000 rows of about 1 KiB.
const MAX_IMPORT_BYTES: usize = 64 << 20;

pub fn routes(routes: Routes) -> Routes {
    routes
        .route(routes!(list))
        .route(routes!(create))
        .route(import_route())
        .route(routes!(fetch))
        .route(routes!(update))
        .route(routes!(remove))
        .route(routes!(enable))
        .route(routes!(disable))
        .route(routes!(rotate_key))
        .route(routes!(sas_token))
}

/// `POST /v1/devices/import`, with room for [`MAX_IMPORT_ROWS`] rows: axum's default
/// body limit (2 MiB) refused a tenth of them with keys and tags.
fn import_route() -> UtoipaMethodRouter<Arc<ApiState>> {
    let (schemas, paths, route) = routes!(import);
    (
        schemas,
        paths,
        route.layer(DefaultBodyLimit::max(MAX_IMPORT_BYTES)),
    )
}

/// Registers a device; missing keys are generated.
#[utoipa::path(
    post,
    path = "/v1/devices",
    operation_id = "create_device",
    tag = "devices",
    request_body = DeviceSpec,
    responses(
        (status = 201, description = "Created, with its keys", body = Device),
        (status = 409, description = "A device with this id exists", body = ErrorBody),
    )
)]
async fn create(State(state): State<Arc<ApiState>>, body: Bytes) -> Response {
    answer(
        async {
            let spec: DeviceSpec = parse(&body)?;
            let device = blocking(&state, move |r| r.create(spec)).await?;
            Ok(record(StatusCode::CREATED, &device, &device.etag))
        }
        .await,
    )
}

/// The device; its keys only for `admin`.
#[utoipa::path(
    get,
    path = "/v1/devices/{id}",
    operation_id = "get_device",
    tag = "devices",
    params(("id" = String, Path, description = "The device's id")),
    responses(
        (status = 200, description = "The device (its keys for `admin` only)", body = Device),
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
        let mut shown = record(StatusCode::OK, &device, &device.etag);
        if caller.grants.everywhere() < Some(Role::Admin)
            && let Value::Object(fields) = &mut shown.1
        {
            fields.remove("primary_key");
            fields.remove("secondary_key");
        }
        Ok(shown)
    })())
}

/// The devices in id order, a page at a time, without their keys.
#[utoipa::path(
    get,
    path = "/v1/devices",
    operation_id = "list_devices",
    tag = "devices",
    params(
        ("after" = Option<String>, Query, description = "The `next` of the page before"),
        ("limit" = Option<usize>, Query, minimum = 1, maximum = 1000, description = "Most devices in the page (default 100)"),
        ("tag" = Option<Vec<String>>, Query, description = "Only devices with this tag, `key=value`; repeatable", explode = true, style = Form, pattern = "^[^=:]*[=:]"),
    ),
    responses(
        (status = 200, body = Page),
    )
)]
async fn list(
    State(state): State<Arc<ApiState>>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
) -> Response {
    answer((|| {
        let registry = registry(&state)?;
        let (mut after, mut limit, mut tags) = (None, 100, Vec::new());
        for (name, value) in query_pairs(query.as_deref().unwrap_or_default()) {
            match name.as_str() {
                "after" => after = Some(value),
                "limit" => {
                    limit = value
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=MAX_PAGE).contains(n))
                        .ok_or_else(|| {
                            error(
                                StatusCode::BAD_REQUEST,
                                format!("`limit` must be 1 to {MAX_PAGE}"),
                            )
                        })?
                }
                "tag" => {
                    let (key, wanted) = value
                        .split_once('=')
                        .or_else(|| value.split_once(':'))
                        .ok_or_else(|| {
                            error(StatusCode::BAD_REQUEST, "`tag` must be `key=value`")
                        })?;
                    tags.push((key.to_owned(), wanted.to_owned()));
                }
                other => {
                    return Err(error(
                        StatusCode::BAD_REQUEST,
                        format!("unknown query parameter `{other}` (after, limit, tag)"),
                    ));
                }
            }
        }
        let page = registry.list_where(after.as_deref(), limit, &|device| {
            device.has_tags(&tags) && scope::lists(&caller, device)
        });
        Ok(Answer(
            StatusCode::OK,
            serde_json::to_value(page).unwrap_or(Value::Null),
            None,
        ))
    })())
}

/// `a=1&b=x%3Dy` into decoded pairs (repeated names kept, for `tag`).
fn query_pairs(query: &str) -> Vec<(String, String)> {
    let decode = |s: &str| {
        percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((name, value)) => (decode(name), decode(value)),
            None => (decode(pair), String::new()),
        })
        .collect()
}

/// Changes a device: each field given replaces the stored one (keys need `admin`).
#[utoipa::path(
    patch,
    path = "/v1/devices/{id}",
    operation_id = "update_device",
    tag = "devices",
    params(
        ("id" = String, Path, description = "The device's id"),
        IfMatch,
    ),
    request_body = DevicePatch,
    responses(
        (status = 200, description = "Changed", body = Device),
        (status = 404, description = "No such device", body = ErrorBody),
    )
)]
async fn update(
    State(state): State<Arc<ApiState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let checked = (|| -> Result<_, Answer> {
        let needed = patch_allowed(&caller, &body)?;
        let patch = parse::<DevicePatch>(&body)?;
        let checked = in_scope(&state, &caller, &id, needed)?;
        if let (Some(_), Some(tags)) = (&checked, &patch.tags) {
            scope::check_new_tags(&caller, tags, needed)
                .map_err(|(status, message)| error(status, message))?;
        }
        Ok((patch, checked))
    })();
    match checked {
        Ok((patch, checked)) => {
            change(&state, id, &headers, checked, move |r, id, tag| {
                r.update(id, patch, tag)
            })
            .await
        }
        Err(e) => e.into_response(),
    }
}

/// Refuses a patch with a field the caller's role does not reach (keys need `admin`);
/// else the role the patch needs.
fn patch_allowed(caller: &Caller, body: &Bytes) -> Result<Role, Answer> {
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(body) else {
        // Not an object: the parse that follows says why.
        return Ok(Role::Operator);
    };
    let highest = caller.grants.highest();
    match fields
        .keys()
        .map(|field| (field, patch_field_role(field)))
        .find(|(_, needed)| highest < Some(*needed))
    {
        Some((field, needed)) => Err(error(
            StatusCode::FORBIDDEN,
            format!(
                "changing `{field}` needs the `{needed}` role; the token `{}` has `{}`",
                caller.name,
                caller.grants.describe()
            ),
        )),
        None => Ok(fields
            .keys()
            .map(|field| patch_field_role(field))
            .fold(Role::Operator, Role::max)),
    }
}

/// Deletes a device.
#[utoipa::path(
    delete,
    path = "/v1/devices/{id}",
    operation_id = "delete_device",
    tag = "devices",
    params(
        ("id" = String, Path, description = "The device's id"),
        IfMatch,
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such device", body = ErrorBody),
    )
)]
async fn remove(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    removal(&state, id, &headers, |r, id, tag| r.delete(id, tag)).await
}

/// Lets a device send.
#[utoipa::path(
    post,
    path = "/v1/devices/{id}/enable",
    operation_id = "enable_device",
    tag = "devices",
    params(
        ("id" = String, Path, description = "The device's id"),
        IfMatch,
    ),
    responses(
        (status = 200, description = "Enabled", body = Device),
        (status = 404, description = "No such device", body = ErrorBody),
    )
)]
async fn enable(
    State(state): State<Arc<ApiState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    set_status(&state, &caller, id, &headers, Status::Enabled).await
}

/// Refuses a device's messages from now on.
#[utoipa::path(
    post,
    path = "/v1/devices/{id}/disable",
    operation_id = "disable_device",
    tag = "devices",
    params(
        ("id" = String, Path, description = "The device's id"),
        IfMatch,
    ),
    responses(
        (status = 200, description = "Disabled", body = Device),
        (status = 404, description = "No such device", body = ErrorBody),
    )
)]
async fn disable(
    State(state): State<Arc<ApiState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    set_status(&state, &caller, id, &headers, Status::Disabled).await
}

async fn set_status(
    state: &ApiState,
    caller: &Caller,
    id: String,
    headers: &HeaderMap,
    status: Status,
) -> Response {
    match in_scope(state, caller, &id, Role::Operator) {
        Ok(checked) => {
            change(state, id, headers, checked, move |r, id, tag| {
                r.set_status(id, status, tag)
            })
            .await
        }
        Err(refused) => refused.into_response(),
    }
}

/// Rotates a device's keys.
#[utoipa::path(
    post,
    path = "/v1/devices/{id}/rotate-key",
    operation_id = "rotate_device_key",
    tag = "devices",
    params(
        ("id" = String, Path, description = "The device's id"),
        IfMatch,
    ),
    responses(
        (status = 200, description = "Rotated: the old primary key is the secondary", body = Device),
        (status = 404, description = "No such device", body = ErrorBody),
    )
)]
async fn rotate_key(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    change(&state, id, &headers, None, |r, id, tag| {
        r.rotate_key(id, tag)
    })
    .await
}

/// A SAS token to issue.
#[derive(serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct SasRequest {
    /// How long the token is valid (default `1h`).
    #[serde(default = "default_sas_ttl")]
    #[schema(value_type = String, pattern = r"^[0-9]+(ms|s|m|h|d)$")]
    ttl: crate::config::Duration,
    /// Which of the device's keys signs it (default `primary`).
    #[serde(default)]
    key: SasKey,
}

/// A SAS token for a device.
#[derive(Serialize, ToSchema)]
struct SasAnswer {
    /// `SharedAccessSignature sr=...&sig=...&se=...`.
    token: String,
    /// When it expires, in seconds since 1970.
    expires: u64,
}

/// What a bulk import came to.
#[derive(Serialize, ToSchema)]
struct ImportResults {
    results: Vec<ImportOutcome>,
}

#[derive(Clone, Copy, Default, serde::Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
enum SasKey {
    #[default]
    Primary,
    Secondary,
}

impl Default for SasRequest {
    fn default() -> Self {
        Self {
            ttl: default_sas_ttl(),
            key: SasKey::default(),
        }
    }
}

fn default_sas_ttl() -> crate::config::Duration {
    crate::config::Duration(std::time::Duration::from_secs(3600))
}

/// `POST /v1/devices/{id}/sas-token` (`{"ttl": "1h", "key": "primary"}`, both optional):
/// a SAS token for the device, so an operator can issue one without reading its keys.
#[utoipa::path(
    post,
    path = "/v1/devices/{id}/sas-token",
    operation_id = "issue_device_sas_token",
    tag = "devices",
    params(("id" = String, Path, description = "The device's id")),
    request_body = Option<SasRequest>,
    responses(
        (status = 200, body = SasAnswer),
        (status = 404, description = "No such device", body = ErrorBody),
    )
)]
async fn sas_token(
    State(state): State<Arc<ApiState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    answer((|| {
        in_scope(&state, &caller, &id, Role::Operator)?;
        // No body, or `null`, asks for the defaults.
        let request: SasRequest = match body.is_empty() {
            true => None,
            false => parse::<Option<SasRequest>>(&body)?,
        }
        .unwrap_or_default();
        let device = registry(&state)?
            .get(&id)
            .ok_or_else(|| error(StatusCode::NOT_FOUND, format!("device `{id}` not found")))?;
        let key = match request.key {
            SasKey::Primary => &device.primary_key,
            SasKey::Secondary => &device.secondary_key,
        };
        let key = crate::registry::keys::decode(key.expose_str()).ok_or_else(|| {
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the stored key of device `{id}` is not Base64"),
            )
        })?;
        // A ttl of more than 500 billion years would overflow (it panicked here once).
        let expiry = (jiff::Timestamp::now().as_second().max(0) as u64)
            .checked_add(request.ttl.get().as_secs())
            .ok_or_else(|| error(StatusCode::BAD_REQUEST, "the ttl is too long"))?;
        let token =
            crate::registry::sas::sign(&crate::registry::sas::device_resource(&id), &key, expiry);
        Ok(Answer(
            StatusCode::OK,
            json!(SasAnswer {
                token,
                expires: expiry
            }),
            None,
        ))
    })())
}

/// One outcome per row, in row order: rows that do not parse fail alone.
#[utoipa::path(
    post,
    path = "/v1/devices/import",
    operation_id = "import_devices",
    tag = "devices",
    request_body(content = Vec<DeviceSpec>, description = "At most 50000 devices, in one transaction; a row that is not a device fails alone"),
    responses(
        (status = 200, description = "One outcome per row, in row order", body = ImportResults),
        (status = 413, description = "More than 50000 rows", body = ErrorBody),
    )
)]
async fn import(State(state): State<Arc<ApiState>>, body: Bytes) -> Response {
    answer(
        async {
            let rows: Vec<Value> = parse(&body)?;
            if rows.len() > MAX_IMPORT_ROWS {
                return Err(error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("at most {MAX_IMPORT_ROWS} rows per request; send chunks"),
                ));
            }
            let mut outcomes: Vec<Option<ImportOutcome>> = Vec::with_capacity(rows.len());
            let mut specs = Vec::with_capacity(rows.len());
            for row in rows {
                match serde_json::from_value::<DeviceSpec>(row) {
                    Ok(spec) => {
                        specs.push(spec);
                        outcomes.push(None);
                    }
                    Err(e) => outcomes.push(Some(ImportOutcome::Failed {
                        error: e.to_string(),
                    })),
                }
            }
            let mut done = blocking(&state, move |r| r.import(specs))
                .await?
                .into_iter();
            let results: Vec<ImportOutcome> = outcomes
                .into_iter()
                .map(|o| {
                    o.or_else(|| done.next()).unwrap_or(ImportOutcome::Failed {
                        error: "internal error: no outcome".into(),
                    })
                })
                .collect();
            Ok(Answer(
                StatusCode::OK,
                json!(ImportResults { results }),
                None,
            ))
        }
        .await,
    )
}
