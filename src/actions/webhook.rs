//! `webhook`: an HTTP request per notification (rustls; retries on 5xx and timeouts, never
//! on a 4xx), with an `Idempotency-Key` header (see [`super::idempotency`]).

use std::hash::{Hash, Hasher};

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::idempotency::IdempotencyKey;
use super::policy::action_config;
use super::runner::{self, Notifier, SendError};
use super::{ActionComponent, ActionContext};
use crate::config::{Duration, FieldProblem, RedactedUrl, Sensitive};
use crate::event::Event;
use crate::template::Template;
use crate::tls::TlsConfig;
use crate::topology::ComponentTask;

action_config! {
    /// Calls an HTTP endpoint for every event.
    pub struct WebhookConfig {
        /// e.g. `https://ops.example.com/hooks/iot`; may be a template.
        pub url: RedactedUrl<Template>,
        #[serde(default)]
        pub method: HttpMethod,
        /// Header name to template, e.g. `Authorization: "Bearer ${OPS_TOKEN}"`. Values
        /// are never shown: not in logs, errors or dead letters.
        #[serde(default)]
        pub headers: IndexMap<String, Sensitive<Template>>,
        /// The request body, e.g. `{"device":"{{ device_id }}","state":"{{ state }}"}`.
        /// Default: the event as JSON. `Content-Type` defaults to `application/json`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub body: Option<Template>,
        /// Per attempt; a timeout is retried.
        #[serde(default = "default_timeout")]
        pub timeout: Duration,
        /// For `https://`: `ca_file` to trust the server (default: the system's roots),
        /// `cert_file`/`key_file` for mutual TLS.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub tls: Option<TlsConfig>,
    }
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    #[default]
    Post,
    Put,
    Patch,
    Get,
    Delete,
}

impl HttpMethod {
    fn as_reqwest(self) -> reqwest::Method {
        match self {
            Self::Post => reqwest::Method::POST,
            Self::Put => reqwest::Method::PUT,
            Self::Patch => reqwest::Method::PATCH,
            Self::Get => reqwest::Method::GET,
            Self::Delete => reqwest::Method::DELETE,
        }
    }
}

impl ActionComponent for WebhookConfig {
    fn buffer(&self) -> crate::buffers::BufferConfig {
        self.policies().buffer()
    }

    fn warnings(&self) -> Vec<FieldProblem> {
        self.policies().warnings()
    }

    fn check(&self) -> Vec<FieldProblem> {
        let mut problems = self.policies().check();
        let url = self.url.expose().source();
        if !url.starts_with("{{") && !url.starts_with("http://") && !url.starts_with("https://") {
            problems.push(FieldProblem::at(
                ["url"],
                "expected an `http://` or `https://` URL",
            ));
        }
        for name in self.headers.keys() {
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                problems.push(FieldProblem::at(
                    ["headers", name.as_str()],
                    "not a valid HTTP header name",
                ));
            }
        }
        if self.timeout.get().is_zero() {
            problems.push(FieldProblem::at(
                ["timeout"],
                "expected a timeout above zero",
            ));
        }
        problems
    }

    fn build(&self, cx: ActionContext) -> anyhow::Result<ComponentTask> {
        let tls = self.tls.clone().unwrap_or_default();
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured((*tls.client_config()?).clone())
            .timeout(self.timeout.get())
            .build()?;
        let notifier = Webhook {
            client,
            config: self.clone(),
        };
        runner::spawn(cx, self.policies(), notifier)
    }
}

struct Webhook {
    client: reqwest::Client,
    config: WebhookConfig,
}

/// One rendered request.
pub struct Request {
    url: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Notifier for Webhook {
    type Message = Request;

    fn prepare(&self, event: &Event) -> Result<Request, String> {
        let view = event.view();
        let url = runner::render(self.config.url.expose(), &view, "url")?;
        reqwest::Url::parse(&url)
            .map_err(|err| format!("`{}` is not a URL: {err}", crate::redact::url(&url)))?;
        let mut headers = Vec::with_capacity(self.config.headers.len());
        for (name, value) in &self.config.headers {
            let value = runner::render(value.expose(), &view, &format!("headers.{name}"))?;
            headers.push((name.clone(), value));
        }
        let body = runner::body_or_event(self.config.body.as_ref(), event, &view, "body")?;
        Ok(Request { url, headers, body })
    }

    fn secrets(&self, message: &Request) -> Vec<String> {
        let mut secrets = crate::redact::url_secrets(&message.url);
        // Every header value: the config marks them all sensitive.
        secrets.extend(message.headers.iter().map(|(_, value)| value.clone()));
        // `Bearer <token>`: the token alone may be echoed too.
        secrets.extend(message.headers.iter().filter_map(|(_, value)| {
            value
                .split_once(' ')
                .map(|(_, token)| token.trim().to_owned())
        }));
        secrets
    }

    fn identity(&self, message: &Request, hasher: &mut dyn Hasher) {
        let mut hasher = hasher;
        message.url.hash(&mut hasher);
        message.headers.hash(&mut hasher);
        message.body.hash(&mut hasher);
    }

    async fn send(&self, message: &Request, key: &IdempotencyKey) -> Result<(), SendError> {
        let mut request = self
            .client
            .request(self.config.method.as_reqwest(), &message.url)
            .header("idempotency-key", key.as_str());
        let mut has_content_type = false;
        for (name, value) in &message.headers {
            has_content_type |= name.eq_ignore_ascii_case("content-type");
            request = request.header(name, value);
        }
        if !has_content_type {
            request = request.header("content-type", "application/json");
        }
        let response = request
            .body(message.body.clone())
            .send()
            .await
            .map_err(|err| {
                // reqwest's errors name the URL whole: show it redacted instead.
                let url = crate::redact::url(&message.url);
                let err = err.without_url();
                if err.is_builder() {
                    SendError::Permanent(format!("cannot build the request to {url}: {err}"))
                } else {
                    SendError::Transient(format!("{url} failed: {err}"))
                }
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let detail = response.text().await.unwrap_or_default();
        let detail: String = detail.chars().take(200).collect();
        let text = format!(
            "{} answered {status}: {detail}",
            crate::redact::url(&message.url)
        );
        // Timeouts, rate limits and server errors pass; other answers would repeat.
        if status.is_server_error()
            || status == reqwest::StatusCode::REQUEST_TIMEOUT
            || status == reqwest::StatusCode::TOO_MANY_REQUESTS
        {
            Err(SendError::Transient(text))
        } else {
            Err(SendError::Permanent(text))
        }
    }
}
