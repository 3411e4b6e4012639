//! Refusing requests a web page could make on an operator's behalf.
//!
//! A browser sends requests to any address a page names, from the operator's place in
//! the network: a page can POST a form to `127.0.0.1:8686` (request forgery), or make its
//! own host name resolve to `127.0.0.1` and read the answers (DNS rebinding). Three checks
//! on every route stop both:
//!
//! - `Host` must name this API: a rebound page's requests carry the page's host name;
//! - a request that has an `Origin` must come from a page of this API: browsers send one
//!   with every cross-site request that changes something, curl and `weir` send none;
//! - a request with a body must say it is JSON: the content types a form or a plain
//!   `fetch` can send without asking the server first (`text/plain`, form encodings) are
//!   refused, so no page can make a state-changing request look like an ordinary one.
//!
//! The names this API answers to are its listen address, `localhost`, `127.0.0.1` and
//! `[::1]` with its port, plus `api.allowed_hosts`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// The host names (with or without port) this API answers to.
#[derive(Clone, Debug)]
pub struct AllowedHosts {
    /// Lower-case `host:port` forms; a name given without a port also matches alone.
    names: Vec<String>,
}

impl AllowedHosts {
    /// The defaults for `listen`, plus `extra` names (`weir.example.com`,
    /// `weir.example.com:8443`, an address).
    pub fn new(listen: SocketAddr, extra: &[String]) -> Self {
        let port = listen.port();
        let ip = match listen.ip() {
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            std::net::IpAddr::V4(ip) => ip.to_string(),
        };
        let mut names: Vec<String> = [ip.as_str(), "localhost", "127.0.0.1", "[::1]"]
            .iter()
            .map(|host| format!("{host}:{port}"))
            .collect();
        for name in extra {
            let name = name.trim().to_ascii_lowercase();
            if has_port(&name) {
                names.push(name);
            } else {
                names.push(format!("{name}:{port}"));
                names.push(name);
            }
        }
        Self { names }
    }

    fn allows(&self, host: &str) -> bool {
        let host = host.trim().to_ascii_lowercase();
        self.names.contains(&host)
    }
}

/// Whether `name` ends with a port (`host:1`, `[::1]:1`; not `[::1]` or `::1`).
fn has_port(name: &str) -> bool {
    match name.rsplit_once(':') {
        Some((host, port)) => {
            !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && (!host.contains(':') || host.ends_with(']'))
        }
        None => false,
    }
}

/// The middleware: refuses what a page could have sent, before any handler runs.
pub async fn guard(
    State(allowed): State<Arc<AllowedHosts>>,
    request: Request,
    next: Next,
) -> Response {
    match refusal(&allowed, request.method(), request.headers()) {
        Some((status, message)) => {
            (status, axum::Json(json!({ "error": message }))).into_response()
        }
        None => next.run(request).await,
    }
}

fn refusal(
    allowed: &AllowedHosts,
    method: &Method,
    headers: &HeaderMap,
) -> Option<(StatusCode, String)> {
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
    match text(header::HOST) {
        Some(host) if allowed.allows(host) => {}
        Some(_) | None => {
            return Some((
                StatusCode::FORBIDDEN,
                "the Host header does not name this API: add the name to `api.allowed_hosts`"
                    .into(),
            ));
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = origin.to_str().ok().and_then(|o| {
            o.strip_prefix("http://")
                .or_else(|| o.strip_prefix("https://"))
        });
        if !host.is_some_and(|h| allowed.allows(h)) {
            return Some((
                StatusCode::FORBIDDEN,
                "requests from other web pages are refused (the Origin is not this API)".into(),
            ));
        }
    }
    let changes = !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    let has_body = text(header::CONTENT_LENGTH).is_some_and(|n| n.trim() != "0")
        || headers.contains_key(header::TRANSFER_ENCODING);
    if changes && has_body && !is_json(text(header::CONTENT_TYPE)) {
        return Some((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "a request body must be JSON: send `Content-Type: application/json`".into(),
        ));
    }
    None
}

/// `application/json`, or a JSON-based type (`application/merge-patch+json`), with any
/// parameters (`; charset=utf-8`).
fn is_json(content_type: Option<&str>) -> bool {
    let Some(content_type) = content_type else {
        return false;
    };
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(name.clone(), value.parse().unwrap());
        }
        map
    }

    fn allowed() -> AllowedHosts {
        AllowedHosts::new(
            "127.0.0.1:8686".parse().unwrap(),
            &["weir.example.com".into()],
        )
    }

    #[test]
    fn hosts_of_this_api_pass_and_others_are_refused() {
        let allowed = allowed();
        for host in [
            "127.0.0.1:8686",
            "localhost:8686",
            "LOCALHOST:8686",
            "[::1]:8686",
            "weir.example.com",
            "weir.example.com:8686",
        ] {
            let h = headers(&[(header::HOST, host)]);
            assert_eq!(refusal(&allowed, &Method::GET, &h), None, "{host}");
        }
        for host in ["evil.example:8686", "127.0.0.1:9999", "localhost"] {
            let h = headers(&[(header::HOST, host)]);
            let refused = refusal(&allowed, &Method::GET, &h).map(|r| r.0);
            assert_eq!(refused, Some(StatusCode::FORBIDDEN), "{host}");
        }
        assert_eq!(
            refusal(&allowed, &Method::GET, &HeaderMap::new()).map(|r| r.0),
            Some(StatusCode::FORBIDDEN),
            "no Host at all"
        );
    }

    #[test]
    fn a_foreign_origin_is_refused_and_our_own_passes() {
        let allowed = allowed();
        let with = |origin| {
            let h = headers(&[(header::HOST, "127.0.0.1:8686"), (header::ORIGIN, origin)]);
            refusal(&allowed, &Method::POST, &h).map(|r| r.0)
        };
        assert_eq!(with("http://127.0.0.1:8686"), None);
        assert_eq!(with("https://weir.example.com"), None);
        assert_eq!(with("https://evil.example"), Some(StatusCode::FORBIDDEN));
        assert_eq!(with("null"), Some(StatusCode::FORBIDDEN));
    }

    #[test]
    fn a_body_must_be_json_when_the_request_changes_something() {
        let allowed = allowed();
        let with = |method: Method, content_type: Option<&str>, length: &str| {
            let mut h = headers(&[
                (header::HOST, "127.0.0.1:8686"),
                (header::CONTENT_LENGTH, length),
            ]);
            if let Some(t) = content_type {
                h.insert(header::CONTENT_TYPE, t.parse().unwrap());
            }
            refusal(&allowed, &method, &h).map(|r| r.0)
        };
        let refused = Some(StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(with(Method::POST, Some("text/plain"), "2"), refused);
        assert_eq!(
            with(Method::POST, Some("application/x-www-form-urlencoded"), "3"),
            refused
        );
        assert_eq!(
            with(Method::POST, Some("multipart/form-data; boundary=x"), "9"),
            refused
        );
        assert_eq!(with(Method::PATCH, None, "2"), refused);
        assert_eq!(
            with(Method::POST, Some("application/json; charset=utf-8"), "2"),
            None
        );
        assert_eq!(
            with(Method::PATCH, Some("application/merge-patch+json"), "2"),
            None
        );
        // No body: `curl -X POST .../v1/reload` stays possible.
        assert_eq!(with(Method::POST, None, "0"), None);
        assert_eq!(with(Method::GET, Some("text/plain"), "2"), None);
    }
}
