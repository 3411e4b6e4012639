//! Who may send, and how much: the device's token or the registry's gate, then its rate
//! limit.

use std::collections::HashMap;
use std::num::NonZeroU32;

use axum::http::{HeaderMap, StatusCode, header};
use governor::clock::{Clock, DefaultClock};

use super::{Handler, Rejection};
use crate::event::{DeviceId, Event};
use crate::telemetry::events::ErrorType;

/// The one answer to every failed authentication.
const UNAUTHORIZED: &str =
    "not authorized: the token is missing, malformed, expired, or not valid for this device";

impl Handler {
    /// Checks the device's token (`auth: sas`) or that the registry lets it in: 401 for a
    /// bad token or an unknown device, 403 for a disabled one; counted by reason.
    pub(super) fn authorize(&self, device_id: &str, headers: &HeaderMap) -> Result<(), Rejection> {
        let verdict = match &self.sas {
            Some(registry) => {
                let token = headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok());
                registry.authenticate(device_id, token).map(drop)
            }
            None => self.gate.admit(device_id),
        };
        verdict.map_err(|refusal| {
            let status = match refusal.is_forbidden() {
                true => StatusCode::FORBIDDEN,
                false => StatusCode::UNAUTHORIZED,
            };
            let mut rejection = self.reject(status, ErrorType::Unauthorized, refusal.to_string());
            if status == StatusCode::UNAUTHORIZED {
                // Why stays in the log and in `registry_auth_failures_total{reason}`: the
                // answer must not tell a caller whether the device or its key exists.
                rejection.reason = UNAUTHORIZED.into();
            }
            rejection
        })
    }

    /// Takes each device's readings from its bucket; refuses the request (429) if any
    /// device has too few tokens, telling the client when to come back.
    pub(super) fn check_rate(&self, events: &[Event]) -> Result<(), Rejection> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        let mut per_device: HashMap<&DeviceId, u32> = HashMap::new();
        for event in events {
            if let Some(device) = &event.device_id {
                *per_device.entry(device).or_default() += 1;
            }
        }
        for (device, count) in per_device {
            let Some(count) = NonZeroU32::new(count) else {
                continue;
            };
            match limiter.check_key_n(device, count) {
                Ok(Ok(())) => {}
                Ok(Err(not_until)) => {
                    let wait = not_until.wait_time_from(DefaultClock::default().now());
                    let mut rejection = self.reject(
                        StatusCode::TOO_MANY_REQUESTS,
                        ErrorType::RateLimited,
                        format!(
                            "device `{device}` is over its rate limit; retry in {:.1} s",
                            wait.as_secs_f64()
                        ),
                    );
                    rejection.retry_after = Some(wait.as_secs().max(1));
                    return Err(rejection);
                }
                Err(_) => {
                    return Err(self.reject(StatusCode::TOO_MANY_REQUESTS, ErrorType::RateLimited, format!("the request holds {count} readings of device `{device}`, more than its rate limit's burst")));
                }
            }
        }
        if limiter.len() > 100_000 {
            limiter.retain_recent();
        }
        Ok(())
    }
}
