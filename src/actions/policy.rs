//! The delivery policies every action shares: `throttle`, `dedupe`, `buffer` (and its
//! deprecated spelling `queue`), `retry`.
//!
//! Throttling and dedupe count in wall-clock time: they limit how often people and
//! systems are notified, whatever the event time of the readings was.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::buffers::{BufferConfig, BufferType, WhenFull};
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

pub(super) fn default_throttle_key() -> Template {
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

/// An action's buffer type when `buffer.type` is not written: disk, the action's outbox,
/// so what an alarm handed to it is sent after a crash too.
pub const DEFAULT_BUFFER: BufferType = BufferType::Disk;

/// Deprecated: `queue:` is `buffer: { type: memory, max_events, when_full }`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// Notifications the queue holds.
    #[serde(default = "default_queue_max")]
    pub max_events: usize,
    #[serde(default)]
    pub when_full: WhenFull,
}

impl QueueConfig {
    /// The memory buffer this deprecated spelling stands for.
    pub fn as_buffer(&self) -> BufferConfig {
        BufferConfig {
            kind: Some(BufferType::Memory),
            max_events: Some(self.max_events),
            max_size: None,
            when_full: self.when_full,
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
    pub buffer: Option<&'a BufferConfig>,
    /// The deprecated spelling of a memory `buffer`.
    pub queue: Option<&'a QueueConfig>,
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
        match (self.buffer, self.queue) {
            (Some(_), Some(_)) => problems.push(FieldProblem::at(
                ["queue"],
                "`queue` is the deprecated spelling of `buffer`: keep only `buffer`",
            )),
            (None, Some(queue)) if queue.max_events == 0 => problems.push(FieldProblem::at(
                ["queue", "max_events"],
                "expected a queue of 1 or more",
            )),
            _ => problems.extend(self.buffer().check(DEFAULT_BUFFER)),
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

    /// What `weir validate` warns about: deprecated spellings.
    pub fn warnings(&self) -> Vec<FieldProblem> {
        match (self.buffer, self.queue) {
            (None, Some(queue)) => vec![FieldProblem::at(
                ["queue"],
                format!(
                    "`queue` is deprecated: write `buffer: {{ type: memory, max_events: {}, when_full: {} }}` (or leave it out for the default disk buffer, which survives a crash)",
                    queue.max_events,
                    when_full_name(queue.when_full),
                ),
            )],
            _ => Vec::new(),
        }
    }

    /// The buffer the action reads through, its type resolved: `buffer`, else the memory
    /// buffer `queue` stands for, else a disk buffer.
    pub fn buffer(&self) -> BufferConfig {
        let written = match (self.buffer, self.queue) {
            (Some(buffer), _) => *buffer,
            (None, Some(queue)) => queue.as_buffer(),
            (None, None) => BufferConfig::default(),
        };
        BufferConfig {
            kind: Some(written.kind_or(DEFAULT_BUFFER)),
            ..written
        }
    }
}

fn when_full_name(when_full: WhenFull) -> &'static str {
    match when_full {
        WhenFull::Block => "block",
        WhenFull::DropNewest => "drop_newest",
        WhenFull::DropOldest => "drop_oldest",
    }
}

/// Declares an action's config struct: its own fields, then the four policy fields every
/// action shares (`throttle`, `dedupe`, `buffer`, the deprecated `queue`, `retry`), and its
/// [`Policies`].
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
            /// Where notifications wait before they are sent: `{ type: disk }` (the default,
            /// the action's outbox: it survives a crash) or `{ type: memory, max_events }`,
            /// and `when_full`.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub buffer: Option<$crate::buffers::BufferConfig>,
            /// Deprecated: the spelling of `buffer: { type: memory, max_events, when_full }`
            /// before actions had disk buffers.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub queue: Option<$crate::actions::policy::QueueConfig>,
            /// Retries of transient failures, with exponential backoff and jitter.
            #[serde(default)]
            pub retry: $crate::actions::policy::RetryConfig,
        }

        impl $name {
            fn policies(&self) -> $crate::actions::policy::Policies<'_> {
                $crate::actions::policy::Policies {
                    throttle: self.throttle.as_ref(),
                    dedupe: self.dedupe.as_ref(),
                    buffer: self.buffer.as_ref(),
                    queue: self.queue.as_ref(),
                    retry: &self.retry,
                }
            }
        }
    };
}
pub(crate) use action_config;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration as Std;

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
