//! The answers of the registry's routes ([`super::devices`], [`super::groups`]): a record
//! with its `ETag`, or `{"error": "..."}` with the status a [`RegistryError`] calls for;
//! changes run off the async threads and honour `If-Match`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use utoipa::IntoParams;

use super::{ApiState, Caller, scope};
use crate::registry::{Registry, RegistryError};
use crate::tokens::Role;

/// An answer of this API: a status with a JSON body and maybe an `ETag`.
pub struct Answer(pub StatusCode, pub Value, pub Option<String>);

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

pub fn error(status: StatusCode, message: impl std::fmt::Display) -> Answer {
    Answer(status, json!({ "error": message.to_string() }), None)
}

impl From<RegistryError> for Answer {
    fn from(e: RegistryError) -> Self {
        let status = match &e {
            RegistryError::NotFound(_) => StatusCode::NOT_FOUND,
            RegistryError::Exists(_) => StatusCode::CONFLICT,
            RegistryError::EtagMismatch { .. } => StatusCode::PRECONDITION_FAILED,
            RegistryError::Invalid(_) => StatusCode::BAD_REQUEST,
            RegistryError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
            // Only a batch run's registry is read-only, and a batch run serves no API.
            RegistryError::ReadOnly(_) => StatusCode::CONFLICT,
        };
        error(status, e)
    }
}

pub fn record<T: Serialize>(status: StatusCode, value: &T, etag: &str) -> Answer {
    Answer(
        status,
        serde_json::to_value(value).unwrap_or(Value::Null),
        Some(etag.to_owned()),
    )
}

pub fn registry(state: &ApiState) -> Result<Arc<Registry>, Answer> {
    state.registry().ok_or_else(|| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this weir has no device registry: add a `registry:` section to the pipeline",
        )
    })
}

/// [`scope::check`] as an answer: the etag a scoped caller's change is pinned to.
pub fn in_scope(
    state: &ApiState,
    caller: &Caller,
    id: &str,
    needed: Role,
) -> Result<Option<String>, Answer> {
    scope::check(&*registry(state)?, caller, id, needed)
        .map_err(|(status, message)| error(status, message))
}

pub fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, Answer> {
    serde_json::from_slice(body).map_err(|e| error(StatusCode::BAD_REQUEST, e))
}

/// The `If-Match` header of a change: it is made only if the record's etag is this
/// (412 otherwise).
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
pub struct IfMatch {
    /// Change only if the record's etag is this (as its `ETag` gave it).
    #[param(rename = "If-Match")]
    pub tag: Option<String>,
}

impl IfMatch {
    pub fn of(headers: &HeaderMap) -> Self {
        Self {
            tag: headers
                .get(header::IF_MATCH)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        }
    }
}

/// Runs a registry change off the async threads (each one waits for an fsync).
pub async fn blocking<T: Send + 'static>(
    state: &ApiState,
    work: impl FnOnce(&Registry) -> Result<T, RegistryError> + Send + 'static,
) -> Result<T, Answer> {
    let registry = registry(state)?;
    match tokio::task::spawn_blocking(move || work(&registry)).await {
        Ok(result) => result.map_err(Answer::from),
        Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e)),
    }
}

pub fn answer(result: Result<Answer, Answer>) -> Response {
    match result {
        Ok(a) | Err(a) => a.into_response(),
    }
}

/// A record with an etag, answered with its `ETag` header.
pub trait Etagged: Serialize + Send + 'static {
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
pub async fn change<T: Etagged>(
    state: &ApiState,
    id: String,
    headers: &HeaderMap,
    checked: Option<String>,
    op: impl FnOnce(&Registry, &str, Option<&str>) -> Result<T, RegistryError> + Send + 'static,
) -> Response {
    let tag = super::scope::if_match(IfMatch::of(headers).tag, checked);
    answer(
        blocking(state, move |r| op(r, &id, tag.as_deref()))
            .await
            .map(|record_| record(StatusCode::OK, &record_, record_.etag())),
    )
}

/// A removal that honours `If-Match`; 204.
pub async fn removal(
    state: &ApiState,
    id: String,
    headers: &HeaderMap,
    op: impl FnOnce(&Registry, &str, Option<&str>) -> Result<(), RegistryError> + Send + 'static,
) -> Response {
    let tag = IfMatch::of(headers).tag;
    answer(
        blocking(state, move |r| op(r, &id, tag.as_deref()))
            .await
            .map(|()| Answer(StatusCode::NO_CONTENT, Value::Null, None)),
    )
}
