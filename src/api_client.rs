//! A client of weir's admin API, for the command lines (`weir devices`, `weir tokens`,
//! `weir tap`, `weir top`).
//!
//! [`ApiArgs`] are the options every such command takes: where the API is (`--api`,
//! `WEIR_API`) and the API token to send (`--token`, `WEIR_TOKEN`; never logged, never
//! in an error message).

use clap::Args;

use crate::config::Sensitive;
use serde_json::Value;

/// Where the admin API is, and who is calling.
#[derive(Clone, Debug, Args)]
pub struct ApiArgs {
    /// The admin API of the running weir.
    #[arg(
        long,
        env = "WEIR_API",
        default_value = "http://127.0.0.1:8686",
        global = true
    )]
    pub api: String,
    /// An API token (`weir tokens create`; the first admin token is in
    /// `data_dir/initial-admin-token`).
    #[arg(long, env = "WEIR_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<Sensitive>,
    /// PEM CA certificates that signed the API's certificate (`https://` with
    /// `api.tls`; default: the system's roots).
    #[arg(long, env = "WEIR_CA", global = true)]
    pub ca: Option<std::path::PathBuf>,
}

/// Sends requests to the admin API with the caller's token.
pub struct ApiClient {
    base: String,
    http: reqwest::Client,
    token: Option<Sensitive>,
}

impl ApiClient {
    pub fn new(args: &ApiArgs) -> Result<Self, String> {
        let tls = crate::tls::TlsConfig {
            ca_file: args.ca.clone(),
            ..Default::default()
        };
        let tls = tls.client_config().map_err(|e| format!("--ca: {e:#}"))?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(rustls::ClientConfig::clone(&tls))
            .build()
            .map_err(|e| format!("cannot make an HTTP client: {e}"))?;
        Ok(Self {
            base: args.api.trim_end_matches('/').to_owned(),
            http,
            token: args
                .token
                .clone()
                .filter(|t| !t.expose_str().trim().is_empty()),
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// A request to `path`, with the token.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => request.bearer_auth(token.expose_str().trim()),
            None => request,
        }
    }

    /// Sends a request; the JSON answer on 2xx (`null` when there is none), the API's
    /// error otherwise.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, String> {
        let mut request = self.request(method, path);
        if let Some(body) = body {
            request = request.json(body);
        }
        self.send(request).await
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> Result<Value, String> {
        let response = request
            .send()
            .await
            .map_err(|e| format!("cannot reach the weir API at {}: {e}", self.base))?;
        self.send_response(response).await
    }

    /// The JSON of an answer on 2xx (`null` when there is none), the API's error otherwise.
    pub async fn send_response(&self, response: reqwest::Response) -> Result<Value, String> {
        let status = response.status();
        let text = response.text().await.map_err(|e| e.to_string())?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(value);
        }
        let reason = value["error"].as_str().map_or(text.clone(), str::to_owned);
        let hint = match (status.as_u16(), &self.token) {
            (401, None) => " (pass an API token with --token or WEIR_TOKEN)",
            _ => "",
        };
        Err(format!("{status}: {reason}{hint}"))
    }
}
