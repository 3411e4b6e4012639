//! Retrying a sink's writes: transient failures wait and try again, permanent ones do not.
//!
//! A sink classifies each failure. A transient one (the destination is down, a timeout)
//! is retried with exponential backoff and full jitter for as long as it takes: the sink
//! holds its batch, its buffer fills, and backpressure reaches the sources, so an outage
//! loses nothing. A permanent one (the destination refused these events for good) is
//! returned at once, for the sink to send the events to its `errors` output.

use std::future::Future;
use std::time::Duration;

use backon::BackoffBuilder;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::{self, FieldProblem};
use crate::telemetry::events::WriteRetried;
use crate::telemetry::{ComponentTelemetry, InternalEvent};

/// How a sink backs off between attempts of a write that failed transiently.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Wait before the first retry; doubles each time (with jitter).
    #[serde(default = "default_initial_backoff")]
    pub initial_backoff: config::Duration,
    /// The longest wait between two attempts.
    #[serde(default = "default_max_backoff")]
    pub max_backoff: config::Duration,
}

fn default_initial_backoff() -> config::Duration {
    config::Duration::from_millis(100)
}

fn default_max_backoff() -> config::Duration {
    config::Duration::from_secs(10)
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            initial_backoff: default_initial_backoff(),
            max_backoff: default_max_backoff(),
        }
    }
}

impl RetryConfig {
    pub fn check(&self) -> Vec<FieldProblem> {
        if self.max_backoff.get() < self.initial_backoff.get() {
            return vec![FieldProblem::at(
                ["retry", "max_backoff"],
                "expected a duration no shorter than `initial_backoff`",
            )];
        }
        Vec::new()
    }

    fn backoff(&self) -> impl Iterator<Item = Duration> + Send + Sync + 'static {
        backon::ExponentialBuilder::new()
            .with_min_delay(self.initial_backoff.get())
            .with_max_delay(self.max_backoff.get())
            .with_jitter()
            .without_max_times()
            .build()
    }
}

/// Why one attempt of a write failed.
#[derive(Debug)]
pub enum WriteError {
    /// May pass: retry.
    Transient(anyhow::Error),
    /// Will not pass: give up on these events.
    Permanent(anyhow::Error),
}

/// Runs `attempt` until it succeeds or fails permanently; transient failures are logged
/// (throttled), counted in `sink_retries_total`, and retried after a backoff.
pub async fn with_retries<T, F, Fut>(
    policy: &RetryConfig,
    telemetry: &ComponentTelemetry,
    mut attempt: F,
) -> Result<T, anyhow::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, WriteError>>,
{
    let mut backoff = Backoff::new(policy, telemetry);
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(WriteError::Permanent(err)) => return Err(err),
            Err(WriteError::Transient(err)) => backoff.wait(&err).await,
        }
    }
}

/// The waiting half of [`with_retries`], for loops whose attempts borrow their caller's
/// state mutably (a closure returning such a future cannot be written).
pub struct Backoff<'a> {
    delays: Box<dyn Iterator<Item = Duration> + Send + Sync>,
    policy: &'a RetryConfig,
    telemetry: &'a ComponentTelemetry,
}

impl<'a> Backoff<'a> {
    pub fn new(policy: &'a RetryConfig, telemetry: &'a ComponentTelemetry) -> Self {
        Self {
            delays: Box::new(policy.backoff()),
            policy,
            telemetry,
        }
    }

    /// Reports `err` as retried and sleeps for the next delay.
    pub async fn wait(&mut self, err: &anyhow::Error) {
        // The builder has no limit on attempts; the fallback only satisfies the type.
        let delay = self.delays.next().unwrap_or(self.policy.max_backoff.get());
        WriteRetried {
            message: &format!("{err:#}"),
            delay,
        }
        .emit(self.telemetry);
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::config::{ComponentId, ComponentKind};
    use crate::telemetry::Telemetry;

    fn fast() -> RetryConfig {
        RetryConfig {
            initial_backoff: config::Duration::from_millis(1),
            max_backoff: config::Duration::from_millis(2),
        }
    }

    #[tokio::test]
    async fn transient_failures_are_retried_until_success() {
        let telemetry =
            Telemetry::new().component(&ComponentId::new("s"), ComponentKind::Sink, "t");
        let attempts = AtomicUsize::new(0);
        let result = with_retries(&fast(), &telemetry, || async {
            match attempts.fetch_add(1, Ordering::Relaxed) {
                0..3 => Err(WriteError::Transient(anyhow::anyhow!("down"))),
                n => Ok(n),
            }
        })
        .await;
        assert_eq!(result.ok(), Some(3));
        assert_eq!(telemetry.sink_retries().get(), 3);
    }

    #[tokio::test]
    async fn permanent_failures_are_not_retried() {
        let telemetry =
            Telemetry::new().component(&ComponentId::new("s"), ComponentKind::Sink, "t");
        let attempts = AtomicUsize::new(0);
        let result: Result<(), _> = with_retries(&fast(), &telemetry, || async {
            attempts.fetch_add(1, Ordering::Relaxed);
            Err(WriteError::Permanent(anyhow::anyhow!("refused")))
        })
        .await;
        assert!(result.is_err());
        assert_eq!(attempts.load(Ordering::Relaxed), 1);
    }
}
