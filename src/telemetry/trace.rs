//! The hops of sampled readings: one structured log line each, the component's
//! `component_latency_seconds`, and, with `telemetry.otlp`, one OpenTelemetry span.
//!
//! A hop is a component sending a reading on one of its outputs, or a sink or action
//! taking it from its input. Its latency is the time since the reading arrived at its
//! source (`meta.received_at`). Readings that are not sampled cost one relaxed atomic load
//! per batch ([`crate::event::trace::any_sampled`]).

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use jiff::Timestamp;
use prometheus_client::metrics::histogram::Histogram;

use super::otlp::{Span, SpanQueue};
use crate::event::Event;
use crate::event::trace::any_sampled;

/// Where a process's spans go, once `telemetry.otlp` starts an exporter.
pub type SpanSlot = Arc<ArcSwapOption<SpanQueue>>;

/// Records the hops of sampled readings at one place of one component.
#[derive(Clone)]
pub struct Hops {
    component: Arc<str>,
    /// The output (`default`, `errors`, ...), or `None` for a sink or action taking its input.
    output: Option<Arc<str>>,
    latency: Histogram,
    spans: SpanSlot,
}

impl Hops {
    pub(super) fn new(
        component: &str,
        output: Option<&str>,
        latency: Histogram,
        spans: SpanSlot,
    ) -> Self {
        Self {
            component: component.into(),
            output: output.map(Into::into),
            latency,
            spans,
        }
    }

    /// Records the hop of every sampled reading among `events`.
    #[inline]
    pub fn record(&self, events: &[Event]) {
        if any_sampled() {
            self.record_sampled(events);
        }
    }

    #[cold]
    fn record_sampled(&self, events: &[Event]) {
        let now = Timestamp::now();
        let spans = self.spans.load();
        for event in events {
            let meta = event.meta();
            let Some(sampled) = &meta.sampled else {
                continue;
            };
            let since = now.duration_since(meta.received_at).as_secs_f64().max(0.0);
            self.latency.observe(since);
            let trace_id = meta.trace_id.as_deref().unwrap_or_default();
            tracing::info!(
                target: "weir::trace",
                trace_id,
                component_id = &*self.component,
                output = self.output.as_deref().unwrap_or("-"),
                device_id = event.device_id.as_deref().unwrap_or_default(),
                since_arrival_ms = since * 1000.0,
                "hop"
            );
            if let Some(queue) = spans.as_ref() {
                queue.push(Span {
                    trace_id: trace_id.to_owned(),
                    parent_id: sampled.parent_id.clone(),
                    component: Arc::clone(&self.component),
                    output: self.output.clone(),
                    device_id: event.device_id.clone(),
                    start: meta.received_at,
                    end: now,
                });
            }
        }
    }
}
