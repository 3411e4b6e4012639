//! What the registry reports to `/metrics`: devices by status, lookups, auth failures.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{Registry, Status};
use crate::telemetry::{DeviceStatusLabels, Metrics, ReasonLabels, TwinKindLabels};

impl Registry {
    /// Reports into `metrics` from now on (devices by status, auth failures, lookups).
    pub fn attach_metrics(&self, metrics: &Metrics) {
        self.metrics.store(Some(Arc::new(metrics.clone())));
        self.update_status_gauge();
    }

    /// Counts `n` lookups (callers count per batch, to keep the hot path free of shared
    /// counters).
    pub fn count_lookups(&self, n: u64) {
        if let Some(m) = &*self.metrics.load() {
            m.registry_lookups.inc_by(n);
        }
    }

    pub(super) fn count_auth_failure(&self, reason: &str) {
        if let Some(m) = &*self.metrics.load() {
            m.registry_auth_failures
                .get_or_create(&ReasonLabels {
                    reason: reason.to_owned(),
                })
                .inc();
        }
    }

    pub(super) fn count_twin_update(&self, side: super::twin::Side) {
        if let Some(m) = &*self.metrics.load() {
            m.device_twin_updates
                .get_or_create(&TwinKindLabels {
                    kind: side.as_str().to_owned(),
                })
                .inc();
        }
    }

    pub(super) fn update_status_gauge(&self) {
        let Some(m) = &*self.metrics.load() else {
            return;
        };
        let disabled = self.disabled.load(Ordering::Relaxed);
        for (status, count) in [
            (Status::Enabled, self.len().saturating_sub(disabled)),
            (Status::Disabled, disabled),
        ] {
            m.registry_devices
                .get_or_create(&DeviceStatusLabels {
                    status: status.as_str().to_owned(),
                })
                .set(count as i64);
        }
    }
}
