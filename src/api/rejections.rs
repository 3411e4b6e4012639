//! Every error answer is JSON: `{"error": "..."}` ([`super::openapi::ErrorBody`]).
//!
//! The handlers answer so themselves; axum's own rejections do not: a query or path
//! its extractors cannot read (400, `text/plain`), a body over the limit (413), a path
//! no route has (404) or a method the path does not take (405, both empty). The
//! middleware here rewrites any error answer that is not JSON into one that is, keeping
//! its status and headers (`Allow`, `WWW-Authenticate`, `Retry-After`), so that a client
//! (and the OpenAPI document) can count on one shape.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::openapi::ErrorBody;

/// Most of a non-JSON error body kept as its message (axum's are one line).
const MESSAGE_LIMIT: usize = 4096;

/// The middleware.
pub async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) || is_json(&response) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = match axum::body::to_bytes(body, MESSAGE_LIMIT).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).trim().to_owned(),
        Err(_) => String::new(),
    };
    let error = match text.is_empty() {
        true => status.canonical_reason().unwrap_or("error").to_owned(),
        false => text,
    };
    let json = axum::Json(ErrorBody { error }).into_response();
    let (json_parts, json_body) = json.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        json_parts
            .headers
            .get(header::CONTENT_TYPE)
            .cloned()
            .unwrap_or(HeaderValue::from_static("application/json")),
    );
    Response::from_parts(parts, Body::new(json_body))
}

fn is_json(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json"))
}
