//! The delivery policies every action shares: `throttle`, `dedupe`, `queue`, `retry`.
//!
//! Throttling and dedupe count in wall-clock time: they limit how often people and
//! systems are notified, whatever the event time of the readings was.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::{Duration, FieldProblem};
use crate::template::Template;

/// At most `max` notifications per key per `period`; the rest are dropped and counted.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ThrottleConfig {
    /// What is throttled separately, e.g. `{{ device_id }}` (the default) or
    /// `{{ device_id }}-{{ state }}` so a clear is not held back by its raise.
    #[serde(default = "default_throttle_key")]
    pub key: Template,
    /// Notifications allowed per key per period.
    #[serde(default = "default_throttle_max")]
    pub max: u32,
    /// e.g. `10m`.
    pub period: Duration,
}

fn default_throttle_key() -> Template {
    // A constant template always compiles.
    Template::compile("{{ device_id }}").unwrap_or_else(|_| unreachable!())
}

fn default_throttle_max() -> u32 {
    1
}

/// Drops a notification whose payload is identical to one sent within `window`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DedupeConfig {
    /// e.g. `5m`.
    pub window: Duration,
}

/// What to do with a notification when the queue is full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Wait for room: backpressure reaches the sources (nothing is lost).
    #[default]
    Block,
    /// Refuse the new notification (to `<id>.errors`, counted as dropped).
    DropNewest,
    /// Make room by dropping the oldest queued notification (to `<id>.errors`).
    DropOldest,
}

/// The queue between an action's input and its sender.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// Notifications the queue holds.
    #[serde(default = "default_queue_max")]
    pub max_events: usize,
    #[serde(default)]
    pub when_full: WhenFull,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            max_events: default_queue_max(),
            when_full: WhenFull::default(),
        }
    }
}

fn default_queue_max() -> usize {
    1000
}

/// Retries of transient failures (5xx, timeouts, a lost connection): exponential backoff
/// with jitter. Permanent failures (a 4xx, a refused address) are not retried.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts in all, the first one included; after the last the notification goes to
    /// `<id>.errors`.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// Delay before the first retry; doubled (with jitter) for each next one.
    #[serde(default = "default_initial")]
    pub initial_backoff: Duration,
    /// The longest delay between two attempts.
    #[serde(default = "default_max_backoff")]
    pub max_backoff: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            attempts: default_attempts(),
            initial_backoff: default_initial(),
            max_backoff: default_max_backoff(),
        }
    }
}

fn default_attempts() -> u32 {
    8
}
fn default_initial() -> Duration {
    Duration::from_millis(200)
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(30)
}

impl RetryConfig {
    /// The delays between attempts (jittered), one fewer than `attempts`.
    pub fn delays(&self) -> impl Iterator<Item = std::time::Duration> + use<> {
        use backon::BackoffBuilder;
        let max = self.max_backoff.get();
        backon::ExponentialBuilder::default()
            .with_min_delay(self.initial_backoff.get())
            .with_max_delay(max)
            .with_max_times(self.attempts.saturating_sub(1) as usize)
            .with_jitter()
            .build()
            // backon's jitter adds up to the delay again; the cap is the cap.
            .map(move |delay| delay.min(max))
    }
}

/// The policies of one action, as written in its configuration.
#[derive(Clone, Copy, Debug)]
pub struct Policies<'a> {
    pub throttle: Option<&'a ThrottleConfig>,
    pub dedupe: Option<&'a DedupeConfig>,
    pub queue: &'a QueueConfig,
    pub retry: &'a RetryConfig,
}

impl Policies<'_> {
    /// Problems with the shared options, by field.
    pub fn check(&self) -> Vec<FieldProblem> {
        let mut problems = Vec::new();
        if let Some(throttle) = self.throttle {
            if throttle.max == 0 {
                problems.push(FieldProblem::at(
                    ["throttle", "max"],
                    "expected 1 or more notifications per period",
                ));
            }
            if throttle.period.get().is_zero() {
                problems.push(FieldProblem::at(
                    ["throttle", "period"],
                    "expected a period above zero",
                ));
            }
        }
        if self.dedupe.is_some_and(|d| d.window.get().is_zero()) {
            problems.push(FieldProblem::at(
                ["dedupe", "window"],
                "expected a window above zero",
            ));
        }
        if self.queue.max_events == 0 {
            problems.push(FieldProblem::at(
                ["queue", "max_events"],
                "expected a queue of 1 or more",
            ));
        }
        if self.retry.attempts == 0 {
            problems.push(FieldProblem::at(
                ["retry", "attempts"],
                "expected 1 or more attempts (1: no retries)",
            ));
        }
        if self.retry.initial_backoff > self.retry.max_backoff {
            problems.push(FieldProblem::at(
                ["retry", "initial_backoff"],
                "expected at most `max_backoff`",
            ));
        }
        problems
    }
}

/// Declares an action's config struct: its own fields, then the four policy fields every
/// action shares (`throttle`, `dedupe`, `queue`, `retry`), and its [`Policies`].
macro_rules! action_config {
    ($(#[$meta:meta])* pub struct $name:ident { $($fields:tt)* }) => {
        $(#[$meta])*
        #[derive(
            Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize, schemars::JsonSchema,
        )]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $($fields)*
            /// At most `max` notifications per key per `period`, e.g.
            /// `{ key: "{{ device_id }}", max: 1, period: 10m }`.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub throttle: Option<$crate::actions::policy::ThrottleConfig>,
            /// Drops a notification identical to one sent within `window`.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub dedupe: Option<$crate::actions::policy::DedupeConfig>,
            /// The bounded queue in front of the sender, and `when_full`.
            #[serde(default)]
            pub queue: $crate::actions::policy::QueueConfig,
            /// Retries of transient failures, with exponential backoff and jitter.
            #[serde(default)]
            pub retry: $crate::actions::policy::RetryConfig,
        }

        impl $name {
            fn policies(&self) -> $crate::actions::policy::Policies<'_> {
                $crate::actions::policy::Policies {
                    throttle: self.throttle.as_ref(),
                    dedupe: self.dedupe.as_ref(),
                    queue: &self.queue,
                    retry: &self.retry,
                }
            }
        }
    };
}
pub(crate) use action_config;

/// How often idle keys are forgotten, so state stays bounded by recent activity.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Sliding-window counts of notifications per key.
pub struct Throttler {
    max: usize,
    period: std::time::Duration,
    sent: HashMap<String, VecDeque<Instant>>,
    last_sweep: Instant,
}

impl Throttler {
    pub fn new(config: &ThrottleConfig) -> Self {
        Self {
            max: config.max as usize,
            period: config.period.get(),
            sent: HashMap::new(),
            last_sweep: Instant::now(),
        }
    }

    /// Whether a notification for `key` may go now; if so it is counted.
    pub fn admit(&mut self, key: &str, now: Instant) -> bool {
        self.sweep(now);
        let times = self.sent.entry(key.to_owned()).or_default();
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.period)
        {
            times.pop_front();
        }
        if times.len() >= self.max {
            return false;
        }
        times.push_back(now);
        true
    }

    fn sweep(&mut self, now: Instant) {
        if now.duration_since(self.last_sweep) < SWEEP_EVERY {
            return;
        }
        self.last_sweep = now;
        let period = self.period;
        self.sent.retain(|_, times| {
            times
                .back()
                .is_some_and(|t| now.duration_since(*t) < period)
        });
    }
}

/// Payload fingerprints seen within the window.
pub struct Deduper {
    window: std::time::Duration,
    seen: HashMap<u64, Instant>,
    last_sweep: Instant,
}

impl Deduper {
    pub fn new(config: &DedupeConfig) -> Self {
        Self {
            window: config.window.get(),
            seen: HashMap::new(),
            last_sweep: Instant::now(),
        }
    }

    /// Whether `fingerprint` was seen within the window; records it otherwise.
    pub fn is_duplicate(&mut self, fingerprint: u64, now: Instant) -> bool {
        if now.duration_since(self.last_sweep) >= SWEEP_EVERY {
            self.last_sweep = now;
            let window = self.window;
            self.seen.retain(|_, at| now.duration_since(*at) < window);
        }
        match self.seen.get(&fingerprint) {
            Some(at) if now.duration_since(*at) < self.window => true,
            _ => {
                self.seen.insert(fingerprint, now);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration as Std;

    #[test]
    fn throttle_allows_max_per_key_per_period() {
        let config = ThrottleConfig {
            key: default_throttle_key(),
            max: 2,
            period: Duration::from_secs(10),
        };
        let mut throttle = Throttler::new(&config);
        let t0 = Instant::now();
        assert!(throttle.admit("a", t0));
        assert!(throttle.admit("a", t0 + Std::from_secs(1)));
        assert!(!throttle.admit("a", t0 + Std::from_secs(2)));
        assert!(
            throttle.admit("b", t0 + Std::from_secs(2)),
            "keys are separate"
        );
        assert!(
            throttle.admit("a", t0 + Std::from_secs(10)),
            "the window slides"
        );
        assert!(!throttle.admit("a", t0 + Std::from_secs(10)));
    }

    #[test]
    fn dedupe_drops_identical_payloads_within_the_window() {
        let mut dedupe = Deduper::new(&DedupeConfig {
            window: Duration::from_secs(5),
        });
        let t0 = Instant::now();
        assert!(!dedupe.is_duplicate(1, t0));
        assert!(dedupe.is_duplicate(1, t0 + Std::from_secs(4)));
        assert!(!dedupe.is_duplicate(2, t0 + Std::from_secs(4)));
        assert!(!dedupe.is_duplicate(1, t0 + Std::from_secs(6)));
    }

    #[test]
    fn retry_delays_grow_and_stop() {
        let retry = RetryConfig {
            attempts: 4,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(250),
        };
        let delays: Vec<_> = retry.delays().collect();
        assert_eq!(delays.len(), 3);
        // Jitter never takes a delay past `max_backoff`.
        assert!(
            delays.iter().all(|d| *d <= Std::from_millis(250)),
            "{delays:?}"
        );
        assert!(delays[0] >= Std::from_millis(100));
    }
}
