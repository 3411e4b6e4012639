//! The service manager's side of `weir run`: `sd_notify(3)` messages for a `Type=notify`
//! unit.
//!
//! `READY=1` once the topology runs, `RELOADING=1` … `READY=1` around every reload (applied
//! or refused), `STOPPING=1` when the drain starts, `STATUS=` with the components and the
//! events per second the sources take in, and `WATCHDOG=1` when the unit sets
//! `WatchdogSec=`. Without `NOTIFY_SOCKET` every call is a no-op, so `weir run` in a
//! terminal or a container sends nothing.
//!
//! The watchdog is fed by the daemon loop (the one that owns the topology), and only after
//! [`Probe`] found the topology alive: component tasks still running and the runtime's
//! worker threads answering. A hung loop, a wedged runtime or a topology whose tasks all
//! died stops the pings, and systemd restarts weir after `WatchdogSec=`.

use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// How often `STATUS=` is refreshed when the watchdog does not ask for more often.
pub const STATUS_EVERY: Duration = Duration::from_secs(10);

/// How long the worker threads may take to run a probe task before the topology counts
/// as not alive.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Sends `states` to the service manager, if there is one. A failure to send is logged at
/// debug level: a missing or closed notify socket must not stop weir.
fn send(states: &[NotifyState]) {
    if let Err(err) = sd_notify::notify(states) {
        tracing::debug!("sd_notify failed: {err}");
    }
}

pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn reloading() {
    send(&[NotifyState::Reloading, NotifyState::Status("reloading")]);
}

pub fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("stopping: draining the topology"),
    ]);
}

pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// Half the unit's `WatchdogSec=` (as `sd_watchdog_enabled(3)` advises), when it set one
/// for this process.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
        .filter(|d| !d.is_zero())
        .map(|d| d / 2)
}

/// The liveness check behind `WATCHDOG=1`.
pub struct Probe;

impl Probe {
    /// Alive when the topology still has running component tasks and a task spawned on the
    /// runtime's worker threads runs within [`PROBE_TIMEOUT`] (the daemon loop itself runs
    /// on the main thread, so it answering proves nothing about the workers).
    pub async fn alive(running_tasks: usize) -> Result<(), String> {
        if running_tasks == 0 {
            return Err("no component task is running".into());
        }
        let probe = tokio::spawn(async {});
        match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(format!("the probe task failed: {err}")),
            Err(_) => Err(format!(
                "the runtime did not run a probe task within {PROBE_TIMEOUT:?}"
            )),
        }
    }
}

/// Events per second from a running total, between two calls.
pub struct Rate {
    last: Option<(Instant, u64)>,
}

impl Rate {
    pub fn new() -> Self {
        Self { last: None }
    }

    /// The rate since the previous call (0 on the first one, or when the total went down,
    /// as it does when a reload replaces a source).
    pub fn update(&mut self, total: u64, now: Instant) -> f64 {
        let rate = match self.last {
            Some((at, before)) if total >= before => {
                let secs = now.duration_since(at).as_secs_f64();
                if secs > 0.0 {
                    (total - before) as f64 / secs
                } else {
                    0.0
                }
            }
            _ => 0.0,
        };
        self.last = Some((now, total));
        rate
    }
}

impl Default for Rate {
    fn default() -> Self {
        Self::new()
    }
}

/// The `STATUS=` line: what runs and how busy it is.
pub fn status_line(components: usize, generation: u64, events_per_second: f64) -> String {
    format!(
        "running: {components} components, {events_per_second:.0} events/s in, config generation {generation}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_is_the_difference_over_the_elapsed_time() {
        let mut rate = Rate::new();
        let start = Instant::now();
        assert_eq!(rate.update(100, start), 0.0);
        assert_eq!(rate.update(600, start + Duration::from_secs(10)), 50.0);
        // A replaced source starts counting from zero again: no negative rate.
        assert_eq!(rate.update(10, start + Duration::from_secs(20)), 0.0);
        assert_eq!(rate.update(30, start + Duration::from_secs(30)), 2.0);
    }

    #[test]
    fn status_line_names_components_rate_and_generation() {
        assert_eq!(
            status_line(7, 3, 1234.4),
            "running: 7 components, 1234 events/s in, config generation 3"
        );
    }

    #[tokio::test]
    async fn probe_fails_without_tasks_and_passes_with_a_live_runtime() {
        assert!(Probe::alive(0).await.is_err());
        assert!(Probe::alive(3).await.is_ok());
    }
}
