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
//! The buckets are the gateway's, by device id, not the connection's: a device that
//! reconnects finds its bucket as it left it, so reconnecting gains it nothing. Buckets
//! that have refilled (as good as new) are dropped every minute ([`DeviceRates::forget_idle`]),
//! so memory follows the devices sending now, not every device ever seen.

use std::num::NonZeroU32;

use std::sync::Arc;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
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

/// The token buckets of one gateway's devices.
pub(super) struct DeviceRates {
    limiter: DefaultKeyedRateLimiter<String>,
    throttled: Counter,
}

impl DeviceRates {
    pub(super) fn new(limit: &RateLimit, throttled: Counter) -> Arc<Self> {
        Arc::new(Self {
            limiter: RateLimiter::keyed(limit.quota()),
            throttled,
        })
    }

    /// The bucket of `device_id`, for its connection.
    pub(super) fn of(self: &Arc<Self>, device_id: &str) -> DeviceRate {
        DeviceRate {
            rates: Arc::clone(self),
            device_id: device_id.to_owned(),
        }
    }

    /// Drops the buckets that have refilled: a device coming back gets a full one anyway.
    pub(super) fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

/// One device's bucket, as its connection holds it.
pub(super) struct DeviceRate {
    rates: Arc<DeviceRates>,
    device_id: String,
}

impl DeviceRate {
    /// Returns once the device may send one more publish (at once while under its rate).
    #[cfg(test)]
    async fn admit(&self) {
        if !self.try_admit() {
            self.ready().await;
        }
    }

    /// Whether the device may send one more publish now; a publish that may not is
    /// counted as throttled, and waits for [`Self::ready`].
    pub(super) fn try_admit(&self) -> bool {
        let admitted = self.rates.limiter.check_key(&self.device_id).is_ok();
        if !admitted {
            self.rates.throttled.inc();
        }
        admitted
    }

    /// Returns once the bucket lets one more publish in (and takes its token).
    /// Cancel-safe: a cancelled wait takes nothing.
    pub(super) async fn ready(&self) {
        self.rates.limiter.until_key_ready(&self.device_id).await;
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
        let rates = DeviceRates::new(&limit, throttled.clone());
        let rate = rates.of("d1");
        let start = std::time::Instant::now();
        for _ in 0..5 {
            rate.admit().await;
        }
        assert_eq!(throttled.get(), 0, "the burst passes at once");
        for _ in 0..10 {
            rate.admit().await;
        }
        // Most of the next 10 wait (a late wake-up may find the next one's cell ready).
        assert!((1..=10).contains(&throttled.get()), "{}", throttled.get());
        // 10 more at 50/s take at least 9 intervals of 20 ms.
        assert!(start.elapsed() >= std::time::Duration::from_millis(180));
    }

    #[tokio::test]
    async fn a_reconnecting_device_keeps_its_bucket_and_others_have_their_own() {
        let limit = RateLimit {
            messages_per_second: 1,
            burst: Some(3),
        };
        let throttled = Counter::default();
        let rates = DeviceRates::new(&limit, throttled.clone());
        for _ in 0..3 {
            rates.of("d1").admit().await;
        }
        // A new connection of d1 finds the bucket empty; d2's is full.
        assert!(rates.limiter.check_key(&"d1".to_owned()).is_err());
        for _ in 0..3 {
            rates.of("d2").admit().await;
        }
        assert_eq!(throttled.get(), 0);
        // Empty buckets are kept; only refilled ones would be forgotten.
        rates.forget_idle();
        assert!(rates.limiter.check_key(&"d1".to_owned()).is_err());
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
