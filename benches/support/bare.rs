//! The bare-parse baseline of `e2e_http`: a server on weir's HTTP stack that only turns each
//! body into readings and drops them.
//!
//! It is what any ingest server must do at least, built from the same parts as weir's
//! `http` source: axum on axum-server over a std listener, on a multi-threaded tokio runtime
//! with default workers, mimalloc (the bench binary's allocator, as the daemon's), the body
//! read whole with the same limit, weir's own `json` decoder (`DecodingConfig::default()`,
//! the same serde features), one `Event` per reading with a shared per-request meta and
//! device id, and the same answer (`200 {"accepted": n}`). No registry, no channel, no
//! acknowledgement, no metrics: weir's cost above this is the pipeline's.
//!
//! The bench binary runs it in a child process of its own (itself, re-run with
//! [`SERVE_ENV`] set), so its CPU time is read from `/proc/<pid>/stat` exactly as weir's is.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use weir::codecs::{Decoder, DecodingConfig};
use weir::event::{Event, EventMeta};

/// Set to a listen address, the bench binary serves the baseline there instead of benching.
pub const SERVE_ENV: &str = "WEIR_E2E_BARE_SERVE";

/// The `http` source's default `max_body` (1 MiB).
const MAX_BODY: usize = 1 << 20;

struct Bare {
    decoder: Decoder,
    source: Arc<str>,
}

/// Serves the baseline on `listen` until the process is killed.
pub fn serve(listen: SocketAddr) -> Result<(), String> {
    let listener = std::net::TcpListener::bind(listen)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let state = Arc::new(Bare {
        decoder: DecodingConfig::default().decoder(),
        source: "devices".into(),
    });
    let router = Router::new()
        .route("/v1/devices/{device}/messages", post(receive))
        .route("/ready", get(|| async { StatusCode::OK }))
        .with_state(state);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    runtime.block_on(async move {
        axum_server::from_tcp(listener)
            .map_err(|e| format!("cannot serve: {e}"))?
            .serve(router.into_make_service())
            .await
            .map_err(|e| format!("serving failed: {e}"))
    })
}

async fn receive(
    State(bare): State<Arc<Bare>>,
    Path(device): Path<String>,
    body: Body,
) -> Response {
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(body) => body,
        Err(e) => return (StatusCode::PAYLOAD_TOO_LARGE, e.to_string()).into_response(),
    };
    let readings = match bare.decoder.decode(&body) {
        Ok(readings) => readings,
        Err(e) => return (StatusCode::BAD_REQUEST, e.0).into_response(),
    };
    let meta = Arc::new(EventMeta::received_by(Arc::clone(&bare.source)));
    let device: Arc<str> = device.into();
    let events: Vec<Event> = readings
        .into_iter()
        .map(|fields| Event::new(Some(Arc::clone(&device)), fields, Arc::clone(&meta)))
        .collect();
    let accepted = events.len();
    drop(std::hint::black_box(events));
    (
        StatusCode::OK,
        axum::Json(serde_json::json!({ "accepted": accepted })),
    )
        .into_response()
}
