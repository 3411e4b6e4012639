//! The per-component metrics handle.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use super::{
    AggregateLabels, AlarmLabels, BoundLabels, BufferLabels, ComponentLabels,
    ComponentReasonLabels, DiscardLabels, ErrorLabels, Metrics, OutcomeLabels, OutputLabels,
    StatusLabels,
};

/// A component's view of [`Metrics`], with its labels already applied.
///
/// Counters are resolved once here so emitting on the hot path is an atomic add.
#[derive(Clone)]
pub struct ComponentTelemetry {
    metrics: Metrics,
    labels: ComponentLabels,
    pub(crate) received_events: Counter,
    pub(crate) received_bytes: Counter,
    pub(crate) sent_bytes: Counter,
    /// Resolved once: sources touch it for every delivery.
    pending_deliveries: Gauge,
    /// Where the hops of sampled readings go as spans.
    spans: super::trace::SpanSlot,
    /// Unix second of the last error log line, so a flood of bad input logs once per interval.
    last_error_log: Arc<AtomicU64>,
    suppressed_errors: Arc<AtomicU64>,
}

impl ComponentTelemetry {
    pub(super) fn new(
        metrics: Metrics,
        spans: super::trace::SpanSlot,
        labels: ComponentLabels,
    ) -> Self {
        Self {
            spans,
            received_events: metrics.received_events.get_or_create_owned(&labels),
            received_bytes: metrics.received_bytes.get_or_create_owned(&labels),
            sent_bytes: metrics.sent_bytes.get_or_create_owned(&labels),
            pending_deliveries: metrics
                .source_pending_deliveries
                .get_or_create_owned(&labels),
            metrics,
            labels,
            last_error_log: Arc::new(AtomicU64::new(0)),
            suppressed_errors: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn component_id(&self) -> &str {
        &self.labels.component_id
    }

    pub fn component_type(&self) -> &str {
        &self.labels.component_type
    }

    /// Records the hops of sampled readings at `output` (`None`: a sink or action taking
    /// its input).
    pub fn hops(&self, output: Option<&str>) -> super::trace::Hops {
        super::trace::Hops::new(
            &self.labels.component_id,
            output,
            self.metrics
                .component_latency
                .get_or_create_owned(&self.labels),
            std::sync::Arc::clone(&self.spans),
        )
    }

    pub(crate) fn sent_events(&self, output: &str) -> Counter {
        self.metrics.sent_events.get_or_create_owned(&OutputLabels {
            component: self.labels.clone(),
            output: output.to_owned(),
        })
    }

    pub(crate) fn errors(&self, error_type: &str, stage: &str) -> Counter {
        self.metrics.errors.get_or_create_owned(&ErrorLabels {
            component: self.labels.clone(),
            error_type: error_type.to_owned(),
            stage: stage.to_owned(),
        })
    }

    pub(crate) fn discarded(&self, intentional: bool) -> Counter {
        self.metrics
            .discarded_events
            .get_or_create_owned(&DiscardLabels {
                component: self.labels.clone(),
                intentional: intentional.to_string(),
            })
    }

    pub(crate) fn windows_closed_early(&self) -> Counter {
        self.metrics
            .window_closed_early
            .get_or_create_owned(&self.labels)
    }

    pub(crate) fn http_requests(&self, status: u16) -> Counter {
        self.metrics
            .http_requests
            .get_or_create_owned(&StatusLabels {
                component: self.labels.clone(),
                status: status.to_string(),
            })
    }

    /// The connection gauge of a source that talks to a broker.
    pub fn connected(&self) -> Gauge {
        self.metrics
            .source_connected
            .get_or_create_owned(&self.labels)
    }

    /// Deliveries a source accepted and waits to acknowledge.
    pub fn pending_deliveries(&self) -> Gauge {
        self.pending_deliveries.clone()
    }

    /// Messages waiting in the broker for a source.
    pub fn lag(&self) -> Gauge {
        self.metrics.source_lag.get_or_create_owned(&self.labels)
    }

    fn buffer_labels(&self, buffer_type: &str) -> BufferLabels {
        BufferLabels {
            component: self.labels.clone(),
            buffer_type: buffer_type.to_owned(),
        }
    }

    /// The series of a sink's `buffer` of `buffer_type` (`memory` or `disk`), with its
    /// capacity set.
    pub fn sink_buffer(&self, buffer_type: &str, capacity: BufferCapacity) -> SinkBufferMetrics {
        let labels = self.buffer_labels(buffer_type);
        let m = &self.metrics;
        match capacity {
            BufferCapacity::Events(events) => m
                .buffer_max_event_size
                .get_or_create(&labels)
                .set(i64::try_from(events).unwrap_or(i64::MAX)),
            BufferCapacity::Bytes(bytes) => m
                .buffer_max_byte_size
                .get_or_create(&labels)
                .set(i64::try_from(bytes).unwrap_or(i64::MAX)),
        };
        SinkBufferMetrics {
            events: m.buffer_events.get_or_create_owned(&labels),
            byte_size: m.buffer_byte_size.get_or_create_owned(&labels),
            received: m.buffer_received_events.get_or_create_owned(&labels),
            sent: m.buffer_sent_events.get_or_create_owned(&labels),
            discarded: m.buffer_discarded_events.get_or_create_owned(&labels),
            corrupted: m.buffer_corrupted_records.get_or_create_owned(&labels),
        }
    }

    pub(crate) fn sink_retries(&self) -> Counter {
        self.metrics.sink_retries.get_or_create_owned(&self.labels)
    }

    /// Resolves the batch-size and commit-latency histograms of a sink.
    pub(crate) fn sink_batches(&self) -> (Histogram, Histogram) {
        (
            self.metrics
                .sink_batch_events
                .get_or_create_owned(&self.labels),
            self.metrics
                .sink_commit_duration
                .get_or_create_owned(&self.labels),
        )
    }

    /// Gauges for this component's input channel, which holds `capacity_events`.
    pub fn buffer(&self, capacity_events: usize) -> BufferMetrics {
        self.metrics
            .buffer_max_event_size
            .get_or_create(&self.buffer_labels("channel"))
            .set(i64::try_from(capacity_events).unwrap_or(i64::MAX));
        BufferMetrics {
            events: self
                .metrics
                .buffer_events
                .get_or_create_owned(&self.buffer_labels("channel")),
            utilization: self
                .metrics
                .buffer_utilization
                .get_or_create_owned(&self.labels),
        }
    }

    /// The series of a window aggregator with the given aggregate names.
    pub fn window_metrics(&self, aggregates: &[String]) -> WindowMetrics {
        WindowMetrics {
            metrics: self.metrics.clone(),
            labels: self.labels.clone(),
            overflow: self
                .metrics
                .window_overflow
                .get_or_create_owned(&self.labels),
            open_windows: self.metrics.window_open.get_or_create_owned(&self.labels),
            state_bytes: self
                .metrics
                .window_state_bytes
                .get_or_create_owned(&self.labels),
            invalid_values: aggregates
                .iter()
                .map(|name| {
                    self.metrics
                        .window_invalid_values
                        .get_or_create_owned(&AggregateLabels {
                            component: self.labels.clone(),
                            aggregate: name.clone(),
                        })
                })
                .collect(),
        }
    }

    /// The transition counter of an alarm in `state` with `severity`.
    pub(crate) fn alarm_transitions(&self, state: &str, severity: &str) -> Counter {
        self.metrics
            .alarm_transitions
            .get_or_create_owned(&AlarmLabels {
                component: self.labels.clone(),
                state: state.to_owned(),
                severity: severity.to_owned(),
            })
    }

    /// The counter of data files a table-reading source handled with `outcome` (`read`,
    /// `skipped`).
    pub fn source_files(&self, outcome: &str) -> Counter {
        self.metrics
            .source_files
            .get_or_create_owned(&OutcomeLabels {
                component: self.labels.clone(),
                outcome: outcome.to_owned(),
            })
    }

    /// The gauge of rows a table-reading source plans to read.
    pub fn source_planned_rows(&self) -> Gauge {
        self.metrics
            .source_planned_rows
            .get_or_create_owned(&self.labels)
    }

    /// The gauge of alarms active in an alarm transform.
    pub(crate) fn alarm_active(&self) -> Gauge {
        self.metrics.alarm_active.get_or_create_owned(&self.labels)
    }

    /// The series of an action.
    pub fn action_metrics(&self) -> ActionMetrics {
        let outcome = |outcome: &str| {
            self.metrics
                .action_notifications
                .get_or_create_owned(&OutcomeLabels {
                    component: self.labels.clone(),
                    outcome: outcome.to_owned(),
                })
        };
        ActionMetrics {
            sent: outcome("sent"),
            failed: outcome("failed"),
            throttled: outcome("throttled"),
            deduplicated: outcome("deduplicated"),
            retries: self
                .metrics
                .action_retries
                .get_or_create_owned(&self.labels),
            latency: self
                .metrics
                .action_latency
                .get_or_create_owned(&self.labels),
        }
    }

    /// The series of a device gateway.
    /// The process-wide direct-method series (for the `device_sessions` service).
    pub fn device_method_metrics(&self) -> super::DeviceMethodMetrics {
        self.metrics.device_methods()
    }

    pub fn gateway_metrics(&self) -> GatewayMetrics {
        GatewayMetrics {
            metrics: self.metrics.clone(),
            labels: self.labels.clone(),
            connected: self
                .metrics
                .gateway_connected_devices
                .get_or_create_owned(&self.labels),
            connects: self
                .metrics
                .gateway_connects
                .get_or_create_owned(&self.labels),
            topic_violations: self
                .metrics
                .gateway_topic_violations
                .get_or_create_owned(&self.labels),
            throttled: self
                .metrics
                .gateway_throttled
                .get_or_create_owned(&self.labels),
            devicebound_messages: self
                .metrics
                .gateway_devicebound_messages
                .get_or_create_owned(&self.labels),
            duplicates_dropped: self
                .metrics
                .gateway_duplicates_dropped
                .get_or_create_owned(&self.labels),
        }
    }

    /// Whether an error may be logged now (at most one line per 10 s per component);
    /// returns how many were held back since the last line.
    pub(crate) fn error_log_permit(&self) -> Option<u64> {
        const INTERVAL_SECS: u64 = 10;
        let now = jiff::Timestamp::now().as_second().max(0) as u64;
        let last = self.last_error_log.load(Ordering::Relaxed);
        if now >= last + INTERVAL_SECS
            && self
                .last_error_log
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            Some(self.suppressed_errors.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed_errors.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// Series of one device gateway.
#[derive(Clone)]
pub struct GatewayMetrics {
    metrics: Metrics,
    labels: ComponentLabels,
    pub connected: Gauge,
    pub connects: Counter,
    pub topic_violations: Counter,
    pub throttled: Counter,
    pub devicebound_messages: Gauge,
    pub duplicates_dropped: Counter,
}

impl GatewayMetrics {
    /// The counter of connections that ended for `reason`.
    pub fn disconnects(&self, reason: &str) -> Counter {
        self.metrics
            .gateway_disconnects
            .get_or_create_owned(&self.reason_labels(reason))
    }

    /// The counter of provisioning requests that ended in `outcome`.
    pub fn registrations(&self, outcome: &str) -> Counter {
        self.metrics
            .gateway_registrations
            .get_or_create_owned(&OutcomeLabels {
                component: self.labels.clone(),
                outcome: outcome.to_owned(),
            })
    }

    /// The counter of CONNECTs refused for `reason`.
    pub fn auth_failures(&self, reason: &str) -> Counter {
        self.metrics
            .gateway_auth_failures
            .get_or_create_owned(&self.reason_labels(reason))
    }

    fn reason_labels(&self, reason: &str) -> ComponentReasonLabels {
        ComponentReasonLabels {
            component: self.labels.clone(),
            reason: reason.to_owned(),
        }
    }
}

/// Series of one action.
#[derive(Clone)]
pub struct ActionMetrics {
    pub sent: Counter,
    pub failed: Counter,
    pub throttled: Counter,
    pub deduplicated: Counter,
    pub retries: Counter,
    pub latency: prometheus_client::metrics::histogram::Histogram,
}

/// Gauges of one input buffer: events queued and fill ratio.
#[derive(Clone)]
pub struct BufferMetrics {
    pub events: Gauge,
    pub utilization: Gauge<f64, AtomicU64>,
}

/// How much a sink's buffer holds before `when_full` applies: a memory buffer counts
/// events, a disk buffer bytes on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BufferCapacity {
    Events(usize),
    Bytes(u64),
}

/// Series of a sink's buffer, counted in events (never batches).
#[derive(Clone)]
pub struct SinkBufferMetrics {
    /// Events held (a disk buffer: appended and not yet acknowledged by the sink).
    pub events: Gauge,
    /// Bytes on disk (disk buffers only).
    pub byte_size: Gauge,
    pub received: Counter,
    pub sent: Counter,
    pub discarded: Counter,
    /// Records cut off a disk buffer as torn or corrupt.
    pub corrupted: Counter,
}

/// Series of one window aggregator.
#[derive(Clone)]
pub struct WindowMetrics {
    metrics: Metrics,
    labels: ComponentLabels,
    pub overflow: Counter,
    pub open_windows: Gauge,
    pub state_bytes: Gauge,
    /// Per aggregate, in declaration order.
    pub invalid_values: Vec<Counter>,
}

impl WindowMetrics {
    /// The counter of late or future events handled with `action`.
    pub fn out_of_bounds(&self, bound: &str, action: &str) -> Counter {
        self.metrics
            .window_out_of_bounds
            .get_or_create_owned(&BoundLabels {
                component: self.labels.clone(),
                bound: bound.to_owned(),
                action: action.to_owned(),
            })
    }
}
