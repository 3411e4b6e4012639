//! weir's own instrumentation: Prometheus metrics and structured logs.
//!
//! Metric names live in exactly one place, [`Metrics`]; components never name a metric.
//! A component gets a [`ComponentTelemetry`] handle with its labels already applied and
//! reports what happened by emitting small typed events (see [`events`]), so the hot path
//! touches only atomics and a name cannot drift between two call sites.

mod component;
pub mod events;
mod labels;
pub mod logging;
pub mod otlp;
pub mod trace;

use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub use component::{
    ActionMetrics, BufferCapacity, BufferMetrics, ComponentTelemetry, GatewayMetrics,
    SinkBufferMetrics, WindowMetrics,
};
pub use events::InternalEvent;
pub use labels::*;

use crate::config::component::{ComponentId, ComponentKind};

/// The series of direct-method calls to devices, process-wide (the calls come from the
/// API and from actions, through the `device_sessions` service).
#[derive(Clone)]
pub struct DeviceMethodMetrics {
    outcomes: Family<MethodOutcomeLabels, Counter>,
    pub latency: Histogram,
    pub stray_responses: Counter,
}

impl DeviceMethodMetrics {
    /// The counter of calls that ended with `outcome`.
    pub fn outcome(&self, outcome: &str) -> Counter {
        self.outcomes.get_or_create_owned(&MethodOutcomeLabels {
            outcome: outcome.to_owned(),
        })
    }
}

/// A histogram family of one bucket layout.
pub type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn action_latency_histogram() -> Histogram {
    // 1 ms to ~33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

fn component_latency_histogram() -> Histogram {
    // 0.1 ms to ~105 s.
    Histogram::new(exponential_buckets(0.0001, 4.0, 11))
}

/// Every metric family weir exports. Cloning shares the underlying series.
#[derive(Clone)]
pub struct Metrics {
    pub received_events: Family<ComponentLabels, Counter>,
    pub received_bytes: Family<ComponentLabels, Counter>,
    pub sent_events: Family<OutputLabels, Counter>,
    pub sent_bytes: Family<ComponentLabels, Counter>,
    pub errors: Family<ErrorLabels, Counter>,
    pub discarded_events: Family<DiscardLabels, Counter>,
    pub buffer_events: Family<BufferLabels, Gauge>,
    pub buffer_byte_size: Family<BufferLabels, Gauge>,
    pub buffer_received_events: Family<BufferLabels, Counter>,
    pub buffer_sent_events: Family<BufferLabels, Counter>,
    pub buffer_corrupted_records: Family<BufferLabels, Counter>,
    pub buffer_max_event_size: Family<BufferLabels, Gauge>,
    pub buffer_max_byte_size: Family<BufferLabels, Gauge>,
    pub buffer_utilization: Family<ComponentLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub http_requests: Family<StatusLabels, Counter>,
    pub window_out_of_bounds: Family<BoundLabels, Counter>,
    pub window_overflow: Family<ComponentLabels, Counter>,
    pub window_invalid_values: Family<AggregateLabels, Counter>,
    pub window_open: Family<ComponentLabels, Gauge>,
    pub window_closed_early: Family<ComponentLabels, Counter>,
    pub window_state_bytes: Family<ComponentLabels, Gauge>,
    /// Data files a table-reading source read or skipped, by `outcome`.
    pub source_files: Family<OutcomeLabels, Counter>,
    /// Rows a table-reading source planned to read (from the files' statistics).
    pub source_planned_rows: Family<ComponentLabels, Gauge>,
    pub topology_components: Gauge,
    pub topology_failed_components: Gauge,
    pub source_connected: Family<ComponentLabels, Gauge>,
    pub source_pending_deliveries: Family<ComponentLabels, Gauge>,
    pub source_lag: Family<ComponentLabels, Gauge>,
    pub buffer_discarded_events: Family<BufferLabels, Counter>,
    pub sink_retries: Family<ComponentLabels, Counter>,
    pub sink_batch_events: Family<ComponentLabels, Histogram>,
    pub sink_commit_duration: Family<ComponentLabels, Histogram>,
    pub config_reloads: Counter,
    pub config_reload_failures: Family<ReasonLabels, Counter>,
    pub config_generation: Gauge,
    pub config_reload_duration: Histogram,
    pub started_at: Gauge,
    pub registry_devices: Family<DeviceStatusLabels, Gauge>,
    pub registry_auth_failures: Family<ReasonLabels, Counter>,
    pub api_auth_failures: Family<ReasonLabels, Counter>,
    pub api_audit_events: Family<AuditLabels, Counter>,
    pub registry_lookups: Counter,
    pub alarm_transitions: Family<AlarmLabels, Counter>,
    pub alarm_active: Family<ComponentLabels, Gauge>,
    pub action_notifications: Family<OutcomeLabels, Counter>,
    pub action_retries: Family<ComponentLabels, Counter>,
    pub action_latency: HistogramFamily<ComponentLabels>,
    pub gateway_connected_devices: Family<ComponentLabels, Gauge>,
    pub gateway_connects: Family<ComponentLabels, Counter>,
    pub gateway_disconnects: Family<ComponentReasonLabels, Counter>,
    pub gateway_auth_failures: Family<ComponentReasonLabels, Counter>,
    pub gateway_topic_violations: Family<ComponentLabels, Counter>,
    pub gateway_throttled: Family<ComponentLabels, Counter>,
    pub gateway_registrations: Family<OutcomeLabels, Counter>,
    pub gateway_devicebound_messages: Family<ComponentLabels, Gauge>,
    pub device_methods: Family<MethodOutcomeLabels, Counter>,
    pub device_method_latency: Histogram,
    pub device_method_stray_responses: Counter,
    pub device_twin_updates: Family<TwinKindLabels, Counter>,
    pub gateway_duplicates_dropped: Family<ComponentLabels, Counter>,
    pub tap_copied_events: Counter,
    pub tap_dropped_events: Counter,
    pub tap_sessions: Gauge,
    pub component_latency: HistogramFamily<ComponentLabels>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            received_events: Family::default(),
            received_bytes: Family::default(),
            sent_events: Family::default(),
            sent_bytes: Family::default(),
            errors: Family::default(),
            discarded_events: Family::default(),
            buffer_events: Family::default(),
            buffer_byte_size: Family::default(),
            buffer_received_events: Family::default(),
            buffer_sent_events: Family::default(),
            buffer_corrupted_records: Family::default(),
            buffer_max_event_size: Family::default(),
            buffer_max_byte_size: Family::default(),
            buffer_utilization: Family::default(),
            http_requests: Family::default(),
            window_out_of_bounds: Family::default(),
            window_overflow: Family::default(),
            window_invalid_values: Family::default(),
            window_open: Family::default(),
            window_closed_early: Family::default(),
            window_state_bytes: Family::default(),
            source_files: Family::default(),
            source_planned_rows: Family::default(),
            topology_components: Gauge::default(),
            topology_failed_components: Gauge::default(),
            source_connected: Family::default(),
            source_pending_deliveries: Family::default(),
            source_lag: Family::default(),
            buffer_discarded_events: Family::default(),
            sink_retries: Family::default(),
            // 1 to ~1M events.
            sink_batch_events: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(1.0, 4.0, 11))
            }),
            // 1 ms to ~65 s.
            sink_commit_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 17))
            }),
            config_reloads: Counter::default(),
            config_reload_failures: Family::default(),
            config_generation: Gauge::default(),
            // 1 ms to ~16 s.
            config_reload_duration: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            started_at: Gauge::default(),
            registry_devices: Family::default(),
            registry_auth_failures: Family::default(),
            api_auth_failures: Family::default(),
            api_audit_events: Family::default(),
            registry_lookups: Counter::default(),
            alarm_transitions: Family::default(),
            alarm_active: Family::default(),
            action_notifications: Family::default(),
            action_retries: Family::default(),
            action_latency: Family::new_with_constructor(action_latency_histogram),
            gateway_connected_devices: Family::default(),
            gateway_connects: Family::default(),
            gateway_disconnects: Family::default(),
            gateway_auth_failures: Family::default(),
            gateway_topic_violations: Family::default(),
            gateway_throttled: Family::default(),
            gateway_registrations: Family::default(),
            gateway_devicebound_messages: Family::default(),
            device_methods: Family::default(),
            // 1 ms to ~5 min.
            device_method_latency: Histogram::new(exponential_buckets(0.001, 2.0, 19)),
            device_method_stray_responses: Counter::default(),
            device_twin_updates: Family::default(),
            gateway_duplicates_dropped: Family::default(),
            tap_copied_events: Counter::default(),
            tap_dropped_events: Counter::default(),
            tap_sessions: Gauge::default(),
            component_latency: Family::new_with_constructor(component_latency_histogram),
        }
    }
}

impl Metrics {
    fn register(&self, registry: &mut Registry) {
        let m = self.clone();
        registry.register(
            "component_received_events",
            "Events a component accepted from its inputs or its transport",
            m.received_events,
        );
        registry.register(
            "component_received_bytes",
            "Payload bytes a source read from its transport",
            m.received_bytes,
        );
        registry.register(
            "component_sent_events",
            "Events a component sent downstream, by output",
            m.sent_events,
        );
        registry.register(
            "component_sent_bytes",
            "Bytes a sink wrote to its destination",
            m.sent_bytes,
        );
        registry.register(
            "component_errors",
            "Errors a component met, by type and stage",
            m.errors,
        );
        registry.register(
            "component_discarded_events",
            "Events a component dropped (intentional: filtered out; otherwise lost to an error)",
            m.discarded_events,
        );
        registry.register(
            "buffer_events",
            "Events (not batches) held in a buffer: a component's input channel, or a sink's memory or disk buffer (there: not yet acknowledged by the sink)",
            m.buffer_events,
        );
        registry.register(
            "buffer_byte_size",
            "Bytes a sink's disk buffer occupies on disk (segment files, acknowledged records included until their segment is deleted)",
            m.buffer_byte_size,
        );
        registry.register(
            "buffer_received_events",
            "Events (not batches) a sink's buffer accepted from its input (a disk buffer: durably appended)",
            m.buffer_received_events,
        );
        registry.register(
            "buffer_sent_events",
            "Events (not batches) a sink's buffer handed to its sink, redeliveries after a failure included",
            m.buffer_sent_events,
        );
        registry.register(
            "buffer_corrupted_records",
            "Torn or CRC-32C-failing records (one event each) a disk buffer cut off its segments; what followed a bad record in its segment goes with it (its bytes are in the error log line)",
            m.buffer_corrupted_records,
        );
        registry.register(
            "buffer_max_event_size",
            "Events (not batches) a buffer holds: a sink's memory buffer before `when_full` applies, a component's input channel (`buffer_type=\"channel\"`, `channel_max_events`) before its producers wait",
            m.buffer_max_event_size,
        );
        registry.register(
            "buffer_max_byte_size",
            "Bytes a sink's disk buffer may occupy on disk (`max_size`) before `when_full` applies",
            m.buffer_max_byte_size,
        );
        registry.register(
            "buffer_utilization",
            "Fill ratio (0..1) of a component's input channel, in events",
            m.buffer_utilization,
        );
        registry.register(
            "http_server_requests",
            "HTTP requests answered by a source, by status code",
            m.http_requests,
        );
        registry.register(
            "source_files",
            "Data files a table-reading source read or skipped (pruned by partition values or statistics), by outcome",
            m.source_files,
        );
        registry.register(
            "source_planned_rows",
            "Rows a table-reading source plans to read, from its files' statistics (the progress of a batch run)",
            m.source_planned_rows,
        );
        registry.register(
            "aggregator_out_of_bounds_events",
            "Late or future events, by what was done with them (drop, route, adjust)",
            m.window_out_of_bounds,
        );
        registry.register(
            "aggregator_overflow_events",
            "Events refused because max_open_windows was reached",
            m.window_overflow,
        );
        registry.register(
            "aggregator_invalid_values",
            "Non-numeric values skipped by a numeric aggregate",
            m.window_invalid_values,
        );
        registry.register(
            "aggregator_open_windows",
            "Windows open right now",
            m.window_open,
        );
        registry.register(
            "aggregator_windows_closed_early",
            "Open windows closed early and emitted with partial: true because the window definition changed (at a reload, or since the checkpoint a start resumes), in windows",
            m.window_closed_early,
        );
        registry.register(
            "aggregator_state_bytes",
            "Approximate memory held by open windows and group state",
            m.window_state_bytes,
        );
        registry.register(
            "topology_components",
            "Components in the running topology",
            m.topology_components,
        );
        registry.register(
            "topology_failed_components",
            "Components that failed and stopped (the error log says why); `/ready` answers 503 while there is one",
            m.topology_failed_components,
        );
        registry.register(
            "source_connected",
            "1 while a source is connected to its broker and subscribed (an http source: listening), else 0",
            m.source_connected,
        );
        registry.register(
            "source_pending_deliveries",
            "Deliveries (requests, broker messages) accepted but not yet committed by every sink",
            m.source_pending_deliveries,
        );
        registry.register(
            "source_lag_messages",
            "Messages waiting in the broker for this source (AMQP queue depth)",
            m.source_lag,
        );
        registry.register(
            "buffer_discarded_events",
            "Events (not batches) a sink's full buffer dropped because of `when_full: drop_newest | drop_oldest`",
            m.buffer_discarded_events,
        );
        registry.register(
            "sink_retries",
            "Writes a sink retried after a transient error",
            m.sink_retries,
        );
        registry.register(
            "sink_batch_events",
            "Events per batch a sink wrote and committed",
            m.sink_batch_events,
        );
        registry.register(
            "sink_commit_duration_seconds",
            "Time a sink took to write and commit one batch, retries included",
            m.sink_commit_duration,
        );
        registry.register(
            "config_reloads",
            "Reloads that were applied",
            m.config_reloads,
        );
        registry.register(
            "config_reload_failures",
            "Reloads that were refused or rolled back, by reason",
            m.config_reload_failures,
        );
        registry.register(
            "config_generation",
            "How many configurations have been applied since start (1 = the first)",
            m.config_generation,
        );
        registry.register(
            "config_reload_duration_seconds",
            "Time from a reload trigger to the new topology running",
            m.config_reload_duration,
        );
        registry.register(
            "process_started_at_seconds",
            "Unix time at which weir started",
            m.started_at,
        );
        registry.register(
            "registry_devices",
            "Devices in the device registry, by status",
            m.registry_devices,
        );
        registry.register(
            "registry_auth_failures",
            "Devices refused at a source, by reason (bad token, unknown, disabled, ...)",
            m.registry_auth_failures,
        );
        registry.register(
            "api_auth_failures",
            "Requests to the admin API that failed authentication, by reason",
            m.api_auth_failures,
        );
        registry.register(
            "api_audit_events",
            "Changes made through the API, written to the audit log, by outcome",
            m.api_audit_events,
        );
        registry.register(
            "registry_lookups",
            "Device lookups served from the registry's memory (enrich, gates)",
            m.registry_lookups,
        );
        registry.register(
            "alarm_transitions",
            "Alarm transitions emitted, by state (raised, severity_changed, cleared, acknowledged) and severity",
            m.alarm_transitions,
        );
        registry.register("alarm_active", "Alarms active right now", m.alarm_active);
        registry.register(
            "action_notifications",
            "Notifications an action handled, by outcome (sent, failed: dead-lettered, throttled, deduplicated: an identical payload within `dedupe.window` or a copy of one already sent with the same idempotency key); what a full buffer drops is in buffer_discarded_events_total",
            m.action_notifications,
        );
        registry.register(
            "action_retries",
            "Attempts an action repeated after a transient failure (5xx, timeout, broker error)",
            m.action_retries,
        );
        registry.register(
            "action_latency_seconds",
            "Time from an action taking a notification from its buffer to its destination accepting it, retries included",
            m.action_latency,
        );
        registry.register(
            "device_gateway_connected_devices",
            "Devices connected to a device gateway right now (one connection each)",
            m.gateway_connected_devices,
        );
        registry.register(
            "device_gateway_connects",
            "Devices a device gateway let in (CONNACK accepted)",
            m.gateway_connects,
        );
        registry.register(
            "device_gateway_disconnects",
            "Connections of admitted devices that ended, by reason",
            m.gateway_disconnects,
        );
        registry.register(
            "device_gateway_auth_failures",
            "CONNECTs a device gateway refused, by reason (the registry's reasons, bad_client_id, bad_username)",
            m.gateway_auth_failures,
        );
        registry.register(
            "device_gateway_topic_violations",
            "Devices disconnected for publishing or subscribing outside their own topics",
            m.gateway_topic_violations,
        );
        registry.register(
            "device_gateway_throttled",
            "Telemetry publishes a device gateway held back because their device was over its rate_limit",
            m.gateway_throttled,
        );
        registry.register(
            "device_gateway_registrations",
            "Provisioning requests a device gateway answered, by outcome (assigned, disabled, failed)",
            m.gateway_registrations,
        );
        registry.register(
            "device_gateway_devicebound_messages",
            "Cloud-to-device messages waiting for their devices (queued, not yet acknowledged), all devices together",
            m.gateway_devicebound_messages,
        );
        registry.register(
            "device_methods",
            "Direct-method calls to devices, by outcome (answered, not_connected, timeout, disconnected)",
            m.device_methods,
        );
        registry.register(
            "device_method_latency_seconds",
            "Time from a direct-method request going to its device to the device's answer",
            m.device_method_latency,
        );
        registry.register(
            "device_method_stray_responses",
            "Direct-method answers ignored: their request id was not pending for that device (late, or made up)",
            m.device_method_stray_responses,
        );
        registry.register(
            "device_twin_updates",
            "Changes to device twins, by kind (desired: made through the API, reported: made by the device)",
            m.device_twin_updates,
        );
        registry.register(
            "device_gateway_duplicates_dropped",
            "Telemetry publishes acknowledged and dropped because their device sent that `$.mid` before",
            m.gateway_duplicates_dropped,
        );
        registry.register(
            "tap_copied_events",
            "Events copied for `weir tap` sessions, those a slow session then dropped included (none while no tap is attached)",
            m.tap_copied_events,
        );
        registry.register(
            "tap_dropped_events",
            "Events a `weir tap` session lost because it read too slowly (the pipeline never waits for a tap)",
            m.tap_dropped_events,
        );
        registry.register(
            "tap_sessions",
            "`weir tap` sessions attached right now",
            m.tap_sessions,
        );
        registry.register(
            "component_latency_seconds",
            "Time from a sampled reading's arrival at its source to each hop: a component sending it on an output, or a sink or action taking it from its input (traced readings only)",
            m.component_latency,
        );
    }

    /// The direct-method series.
    pub fn device_methods(&self) -> DeviceMethodMetrics {
        DeviceMethodMetrics {
            outcomes: self.device_methods.clone(),
            latency: self.device_method_latency.clone(),
            stray_responses: self.device_method_stray_responses.clone(),
        }
    }
}

/// The process-wide metrics registry.
pub struct Telemetry {
    metrics: Metrics,
    registry: Mutex<Registry>,
    /// Components whose task failed, until a reload replaces or removes them.
    failed: Mutex<std::collections::BTreeSet<ComponentId>>,
    /// Where hops of sampled readings go as spans, once `telemetry.otlp` is set.
    spans: trace::SpanSlot,
}

impl Telemetry {
    pub fn new() -> Arc<Self> {
        let metrics = Metrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let started = jiff::Timestamp::now().as_second();
        metrics.started_at.set(started);
        Arc::new(Self {
            metrics,
            registry: Mutex::new(registry),
            failed: Mutex::new(std::collections::BTreeSet::new()),
            spans: trace::SpanSlot::default(),
        })
    }

    /// Records that `id` failed (`true`) or was replaced or removed (`false`).
    pub fn set_failed(&self, id: &ComponentId, failed: bool) {
        let mut set = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        match failed {
            true => set.insert(id.clone()),
            false => set.remove(id),
        };
        self.metrics
            .topology_failed_components
            .set(set.len() as i64);
    }

    /// The components that failed and stopped.
    pub fn failed_components(&self) -> Vec<ComponentId> {
        let set = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        set.iter().cloned().collect()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Sends the hops of sampled readings to `queue` as spans (`telemetry.otlp`).
    pub fn export_spans(&self, queue: Arc<otlp::SpanQueue>) {
        self.spans.store(Some(queue));
    }

    /// A handle for one component, with its labels applied once.
    pub fn component(
        &self,
        id: &ComponentId,
        kind: ComponentKind,
        type_name: &str,
    ) -> ComponentTelemetry {
        ComponentTelemetry::new(
            self.metrics.clone(),
            Arc::clone(&self.spans),
            ComponentLabels {
                component_id: id.to_string(),
                component_kind: kind.noun().to_owned(),
                component_type: type_name.to_owned(),
            },
        )
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}
