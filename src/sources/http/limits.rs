//! The `http` source's bounds (`limits:`): how many connections, how many requests at once,
//! how long a client may take to send its headers and its body, and how many bytes of
//! requests may wait for their acknowledgement. Every bound is configured; none is left to
//! luck or to the kernel.
//!
//! A connection over `connections` is closed as soon as it is accepted (and counted); a
//! request over `requests_in_flight` or `pending_bytes` is answered 503 with `Retry-After`,
//! so a device backs off instead of piling up; headers slower than `header_timeout` close
//! the connection (slowloris); a body slower than `body_timeout` is answered 408.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum_server::accept::Accept;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{ByteSize, Duration, FieldProblem};
use crate::telemetry::events::{ComponentError, ErrorType, Stage};
use crate::telemetry::{ComponentTelemetry, InternalEvent};

/// The source's bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Open connections at most; one more is closed as soon as it is accepted.
    #[serde(default = "default_connections")]
    pub connections: usize,
    /// Requests being handled at once (read, decoded, waiting for their commit); one more
    /// is answered 503.
    #[serde(default = "default_requests_in_flight")]
    pub requests_in_flight: usize,
    /// How long a client may take to send a request's headers before the connection is
    /// closed.
    #[serde(default = "default_header_timeout")]
    pub header_timeout: Duration,
    /// How long a client may take to send a request's body before it is answered 408.
    #[serde(default = "default_body_timeout")]
    pub body_timeout: Duration,
    /// Bytes of request bodies whose readings are in the pipeline, waiting for their
    /// acknowledgement (the memory budget of what clients sent and wait for); a request
    /// that does not fit within `queue_timeout` is answered 503.
    #[serde(default = "default_pending_bytes")]
    pub pending_bytes: ByteSize,
}

fn default_connections() -> usize {
    4096
}
fn default_requests_in_flight() -> usize {
    1024
}
fn default_header_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_body_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_pending_bytes() -> ByteSize {
    ByteSize::mib(256)
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            connections: default_connections(),
            requests_in_flight: default_requests_in_flight(),
            header_timeout: default_header_timeout(),
            body_timeout: default_body_timeout(),
            pending_bytes: default_pending_bytes(),
        }
    }
}

impl Limits {
    /// `max_body`: the largest body, which must fit the pending budget.
    pub fn check(&self, max_body: ByteSize) -> Vec<FieldProblem> {
        let mut problems = Vec::new();
        for (name, value) in [
            ("connections", self.connections),
            ("requests_in_flight", self.requests_in_flight),
        ] {
            if value == 0 {
                problems.push(FieldProblem::at(["limits", name], "expected at least 1"));
            }
        }
        for (name, value) in [
            ("header_timeout", self.header_timeout),
            ("body_timeout", self.body_timeout),
        ] {
            if value.get().is_zero() {
                problems.push(FieldProblem::at(
                    ["limits", name],
                    "expected a duration above zero",
                ));
            }
        }
        if self.pending_bytes.get() < max_body.get() {
            problems.push(FieldProblem::at(
                ["limits", "pending_bytes"],
                format!("expected at least `max_body` ({max_body}): a largest request must fit"),
            ));
        }
        problems
    }
}

/// The request-level bounds, shared by every request of one source.
pub struct RequestBudget {
    requests: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
}

/// What one admitted request holds until it is answered.
pub struct Admitted {
    _request: OwnedSemaphorePermit,
    bytes: Option<OwnedSemaphorePermit>,
}

impl RequestBudget {
    pub fn new(limits: &Limits) -> Self {
        let bytes = usize::try_from(limits.pending_bytes.get())
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        Self {
            requests: Arc::new(Semaphore::new(limits.requests_in_flight)),
            bytes: Arc::new(Semaphore::new(bytes)),
        }
    }

    /// A place for one more request, or `None` when `requests_in_flight` are being handled.
    pub fn admit(&self) -> Option<Admitted> {
        let request = Arc::clone(&self.requests).try_acquire_owned().ok()?;
        Some(Admitted {
            _request: request,
            bytes: None,
        })
    }

    /// Reserves `len` bytes of the pending budget for `admitted`, waiting up to `patience`;
    /// false when they did not become free in time.
    pub async fn reserve(
        &self,
        admitted: &mut Admitted,
        len: usize,
        patience: std::time::Duration,
    ) -> bool {
        let Ok(len) = u32::try_from(len.max(1)) else {
            return false;
        };
        let wanted = Arc::clone(&self.bytes).acquire_many_owned(len);
        match tokio::time::timeout(patience, wanted).await {
            Ok(Ok(permit)) => {
                admitted.bytes = Some(permit);
                true
            }
            _ => false,
        }
    }
}

/// An acceptor that closes connections beyond `connections` (wrapping the plain or TLS
/// acceptor); each accepted connection holds its place until it closes.
#[derive(Clone)]
pub struct ConnectionLimit<A> {
    inner: A,
    places: Arc<Semaphore>,
    telemetry: ComponentTelemetry,
}

impl<A> ConnectionLimit<A> {
    pub fn new(inner: A, connections: usize, telemetry: ComponentTelemetry) -> Self {
        Self {
            inner,
            places: Arc::new(Semaphore::new(connections)),
            telemetry,
        }
    }
}

impl<A, I, S> Accept<I, S> for ConnectionLimit<A>
where
    A: Accept<I, S>,
    A::Future: Send + 'static,
    A::Stream: Send + 'static,
    A::Service: Send + 'static,
{
    type Stream = Limited<A::Stream>;
    type Service = A::Service;
    type Future = Pin<Box<dyn Future<Output = io::Result<(Self::Stream, Self::Service)>> + Send>>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let Ok(place) = Arc::clone(&self.places).try_acquire_owned() else {
            const FULL: &str =
                "`limits.connections` connections are open; closed a new one at once";
            ComponentError {
                error_type: ErrorType::OverLimit,
                stage: Stage::Receiving,
                message: FULL,
                count: 0,
            }
            .emit(&self.telemetry);
            // Dropping the stream closes the connection.
            drop(stream);
            return Box::pin(std::future::ready(Err(io::Error::other(FULL))));
        };
        let accepted = self.inner.accept(stream, service);
        Box::pin(async move {
            let (stream, service) = accepted.await?;
            Ok((
                Limited {
                    stream,
                    _place: place,
                },
                service,
            ))
        })
    }
}

/// A connection that holds its place under `limits.connections` while it is open.
pub struct Limited<S> {
    stream: S,
    _place: OwnedSemaphorePermit,
}

impl<S: AsyncRead + Unpin> AsyncRead for Limited<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Limited<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
