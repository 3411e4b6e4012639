//! The admin API's OpenAPI 3.1 document, served at `GET /v1/openapi.json` and committed
//! at `schemas/admin-api.openapi.json` (`weir schema --openapi -o ...`; a test fails when
//! that file is stale).
//!
//! Each handler describes itself with `#[utoipa::path]` (its own answers and their types);
//! [`super::access::Routes`] collects those descriptions as it adds the routes. What every
//! route shares is added here, from the same tables the middleware reads: who may call it
//! ([`super::access::ACCESS`]: the bearer token it needs, 401, 403, 429), the request
//! forgery guard (403, 415), the rejections of malformed requests (400, 404, 413), and
//! what the registry's routes share (`ETag`, 412 for `If-Match`, 503 without a registry),
//! all of them [`ErrorBody`] ([`super::rejections`] makes axum's own ones JSON too).

use std::sync::OnceLock;

use axum::http::{Method, header};
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::openapi::header::Header;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, InfoBuilder, OpenApi, Ref, RefOr};
use utoipa::{PartialSchema, ToSchema};

use super::access::{self, Access};

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for a person.
    pub error: String,
}

/// The records answered with an `ETag`.
const ETAGGED: &[&str] = &["Device", "EnrollmentGroup"];

/// The routes of the device registry (503 without one).
const REGISTRY_PATHS: &[&str] = &["/v1/devices", "/v1/enrollment-groups"];

/// The name of the bearer security scheme.
const BEARER: &str = "bearer";

/// The document.
pub fn document() -> OpenApi {
    let mut api = super::routes().openapi().clone();
    api.info = InfoBuilder::new()
        .title("weir admin API")
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(
            "The admin API of weir: devices and enrollment groups, alarms, API tokens, the \
             audit log, reloads. Every `/v1` route needs `Authorization: Bearer <token>` \
             (an API token, or a JWT of the configured OIDC provider) with the role it names.",
        ))
        .build();
    let components = api.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        BEARER,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "An API token (`weir tokens create`) or a JWT of `api.auth.jwt`",
                ))
                .build(),
        ),
    );
    let mut error_schemas = Vec::new();
    ErrorBody::schemas(&mut error_schemas);
    components.schemas.extend(error_schemas);
    components
        .schemas
        .insert(ErrorBody::name().into_owned(), ErrorBody::schema());
    for (path, item) in api.paths.paths.iter_mut() {
        for (method, operation) in access::operations_mut(item) {
            if let Some(operation) = operation {
                describe_common(&method, path, operation);
            }
        }
    }
    api
}

/// The document as pretty-printed JSON with a trailing newline.
pub fn document_json() -> String {
    let mut text = document().to_pretty_json().unwrap_or_default();
    text.push('\n');
    text
}

/// What the access table, the forgery guard and the rejections add to an operation.
fn describe_common(method: &Method, path: &str, operation: &mut Operation) {
    let access = access::lookup(method, path);
    let bearer = || SecurityRequirement::new(BEARER, Vec::<String>::new());
    let (security, who) = match access {
        Some(Access::Public) => (vec![SecurityRequirement::default()], "Public.".to_owned()),
        Some(Access::Metrics) => (
            vec![bearer(), SecurityRequirement::default()],
            "Needs the `viewer` role, or nothing with `api.auth.public_metrics`.".to_owned(),
        ),
        Some(Access::Role(role)) => (vec![bearer()], format!("Needs the `{role}` role.")),
        Some(Access::Device(role)) => (
            vec![bearer()],
            format!(
                "Needs the `{role}` role on the device: a role scoped to devices by tag \
                 reaches the devices in its scope, and others answer 404."
            ),
        ),
        // A route without a row: the access test fails.
        None => (vec![bearer()], String::new()),
    };
    operation.security = Some(security);
    let description = operation.description.get_or_insert_with(String::new);
    if !description.is_empty() {
        description.push_str("\n\n");
    }
    description.push_str(&who);

    let mut errors = vec![(
        "403",
        "Refused: the `Host` or `Origin` is not of this API, or the role is too small",
    )];
    if matches!(
        access,
        Some(Access::Role(_) | Access::Device(_) | Access::Metrics)
    ) {
        errors.push(("401", "No valid token"));
        errors.push(("429", "Too many failed authentications from this address"));
    }
    let parameters = operation.parameters.as_deref().unwrap_or_default();
    if operation.request_body.is_some() {
        errors.push(("400", "A malformed parameter or body"));
        errors.push(("413", "The body is too large"));
        errors.push((
            "415",
            "A body that is not JSON (`Content-Type: application/json`)",
        ));
    }
    if parameters
        .iter()
        .any(|p| matches!(p.parameter_in, ParameterIn::Query | ParameterIn::Path))
    {
        errors.push(("400", "A malformed parameter"));
    }
    if path.contains('{') {
        errors.push(("404", "Not found"));
    }
    if parameters.iter().any(|p| p.name == "If-Match") {
        errors.push(("412", "The record's etag is not `If-Match`"));
    }
    if REGISTRY_PATHS.iter().any(|prefix| path.starts_with(prefix)) {
        errors.push((
            "503",
            "This weir has no registry: the pipeline has no `registry:` section",
        ));
    }
    for (status, response) in operation.responses.responses.iter_mut() {
        if let (true, RefOr::T(response)) = (status.starts_with('2'), response) {
            add_etag(response);
        }
    }
    for (status, description) in errors {
        if !operation.responses.responses.contains_key(status) {
            operation
                .responses
                .responses
                .insert(status.into(), error_response(description));
        }
    }
}

/// Registry records are answered with their `ETag` ([`super::records`]).
fn add_etag(response: &mut Response) {
    let answers_a_record = response.content.values().any(|content| {
        matches!(&content.schema, Some(RefOr::Ref(r)) if ETAGGED.iter().any(|name| {
            r.ref_location == format!("#/components/schemas/{name}")
        }))
    });
    if answers_a_record {
        let header = Header::builder()
            .schema(String::schema())
            .description(Some("The record's etag, quoted: `If-Match` takes it"))
            .build();
        response.headers.insert("ETag".into(), header);
    }
}

/// An answer with an [`ErrorBody`].
pub fn error_response(description: &str) -> RefOr<Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name(ErrorBody::name())))
                .build(),
        )
        .into()
}

/// The document, made once.
fn cached() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(document_json)
}

/// This document.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    operation_id = "openapi_document",
    tag = "meta",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", content_type = "application/json", body = Object)),
)]
pub async fn serve() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], cached())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn every_route_is_described_once_with_its_security() {
        let api = document();
        let mut ids = BTreeSet::new();
        let mut described = BTreeSet::new();
        for (path, item) in &api.paths.paths {
            for (method, operation) in access::operations(item) {
                let Some(operation) = operation else { continue };
                described.insert((method.to_string(), path.clone()));
                let id = operation.operation_id.clone().unwrap_or_default();
                assert!(ids.insert(id.clone()), "operationId `{id}` twice");
                assert!(operation.security.is_some(), "{method} {path}: no security");
            }
        }
        let table: BTreeSet<(String, String)> = access::ACCESS
            .iter()
            .map(|(m, p, _)| (m.to_string(), (*p).to_owned()))
            .collect();
        assert_eq!(described, table);
    }

    #[test]
    fn every_error_answer_is_json() {
        let api = document();
        for (path, item) in &api.paths.paths {
            for (method, operation) in access::operations(item) {
                let Some(operation) = operation else { continue };
                for (status, response) in &operation.responses.responses {
                    let RefOr::T(response) = response else {
                        panic!("{method} {path} {status}: a reference")
                    };
                    if status.as_str() >= "400" {
                        assert!(
                            response.content.contains_key("application/json"),
                            "{method} {path} {status}: not JSON"
                        );
                    }
                }
            }
        }
    }
}
