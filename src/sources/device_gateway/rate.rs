//! Per-device rate limits on telemetry (`rate_limit: {messages_per_second, burst}`), as a
//! hub throttles a device that sends too fast.
//!
//! A device over its rate is slowed, not refused: the gateway stops reading its
//! connection until the token bucket (governor's GCRA) lets the next publish in. Nothing
//! is lost and no error reaches the device; its unacknowledged publishes wait in its own
//! send window and in the TCP buffers, so an SDK's `send_message` simply takes longer.
//! Dropping or refusing instead would make QoS 1 devices resend the same messages (more
//! traffic, not less), and QoS 0 ones lose readings silently. Each publish that had to
//! wait is counted (`device_gateway_throttled_total`).
//!
//! The bucket lives with the connection: one connection per device, so it is the
//! device's. A device that reconnects starts with a full burst; reconnecting costs a TLS
//! handshake and a registry check, which bounds what that gains.

use std::num::NonZeroU32;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use prometheus_client::metrics::counter::Counter;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::FieldProblem;

/// How fast one device may send telemetry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Telemetry publishes per second a device may sustain.
    pub messages_per_second: u32,
    /// Publishes a device may send at once after being quiet (default: one second's worth).
    #[serde(default)]
    pub burst: Option<u32>,
}

impl RateLimit {
    pub(super) fn check(&self) -> Vec<FieldProblem> {
        let mut problems = Vec::new();
        if self.messages_per_second == 0 {
            problems.push(FieldProblem::at(
                ["rate_limit", "messages_per_second"],
                "expected at least 1",
            ));
        }
        if self.burst == Some(0) {
            problems.push(FieldProblem::at(
                ["rate_limit", "burst"],
                "expected at least 1",
            ));
        }
        problems
    }

    fn quota(&self) -> Quota {
        let rate = NonZeroU32::new(self.messages_per_second).unwrap_or(NonZeroU32::MIN);
        let burst = self.burst.and_then(NonZeroU32::new).unwrap_or(rate);
        Quota::per_second(rate).allow_burst(burst)
    }
}

/// One connection's token bucket.
pub(super) struct DeviceRate {
    limiter: DefaultDirectRateLimiter,
    throttled: Counter,
}

impl DeviceRate {
    pub(super) fn new(limit: &RateLimit, throttled: Counter) -> Self {
        Self {
            limiter: RateLimiter::direct(limit.quota()),
            throttled,
        }
    }

    /// Returns once the device may send one more publish (at once while under its rate).
    pub(super) async fn admit(&self) {
        if self.limiter.check().is_err() {
            self.throttled.inc();
            self.limiter.until_ready().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_burst_passes_then_the_rate_holds() {
        let limit = RateLimit {
            messages_per_second: 50,
            burst: Some(5),
        };
        let throttled = Counter::default();
        let rate = DeviceRate::new(&limit, throttled.clone());
        let start = std::time::Instant::now();
        for _ in 0..5 {
            rate.admit().await;
        }
        assert_eq!(throttled.get(), 0, "the burst passes at once");
        for _ in 0..10 {
            rate.admit().await;
        }
        assert_eq!(throttled.get(), 10);
        // 10 more at 50/s take at least 9 intervals of 20 ms.
        assert!(start.elapsed() >= std::time::Duration::from_millis(180));
    }

    #[test]
    fn zero_rates_are_refused() {
        let zero = RateLimit {
            messages_per_second: 0,
            burst: Some(0),
        };
        assert_eq!(zero.check().len(), 2);
    }
}
