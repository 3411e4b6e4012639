//! The HTTP API: `/health`, `/ready`, `/metrics`, `POST /v1/reload`, `/v1/alarms`,
//! `/v1/tokens`.
//!
//! The registry's `/v1/devices` and `/v1/enrollment-groups` live in [`devices`];
//! cloud-to-device messages (`/v1/devices/{id}/messages/devicebound`) in [`devicebound`]. Every
//! request passes the request-forgery guard ([`forgery`]), then authentication ([`auth`])
//! against the one table of who may call what ([`access`]). `weir reload` reaches
//! `/v1/reload` without a token through the control socket ([`control`]).
//!
//! `/health` answers 200 while the process serves requests at all; `/ready` answers 200
//! only while a topology is running with none of its components failed (503 while
//! starting or draining, or once a component failed and stopped, until a reload replaces
//! it), for load balancers and systemd-style readiness checks.

pub mod access;
mod alarms;
mod audit;
pub mod auth;
pub mod control;
mod devicebound;
mod devices;
mod forgery;
mod groups;
mod methods;
pub mod openapi;
mod records;
mod rejections;
pub mod reload;
mod scope;
mod tap;
mod tokens;
mod twin;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;
use utoipa_axum::routes;

pub use self::auth::{Auth, Caller};
pub use self::forgery::AllowedHosts;
use self::reload::ReloadRequest;
use crate::alarms::AlarmBoard;
use crate::audit::AuditLog;
use crate::config::ApiConfig;
use crate::registry::Registry;
use crate::telemetry::Telemetry;
use crate::topology::Services;

/// State the API reports on.
pub struct ApiState {
    pub telemetry: Arc<Telemetry>,
    pub ready: AtomicBool,
    /// Where reload requests go (the daemon loop); `None` where reloading is not offered.
    reload: Option<mpsc::Sender<ReloadRequest>>,
    /// The running topology's shared services (the registry behind `/v1/devices`, the
    /// alarm board behind `/v1/alarms`), once it runs.
    services: OnceLock<Arc<Services>>,
    /// The tokens and the failure limiter.
    pub auth: Auth,
    /// Where changes are written down, `data_dir/audit/`.
    audit: Option<Arc<AuditLog>>,
}

impl ApiState {
    pub fn new(
        telemetry: Arc<Telemetry>,
        reload: Option<mpsc::Sender<ReloadRequest>>,
        auth: Auth,
        audit: Option<Arc<AuditLog>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            telemetry,
            ready: AtomicBool::new(false),
            reload,
            services: OnceLock::new(),
            auth,
            audit,
        })
    }

    /// Serves `/v1/devices`, `/v1/alarms`, ... from the topology's `services` (set once;
    /// the services outlive reloads).
    pub fn set_services(&self, services: Arc<Services>) {
        let _ = self.services.set(services);
    }

    /// The service of type `T`, once the topology runs and if it has one.
    pub fn service<T: Send + Sync + 'static>(&self) -> Option<Arc<T>> {
        self.services.get()?.get::<T>()
    }

    pub fn registry(&self) -> Option<Arc<Registry>> {
        self.service::<Registry>()
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    pub fn alarm_board(&self) -> Option<Arc<AlarmBoard>> {
        self.service::<AlarmBoard>()
    }
}

/// Every route, each with its row in [`access::ACCESS`] and its OpenAPI description.
pub fn routes() -> access::Routes {
    let routes = access::Routes::default()
        .route(routes!(health))
        .route(routes!(ready))
        .route(routes!(metrics))
        .route(routes!(reload::reload))
        .route(routes!(openapi::serve));
    let routes = devices::routes(routes);
    let routes = groups::routes(routes);
    let routes = devicebound::routes(routes);
    let routes = methods::routes(routes);
    let routes = twin::routes(routes);
    let routes = alarms::routes(routes);
    let routes = audit::routes(routes);
    let routes = tap::routes(routes);
    tokens::routes(routes)
}

/// Every route, behind the request-forgery guard ([`forgery`]), the audit log
/// ([`audit`]) and authentication ([`auth`]), in that order; every error answer, axum's
/// own included, made JSON ([`rejections`]).
pub fn router(state: Arc<ApiState>, allowed: AllowedHosts) -> Router {
    routes()
        .into_router()
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            audit::record,
        ))
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(allowed),
            forgery::guard,
        ))
        .layer(axum::middleware::from_fn(rejections::json_errors))
        .with_state(state)
}

/// Binds `api.listen` now (so a taken port fails start-up) and serves until `shutdown`.
pub async fn serve(
    config: &ApiConfig,
    state: Arc<ApiState>,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listen = config.listen;
    let allowed = AllowedHosts::new(listen, &config.allowed_hosts);
    let tls = config
        .tls
        .as_ref()
        .map(crate::tls::TlsConfig::server_config)
        .transpose()
        .map_err(|err| anyhow::anyhow!("api.tls: {err:#}"))?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|err| anyhow::anyhow!("cannot listen on {listen} (api.listen): {err}"))?;
    tracing::info!(%listen, tls = tls.is_some(), "API listening");
    let app = router(state, allowed);
    let served = match tls {
        None => tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
        }),
        Some(tls) => tokio::spawn(crate::tls::serve_tls(listener, tls, app, shutdown)),
    };
    Ok(tokio::spawn(async move {
        match served.await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::error!("API server failed: {err}"),
            Err(err) => tracing::error!("API server failed: {err}"),
        }
    }))
}

/// The answer of `/health` and `/ready`.
#[derive(Serialize, ToSchema)]
struct Liveness {
    /// `ok` (`/health`), `ready` or `not ready` (`/ready`).
    status: &'static str,
    /// The components that failed and stopped (`/ready` when not ready).
    #[serde(skip_serializing_if = "Option::is_none")]
    failed_components: Option<Vec<String>>,
}

/// Whether the process serves requests at all.
#[utoipa::path(
    get,
    path = "/health",
    operation_id = "health",
    tag = "meta",
    responses((status = 200, body = Liveness))
)]
async fn health() -> impl IntoResponse {
    axum::Json(Liveness {
        status: "ok",
        failed_components: None,
    })
}

/// Whether a topology is running.
#[utoipa::path(
    get,
    path = "/ready",
    operation_id = "ready",
    tag = "meta",
    responses(
        (status = 200, description = "A topology runs", body = Liveness),
        (status = 503, description = "Starting or draining", body = Liveness),
    )
)]
async fn ready(State(state): State<Arc<ApiState>>) -> impl IntoResponse {
    // A failed component (a source that gave up) leaves the rest running but not whole.
    let failed = state.telemetry.failed_components();
    if state.ready.load(Ordering::Acquire) && failed.is_empty() {
        let ready = Liveness {
            status: "ready",
            failed_components: None,
        };
        (StatusCode::OK, axum::Json(ready))
    } else {
        let failed: Vec<String> = failed.iter().map(ToString::to_string).collect();
        let not_ready = Liveness {
            status: "not ready",
            failed_components: Some(failed),
        };
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(not_ready))
    }
}

/// Every metric, in the OpenMetrics text format.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "meta",
    responses((
        status = 200,
        description = "OpenMetrics text",
        content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8",
        body = String
    ))
)]
async fn metrics(State(state): State<Arc<ApiState>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.telemetry.encode(),
    )
}
