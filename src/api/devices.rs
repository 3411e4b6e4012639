//! The registry's admin API: `/v1/devices` and `/v1/enrollment-groups`.
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
//! 500 (the store failed) or 503 (no `registry:` section in the pipeline). A caller whose
//! role is limited to devices by tag sees and acts on the devices in scope only (see
//! [`super::scope`]).

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use percent_encoding::percent_decode_str;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::access::{Routes, patch_field_role};
use super::{ApiState, Caller, scope};
use crate::registry::{
    DevicePatch, DeviceSpec, GroupPatch, GroupSpec, ImportOutcome, Registry, RegistryError, Status,
};
use crate::tokens::Role;

/// Most devices a list page holds.
const MAX_PAGE: usize = 1000;
/// Most rows one import request may carry (the CLI sends chunks).
const MAX_IMPORT_ROWS: usize = 50_000;

pub fn routes(routes: Routes) -> Routes {
    routes
        .get("/v1/devices", list)
        .post("/v1/devices", create)
        .post("/v1/devices/import", import)
        .get("/v1/devices/{id}", fetch)
        .patch("/v1/devices/{id}", update)
        .delete("/v1/devices/{id}", remove)
        .post("/v1/devices/{id}/enable", enable)
        .post("/v1/devices/{id}/disable", disable)
        .post("/v1/devices/{id}/rotate-key", rotate_key)
        .post("/v1/devices/{id}/sas-token", sas_token)
        .get("/v1/enrollment-groups", list_groups)
        .post("/v1/enrollment-groups", create_group)
        .get("/v1/enrollment-groups/{id}", fetch_group)
        .patch("/v1/enrollment-groups/{id}", update_group)
        .delete("/v1/enrollment-groups/{id}", remove_group)
}

/// An answer of this API: a status with a JSON body and maybe an `ETag`.
struct Answer(StatusCode, Value, Option<String>);

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let mut response = (self.0, axum::Json(self.1)).into_response();
        if let Some(etag) = self
            .2
            .and_then(|e| HeaderValue::from_str(&format!("\"{e}\"")).ok())
        {
            response.headers_mut().insert(header::ETAG, etag);
        }
        response
    }
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Answer {
    Answer(status, json!({ "error": message.to_string() }), None)
}

/// [`scope::check`] as an answer: the etag a scoped caller's change is pinned to.
fn in_scope(
    state: &ApiState,
    caller: &Caller,
    id: &str,
    needed: Role,
) -> Result<Option<String>, Answer> {
    scope::check(&*registry(state)?, caller, id, needed)
        .map_err(|(status, message)| error(status, message))
}

impl From<RegistryError> for Answer {
    fn from(e: RegistryError) -> Self {
        let status = match &e {
            RegistryError::NotFound(_) => StatusCode::NOT_FOUND,
            RegistryError::Exists(_) => StatusCode::CONFLICT,
            RegistryError::EtagMismatch { .. } => StatusCode::PRECONDITION_FAILED,
            RegistryError::Invalid(_) => StatusCode::BAD_REQUEST,
            RegistryError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        error(status, e)
    }
}

fn record<T: Serialize>(status: StatusCode, value: &T, etag: &str) -> Answer {
    Answer(
        status,
        serde_json::to_value(value).unwrap_or(Value::Null),
        Some(etag.to_owned()),
    )
}

fn registry(state: &ApiState) -> Result<Arc<Registry>, Answer> {
    state.registry().ok_or_else(|| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this weir has no device registry: add a `registry:` section to the pipeline",
        )
    })
}

fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, Answer> {
    serde_json::from_slice(body).map_err(|e| error(StatusCode::BAD_REQUEST, e))
}

fn if_match(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Runs a registry change off the async threads (each one waits for an fsync).
async fn blocking<T: Send + 'static>(
    state: &ApiState,
    work: impl FnOnce(&Registry) -> Result<T, RegistryError> + Send + 'static,
) -> Result<T, Answer> {
    let registry = registry(state)?;
    match tokio::task::spawn_blocking(move || work(&registry)).await {
        Ok(result) => result.map_err(Answer::from),
        Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e)),
    }
}

fn answer(result: Result<Answer, Answer>) -> Response {
    match result {
        Ok(a) | Err(a) => a.into_response(),
    }
}

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

/// A record with an etag, answered with its `ETag` header.
trait Etagged: Serialize + Send + 'static {
    fn etag(&self) -> &str;
}

impl Etagged for crate::registry::Device {
    fn etag(&self) -> &str {
        &self.etag
    }
}

impl Etagged for crate::registry::EnrollmentGroup {
    fn etag(&self) -> &str {
        &self.etag
    }
}

/// A change to the record `id` that honours `If-Match` (or, for a scoped caller, the etag
/// its scope was checked against: `checked`); answers the changed record.
async fn change<T: Etagged>(
    state: &ApiState,
    id: String,
    headers: &HeaderMap,
    checked: Option<String>,
    op: impl FnOnce(&Registry, &str, Option<&str>) -> Result<T, RegistryError> + Send + 'static,
) -> Response {
    let tag = scope::if_match(if_match(headers), checked);
    answer(
        blocking(state, move |r| op(r, &id, tag.as_deref()))
            .await
            .map(|record_| record(StatusCode::OK, &record_, record_.etag())),
    )
}

/// A removal that honours `If-Match`; 204.
async fn removal(
    state: &ApiState,
    id: String,
    headers: &HeaderMap,
    op: impl FnOnce(&Registry, &str, Option<&str>) -> Result<(), RegistryError> + Send + 'static,
) -> Response {
    let tag = if_match(headers);
    answer(
        blocking(state, move |r| op(r, &id, tag.as_deref()))
            .await
            .map(|()| Answer(StatusCode::NO_CONTENT, Value::Null, None)),
    )
}

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

async fn remove(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    removal(&state, id, &headers, |r, id, tag| r.delete(id, tag)).await
}

async fn enable(
    State(state): State<Arc<ApiState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    set_status(&state, &caller, id, &headers, Status::Enabled).await
}

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

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SasRequest {
    #[serde(default = "default_sas_ttl")]
    ttl: crate::config::Duration,
    #[serde(default)]
    key: SasKey,
}

#[derive(Clone, Copy, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
enum SasKey {
    #[default]
    Primary,
    Secondary,
}

fn default_sas_ttl() -> crate::config::Duration {
    crate::config::Duration(std::time::Duration::from_secs(3600))
}

/// `POST /v1/devices/{id}/sas-token` (`{"ttl": "1h", "key": "primary"}`, both optional):
/// a SAS token for the device, so an operator can issue one without reading its keys.
async fn sas_token(
    State(state): State<Arc<ApiState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    answer((|| {
        in_scope(&state, &caller, &id, Role::Operator)?;
        let request: SasRequest = match body.is_empty() {
            true => parse(&Bytes::from_static(b"{}"))?,
            false => parse(&body)?,
        };
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
        let expiry = jiff::Timestamp::now().as_second().max(0) as u64 + request.ttl.get().as_secs();
        let token =
            crate::registry::sas::sign(&crate::registry::sas::device_resource(&id), &key, expiry);
        Ok(Answer(
            StatusCode::OK,
            json!({ "token": token, "expires": expiry }),
            None,
        ))
    })())
}

/// One outcome per row, in row order: rows that do not parse fail alone.
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
            Ok(Answer(StatusCode::OK, json!({ "results": results }), None))
        }
        .await,
    )
}

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

async fn list_groups(State(state): State<Arc<ApiState>>) -> Response {
    answer((|| {
        let groups = registry(&state)?.groups();
        Ok(Answer(
            StatusCode::OK,
            json!({ "enrollment_groups": groups }),
            None,
        ))
    })())
}

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

async fn remove_group(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    removal(&state, id, &headers, |r, id, tag| r.delete_group(id, tag)).await
}
