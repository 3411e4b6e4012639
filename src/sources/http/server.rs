//! Serving the `http` source: the listener (plain or TLS), the route, graceful shutdown,
//! and the answer each request gets.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum_server::accept::DefaultAcceptor;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use serde_json::json;

use super::iothub::{self, Wire};
use super::limits::{ConnectionLimit, Limits, RequestBudget};
use super::{Handler, HttpAuth, HttpSourceConfig, RateLimit};
use crate::registry::Registry;
use crate::sources::SourceContext;
use crate::sources::gate::DeviceGate;
use crate::telemetry::InternalEvent;
use crate::telemetry::events::HttpResponse;
use crate::tls::TlsConfig;
use crate::topology::ComponentTask;

/// Binds the port now (so a taken port fails the start) and returns the task that serves it.
pub(super) fn build(config: &HttpSourceConfig, cx: SourceContext) -> anyhow::Result<ComponentTask> {
    let listener = std::net::TcpListener::bind(config.listen)
        .map_err(|err| anyhow::anyhow!("cannot listen on {}: {err}", config.listen))?;
    listener.set_nonblocking(true)?;
    let registry = cx.services.get::<Registry>();
    let sas = match (config.auth, &registry) {
        (HttpAuth::None, _) => None,
        (HttpAuth::Sas, Some(registry)) => Some(Arc::clone(registry)),
        (HttpAuth::Sas, None) => {
            anyhow::bail!("`auth: sas` needs the device registry: add a `registry:` section")
        }
    };
    let listening = cx.telemetry.connected();
    let telemetry = cx.telemetry.clone();
    let state = Arc::new(Handler {
        sas,
        gate: DeviceGate::new(registry, config.unknown_devices)?,
        id: cx.id.clone(),
        source: cx.id.as_arc(),
        decoder: config.decoding.decoder(),
        device_id_field: config.device_id_field.clone(),
        event_time: config.event_time.clone(),
        max_body: config.max_body.get() as usize,
        queue_timeout: config.queue_timeout.get(),
        ack: config.ack,
        ack_timeout: config.ack_timeout.get(),
        limiter: config.rate_limit.as_ref().and_then(RateLimit::limiter),
        budget: RequestBudget::new(&config.limits),
        body_timeout: config.limits.body_timeout.get(),
        headers: config
            .headers
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
        iothub: config
            .iothub_transport
            .then(|| crate::sources::iothub::Decoders::new(&config.decoding)),
        out: cx.out,
        telemetry: cx.telemetry,
    });
    let mut router = Router::new().route(&config.path, post(receive));
    if config.iothub_transport {
        router = router.route(iothub::PATH, post(receive_iothub));
    }
    let router = router.with_state(state);
    let tls = config
        .tls
        .as_ref()
        .map(TlsConfig::server_config)
        .transpose()?;
    let shutdown = cx.shutdown;
    let listen = config.listen;
    let limits = config.limits;
    // `source_connected` reads 1 while the port is open, as a broker source's does while
    // it is connected; the guard lowers it however serving ends.
    let listening = ListeningGauge::raise(listening);
    Ok(Box::pin(async move {
        let _listening = listening;
        tracing::info!(component_id = %cx.id, %listen, tls = tls.is_some(), "http source listening");
        // Graceful: stop accepting, let requests in flight (and their acks) finish.
        let handle = axum_server::Handle::new();
        let stopper = handle.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            stopper.graceful_shutdown(None);
        });
        let plain = axum_server::from_tcp(listener)?.handle(handle);
        let service = router.into_make_service();
        match tls {
            None => {
                let acceptor = ConnectionLimit::new(DefaultAcceptor, limits.connections, telemetry);
                with_header_timeout(plain.acceptor(acceptor), &limits)
                    .serve(service)
                    .await?;
            }
            Some(tls) => {
                let acceptor = ConnectionLimit::new(
                    RustlsAcceptor::new(RustlsConfig::from_config(tls)),
                    limits.connections,
                    telemetry,
                );
                with_header_timeout(plain.acceptor(acceptor), &limits)
                    .serve(service)
                    .await?;
            }
        }
        Ok(())
    }))
}

/// Closes a connection whose request headers take longer than `limits.header_timeout`.
fn with_header_timeout<A>(
    mut server: axum_server::Server<std::net::SocketAddr, A>,
    limits: &Limits,
) -> axum_server::Server<std::net::SocketAddr, A> {
    server
        .http_builder()
        .http1()
        .header_read_timeout(limits.header_timeout.get());
    server
}

/// Holds `source_connected` at 1 while it lives.
struct ListeningGauge(prometheus_client::metrics::gauge::Gauge);

impl ListeningGauge {
    fn raise(gauge: prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.set(1);
        Self(gauge)
    }
}

impl Drop for ListeningGauge {
    fn drop(&mut self) {
        self.0.set(0);
    }
}

async fn receive(
    State(handler): State<Arc<Handler>>,
    Path(params): Path<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    answer(&handler, Wire::Weir, params, headers, body).await
}

/// A device SDK's telemetry over HTTPS: see [`iothub`].
async fn receive_iothub(
    State(handler): State<Arc<Handler>>,
    Path(params): Path<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    answer(&handler, Wire::IotHub, params, headers, body).await
}

async fn answer(
    handler: &Handler,
    wire: Wire,
    params: HashMap<String, String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let outcome = handler.handle(wire, params, &headers, body).await;
    let (status, response) = match outcome {
        // As a hub answers the SDKs.
        Ok(_) if wire == Wire::IotHub => (
            StatusCode::NO_CONTENT,
            StatusCode::NO_CONTENT.into_response(),
        ),
        Ok(accepted) => (
            StatusCode::OK,
            (StatusCode::OK, axum::Json(json!({ "accepted": accepted }))).into_response(),
        ),
        Err(rejection) => {
            let mut response = (
                rejection.status,
                axum::Json(json!({ "error": rejection.reason })),
            )
                .into_response();
            if let Some(seconds) = rejection.retry_after {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            }
            (rejection.status, response)
        }
    };
    HttpResponse {
        status: status.as_u16(),
    }
    .emit(&handler.telemetry);
    response
}
