//! Typed internal events: each thing weir reports about itself is a small struct.
//!
//! A struct decides which counters move and what (if anything) is logged, so every call
//! site that reports "a payload failed to decode" produces the same series and log fields.

use super::{ComponentTelemetry, SinkBufferMetrics};

/// Something a component reports about itself.
pub trait InternalEvent {
    fn emit(self, telemetry: &ComponentTelemetry);
}

/// Events a component accepted (a source from its transport, others from their inputs).
pub struct EventsReceived {
    pub count: usize,
    /// Payload bytes read from the transport; zero for components fed by other components.
    pub bytes: usize,
}

impl InternalEvent for EventsReceived {
    fn emit(self, t: &ComponentTelemetry) {
        t.received_events.inc_by(self.count as u64);
        if self.bytes > 0 {
            t.received_bytes.inc_by(self.bytes as u64);
        }
    }
}

/// Bytes a sink wrote to its destination.
pub struct BytesSent {
    pub bytes: usize,
}

impl InternalEvent for BytesSent {
    fn emit(self, t: &ComponentTelemetry) {
        t.sent_bytes.inc_by(self.bytes as u64);
    }
}

/// Where in a component's work an error happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Reading from a transport (a socket, a request).
    Receiving,
    /// Turning input into events or events into other events.
    Processing,
    /// Writing to a destination.
    Sending,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Receiving => "receiving",
            Self::Processing => "processing",
            Self::Sending => "sending",
        }
    }
}

/// What kind of error happened; the `error_type` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorType {
    /// A payload that is not what its codec expects.
    Decode,
    /// A request that is malformed apart from its payload (path, headers, size).
    Request,
    /// A condition or template that failed for an event.
    Expression,
    /// A destination or file that refused a write.
    Io,
    /// Events that could not be encoded for their destination.
    Encode,
    /// A device sent more than its rate limit allows.
    RateLimited,
    /// A device the registry refused (bad token, unknown, disabled), or a broker that
    /// refused weir's credentials.
    Unauthorized,
    /// A state file (a window checkpoint) that could not be read.
    CorruptState,
    /// A client beyond a configured bound (connections, requests in flight, pending
    /// bytes, header or body time).
    OverLimit,
    /// Another client with the same MQTT client id keeps taking the session over.
    SessionTakenOver,
}

impl ErrorType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Decode => "decode_failed",
            Self::Request => "request_invalid",
            Self::Expression => "expression_failed",
            Self::Io => "io_failed",
            Self::Encode => "encode_failed",
            Self::RateLimited => "rate_limited",
            Self::Unauthorized => "unauthorized",
            Self::CorruptState => "state_corrupt",
            Self::OverLimit => "over_limit",
            Self::SessionTakenOver => "session_taken_over",
        }
    }
}

/// A component met an error; counted always, logged at most once per interval.
pub struct ComponentError<'a> {
    pub error_type: ErrorType,
    pub stage: Stage,
    pub message: &'a str,
    /// How many events the error affected (they went to `.errors` or were refused).
    pub count: usize,
}

impl InternalEvent for ComponentError<'_> {
    fn emit(self, t: &ComponentTelemetry) {
        t.errors(self.error_type.as_str(), self.stage.as_str())
            .inc_by(self.count.max(1) as u64);
        if let Some(suppressed) = t.error_log_permit() {
            tracing::warn!(
                component_id = t.component_id(),
                component_type = t.component_type(),
                error_type = self.error_type.as_str(),
                stage = self.stage.as_str(),
                suppressed,
                "{}",
                self.message
            );
        }
    }
}

/// A state file that could not be read was moved aside: counted as an error and logged
/// at error level, never rate-limited (each one is state given up).
pub struct StateFileCorrupt<'a> {
    pub file: &'a std::path::Path,
    pub moved_to: &'a std::path::Path,
    pub error: &'a str,
    /// What the component does without it.
    pub consequence: &'a str,
}

impl InternalEvent for StateFileCorrupt<'_> {
    fn emit(self, t: &ComponentTelemetry) {
        t.errors(ErrorType::CorruptState.as_str(), Stage::Processing.as_str())
            .inc();
        tracing::error!(
            component_id = t.component_id(),
            component_type = t.component_type(),
            error_type = ErrorType::CorruptState.as_str(),
            file = %self.file.display(),
            moved_to = %self.moved_to.display(),
            "{} is unreadable ({}); moved aside, {}",
            self.file.display(),
            self.error,
            self.consequence
        );
    }
}

/// Events a component dropped on purpose (a filter) or lost (no dead-letter path).
pub struct EventsDiscarded {
    pub count: usize,
    pub intentional: bool,
}

impl InternalEvent for EventsDiscarded {
    fn emit(self, t: &ComponentTelemetry) {
        if self.count > 0 {
            t.discarded(self.intentional).inc_by(self.count as u64);
        }
    }
}

/// Events a sink's full buffer dropped, as its `when_full` policy says.
pub struct BufferDiscarded<'a> {
    pub count: usize,
    pub buffer: &'a SinkBufferMetrics,
}

impl InternalEvent for BufferDiscarded<'_> {
    fn emit(self, t: &ComponentTelemetry) {
        if self.count > 0 {
            self.buffer.discarded.inc_by(self.count as u64);
            t.discarded(true).inc_by(self.count as u64);
        }
    }
}

/// A disk buffer could not write, read or open its files; it keeps the events and tries
/// again (the sources feel backpressure meanwhile). Counted always, logged at error at
/// most once per interval.
pub struct BufferIoFailed<'a> {
    pub message: &'a str,
}

impl InternalEvent for BufferIoFailed<'_> {
    fn emit(self, t: &ComponentTelemetry) {
        t.errors(ErrorType::Io.as_str(), Stage::Receiving.as_str())
            .inc();
        if let Some(suppressed) = t.error_log_permit() {
            tracing::error!(
                component_id = t.component_id(),
                component_type = t.component_type(),
                suppressed,
                "disk buffer: {}",
                self.message
            );
        }
    }
}

/// A disk buffer cut torn or corrupt records off a segment (at start, or when a read
/// found one); each is one event the sink will not see.
pub struct BufferRecordsCorrupted<'a> {
    pub records: u64,
    pub buffer: &'a SinkBufferMetrics,
    pub message: &'a str,
}

impl InternalEvent for BufferRecordsCorrupted<'_> {
    fn emit(self, t: &ComponentTelemetry) {
        self.buffer.corrupted.inc_by(self.records.max(1));
        tracing::error!(
            component_id = t.component_id(),
            component_type = t.component_type(),
            records = self.records,
            "disk buffer: {}",
            self.message
        );
    }
}

/// A sink will retry a write that failed for a reason that may pass.
pub struct WriteRetried<'a> {
    pub message: &'a str,
    pub delay: std::time::Duration,
}

impl InternalEvent for WriteRetried<'_> {
    fn emit(self, t: &ComponentTelemetry) {
        t.sink_retries().inc();
        ComponentError {
            error_type: ErrorType::Io,
            stage: Stage::Sending,
            message: &format!("{}; retrying in {:?}", self.message, self.delay),
            count: 1,
        }
        .emit(t);
    }
}

/// A sink wrote and committed a batch.
pub struct BatchCommitted {
    pub events: usize,
    pub bytes: usize,
    /// From the first write attempt to the commit, retries included.
    pub duration: std::time::Duration,
}

impl InternalEvent for BatchCommitted {
    fn emit(self, t: &ComponentTelemetry) {
        let (size, latency) = t.sink_batches();
        size.observe(self.events as f64);
        latency.observe(self.duration.as_secs_f64());
        BytesSent { bytes: self.bytes }.emit(t);
    }
}

/// An alarm changed state.
pub struct AlarmTransition<'a> {
    pub state: &'a str,
    pub severity: &'a str,
    /// +1 when an alarm became active, -1 when one cleared.
    pub active_change: i64,
}

impl InternalEvent for AlarmTransition<'_> {
    fn emit(self, t: &ComponentTelemetry) {
        t.alarm_transitions(self.state, self.severity).inc();
        if self.active_change != 0 {
            t.alarm_active().inc_by(self.active_change);
        }
        tracing::info!(
            component_id = t.component_id(),
            state = self.state,
            severity = self.severity,
            "alarm transition"
        );
    }
}

/// An HTTP request a source answered.
pub struct HttpResponse {
    pub status: u16,
}

impl InternalEvent for HttpResponse {
    fn emit(self, t: &ComponentTelemetry) {
        t.http_requests(self.status).inc();
    }
}

/// A reload was applied.
pub struct ReloadApplied {
    pub duration: std::time::Duration,
    pub generation: u64,
}

impl ReloadApplied {
    pub fn emit(self, metrics: &super::Metrics) {
        metrics.config_reloads.inc();
        metrics.config_generation.set(self.generation as i64);
        metrics
            .config_reload_duration
            .observe(self.duration.as_secs_f64());
    }
}

/// A reload was refused (invalid, not reloadable) or rolled back (a build failed).
pub struct ReloadFailed<'a> {
    pub reason: &'a str,
}

impl ReloadFailed<'_> {
    pub fn emit(self, metrics: &super::Metrics) {
        metrics
            .config_reload_failures
            .get_or_create(&super::ReasonLabels {
                reason: self.reason.to_owned(),
            })
            .inc();
    }
}

/// A request to the admin API that failed authentication, by `reason` (`missing`,
/// `malformed`, `unknown_token`, `expired_token`, `rate_limited`).
pub struct ApiAuthFailed {
    pub reason: &'static str,
}

impl ApiAuthFailed {
    pub fn emit(self, metrics: &super::Metrics) {
        metrics
            .api_auth_failures
            .get_or_create(&super::ReasonLabels {
                reason: self.reason.to_owned(),
            })
            .inc();
    }
}

/// A change made through the API, written to the audit log.
pub struct ApiAuditEvent {
    pub outcome: &'static str,
}

impl ApiAuditEvent {
    pub fn emit(self, metrics: &super::Metrics) {
        metrics
            .api_audit_events
            .get_or_create(&super::AuditLabels {
                outcome: self.outcome.to_owned(),
            })
            .inc();
    }
}
