//! Exporting the hops of sampled readings as OpenTelemetry spans, over OTLP/HTTP with JSON
//! (`telemetry.otlp`).
//!
//! Hops are pushed into a bounded queue without waiting ([`SpanQueue::push`]); one task
//! sends them in batches to `<endpoint>/v1/traces`. The JSON is written by hand (OTLP's
//! JSON mapping: ids in hex, times as decimal strings of nanoseconds), which keeps the
//! protobuf and gRPC stacks out of the build. A collector that is down loses spans, counted
//! in the log, never readings.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use jiff::Timestamp;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::telemetry::OtlpConfig;
use crate::event::DeviceId;

/// One hop of a sampled reading: from its arrival to the hop.
#[derive(Debug)]
pub struct Span {
    pub trace_id: String,
    /// The caller's span from the reading's `traceparent`, if it came with one.
    pub parent_id: Option<String>,
    pub component: Arc<str>,
    /// `None`: a sink or action taking the reading from its input.
    pub output: Option<Arc<str>>,
    pub device_id: Option<DeviceId>,
    pub start: Timestamp,
    pub end: Timestamp,
}

/// Where hops are pushed, for the exporter task to send.
pub struct SpanQueue {
    tx: mpsc::Sender<Span>,
    dropped: AtomicU64,
}

impl SpanQueue {
    /// Queues `span` if there is room; drops it (and counts it) if not.
    pub fn push(&self, span: Span) {
        if self.tx.try_send(span).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Starts the exporter of `config`: the queue hops go to, and the task sending them until
/// `shutdown` fires (it sends what is queued first).
pub fn start(
    config: &OtlpConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<(Arc<SpanQueue>, tokio::task::JoinHandle<()>)> {
    let base = config.endpoint.expose_str().trim_end_matches('/');
    let url = url::Url::parse(&format!("{base}/v1/traces")).map_err(|err| {
        anyhow::anyhow!(
            "telemetry.otlp.endpoint `{}`: expected an http(s) URL: {err}",
            config.endpoint.redacted()
        )
    })?;
    let client = reqwest::Client::builder()
        .timeout(config.timeout.0)
        .build()?;
    let (tx, rx) = mpsc::channel(config.max_queued_spans.get());
    let queue = Arc::new(SpanQueue {
        tx,
        dropped: AtomicU64::new(0),
    });
    let sender = Sender {
        client,
        url,
        shown: config.endpoint.redacted(),
        batch: config.batch_spans.get(),
        every: config.flush_interval.0,
        queue: Arc::clone(&queue),
    };
    Ok((queue, tokio::spawn(sender.run(rx, shutdown))))
}

struct Sender {
    client: reqwest::Client,
    url: url::Url,
    /// The endpoint as logs may show it.
    shown: String,
    batch: usize,
    every: std::time::Duration,
    queue: Arc<SpanQueue>,
}

impl Sender {
    async fn run(self, mut rx: mpsc::Receiver<Span>, shutdown: CancellationToken) {
        let mut pending = Vec::new();
        let mut tick = tokio::time::interval(self.every);
        loop {
            tokio::select! {
                span = rx.recv() => match span {
                    Some(span) => {
                        pending.push(span);
                        if pending.len() >= self.batch {
                            self.send(std::mem::take(&mut pending)).await;
                        }
                    }
                    None => break,
                },
                _ = tick.tick() => {
                    if !pending.is_empty() {
                        self.send(std::mem::take(&mut pending)).await;
                    }
                }
                () = shutdown.cancelled() => break,
            }
        }
        while let Ok(span) = rx.try_recv() {
            pending.push(span);
        }
        if !pending.is_empty() {
            self.send(pending).await;
        }
    }

    async fn send(&self, spans: Vec<Span>) {
        let count = spans.len();
        let body = export_request(&spans);
        let outcome = self.client.post(self.url.clone()).json(&body).send().await;
        let failure = match outcome {
            Ok(answer) if answer.status().is_success() => return,
            Ok(answer) => format!("the collector answered {}", answer.status()),
            // Without the URL: it may hold credentials.
            Err(err) => err.without_url().to_string(),
        };
        tracing::warn!(
            endpoint = %self.shown,
            spans = count,
            dropped_before = self.queue.dropped.load(Ordering::Relaxed),
            "could not export spans over OTLP: {failure}"
        );
    }
}

/// An OTLP `ExportTraceServiceRequest` in OTLP's JSON mapping.
fn export_request(spans: &[Span]) -> Value {
    let spans: Vec<Value> = spans.iter().map(span_json).collect();
    json!({
        "resourceSpans": [{
            "resource": { "attributes": [attribute("service.name", "weir")] },
            "scopeSpans": [{
                "scope": { "name": "weir", "version": env!("CARGO_PKG_VERSION") },
                "spans": spans,
            }],
        }],
    })
}

fn span_json(span: &Span) -> Value {
    let name = match &span.output {
        Some(output) => format!("{} {output}", span.component),
        None => format!("{} input", span.component),
    };
    let mut attributes = vec![attribute("weir.component_id", &span.component)];
    if let Some(output) = &span.output {
        attributes.push(attribute("weir.output", output));
    }
    if let Some(device) = &span.device_id {
        attributes.push(attribute("weir.device_id", device));
    }
    let mut value = json!({
        "traceId": span.trace_id,
        "spanId": hex::encode(rand::random::<[u8; 8]>()),
        "name": name,
        // SPAN_KIND_INTERNAL
        "kind": 1,
        "startTimeUnixNano": nanos(span.start),
        "endTimeUnixNano": nanos(span.end),
        "attributes": attributes,
    });
    if let Some(parent) = &span.parent_id {
        value["parentSpanId"] = Value::from(parent.as_str());
    }
    value
}

fn attribute(key: &str, value: &str) -> Value {
    json!({ "key": key, "value": { "stringValue": value } })
}

/// Nanoseconds since the Unix epoch as a decimal string (OTLP JSON's 64-bit integers).
fn nanos(at: Timestamp) -> String {
    at.as_nanosecond().max(0).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_span_is_written_in_otlp_json() {
        let start = Timestamp::from_second(1_700_000_000).unwrap();
        let body = export_request(&[Span {
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            parent_id: Some("00f067aa0ba902b7".into()),
            component: "clean".into(),
            output: Some("default".into()),
            device_id: Some("pump-1".into()),
            start,
            end: start + jiff::SignedDuration::from_millis(3),
        }]);
        let span = &body["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(span["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(span["parentSpanId"], "00f067aa0ba902b7");
        assert_eq!(span["name"], "clean default");
        assert_eq!(span["startTimeUnixNano"], "1700000000000000000");
        assert_eq!(span["endTimeUnixNano"], "1700000000003000000");
        assert_eq!(span["spanId"].as_str().map(str::len), Some(16));
    }
}
