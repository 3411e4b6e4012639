//! Failed authentication, limited per client address.
//!
//! An address may fail `max` times in a window of a minute; after that every request it
//! makes to an authenticated route is answered 429 until its window ends, whatever it
//! presents, so guessing tokens costs a minute per `max` guesses. Device SAS failures at
//! the sources are not limited here (plants sit behind NAT); this is the admin API only.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The window an address's failures are counted in.
const WINDOW: Duration = Duration::from_secs(60);
/// Addresses kept before windows that have ended are pruned.
const PRUNE_ABOVE: usize = 10_000;

pub struct FailureLimiter {
    max: u32,
    windows: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl FailureLimiter {
    pub fn new(max_per_minute: u32) -> Self {
        Self {
            max: max_per_minute,
            windows: Mutex::new(HashMap::new()),
        }
    }

    fn windows(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, (Instant, u32)>> {
        self.windows.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `address` has used up its failures; the time left if so.
    pub fn blocked(&self, address: IpAddr, now: Instant) -> Option<Duration> {
        let windows = self.windows();
        let (started, failures) = windows.get(&address)?;
        let left = WINDOW.checked_sub(now.duration_since(*started))?;
        (*failures >= self.max).then_some(left)
    }

    /// Counts one failure of `address`.
    pub fn failed(&self, address: IpAddr, now: Instant) {
        let mut windows = self.windows();
        if windows.len() > PRUNE_ABOVE {
            windows.retain(|_, (started, _)| now.duration_since(*started) < WINDOW);
        }
        let window = windows.entry(address).or_insert((now, 0));
        if now.duration_since(window.0) >= WINDOW {
            *window = (now, 0);
        }
        window.1 = window.1.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_blocked_after_its_failures_until_the_window_ends() {
        let limiter = FailureLimiter::new(3);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let start = Instant::now();
        for _ in 0..2 {
            limiter.failed(a, start);
        }
        assert_eq!(limiter.blocked(a, start), None, "two of three");
        limiter.failed(a, start);
        assert!(limiter.blocked(a, start).is_some());
        assert_eq!(limiter.blocked(b, start), None, "another address is not");
        let later = start + WINDOW + Duration::from_millis(1);
        assert_eq!(limiter.blocked(a, later), None, "the window ended");
        limiter.failed(a, later);
        assert_eq!(
            limiter.blocked(a, later),
            None,
            "a new window counts from one"
        );
    }
}
