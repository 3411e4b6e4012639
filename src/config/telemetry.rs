//! `telemetry:`: where weir sends its own telemetry besides `/metrics` and its log.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Duration, RedactedUrl};

/// weir's own telemetry.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Export the hops of sampled readings (a source's `trace.sample`, or a `traceparent`
    /// flagged sampled) as OpenTelemetry spans over OTLP/HTTP with JSON. Off by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp: Option<OtlpConfig>,
}

/// An OpenTelemetry collector that takes OTLP/HTTP.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// The collector's base URL (`http://collector:4318`): spans are posted to
    /// `<endpoint>/v1/traces`, as OTLP's `OTEL_EXPORTER_OTLP_ENDPOINT` does.
    #[schemars(with = "String")]
    pub endpoint: RedactedUrl,
    /// Spans waiting to be sent; beyond it new spans are dropped (the pipeline never waits
    /// for the collector).
    #[serde(default = "default_max_queued_spans")]
    pub max_queued_spans: std::num::NonZeroUsize,
    /// Spans per request.
    #[serde(default = "default_batch_spans")]
    pub batch_spans: std::num::NonZeroUsize,
    /// How long a span may wait for a full batch before it is sent.
    #[serde(default = "default_flush_interval")]
    pub flush_interval: Duration,
    /// How long one request may take.
    #[serde(default = "default_timeout")]
    pub timeout: Duration,
}

fn default_max_queued_spans() -> std::num::NonZeroUsize {
    std::num::NonZeroUsize::new(4096).unwrap_or(std::num::NonZeroUsize::MIN)
}

fn default_batch_spans() -> std::num::NonZeroUsize {
    std::num::NonZeroUsize::new(512).unwrap_or(std::num::NonZeroUsize::MIN)
}

fn default_flush_interval() -> Duration {
    Duration::from_secs(1)
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
