//! The registry as a shared service: started from the `registry:` settings, found by
//! components and the API as `services.get::<Registry>()`.

use std::sync::Arc;
use std::time::Duration;

use super::{Registry, RegistryConfig};
use crate::config::service::{ServiceConfig, ServiceContext, ServiceTask};
use crate::config::{ServiceType, ServiceUse};

/// The key of the registry's settings.
pub const KEY: &str = "registry";

/// How often device activity (`last_activity`) is written to the store.
const ACTIVITY_PERIOD: Duration = Duration::from_secs(30);

/// The registry in the catalogue.
pub const SERVICE: ServiceType = ServiceType::of::<RegistryConfig>(
    KEY,
    "the device registry",
    "registry: { path: registry.redb }",
    "The built-in device registry; absent: no registry (no `/v1/devices`, no gates).",
);

/// A component's need for the registry, because of `option` (`type`: always).
pub fn used_by(option: &'static str) -> ServiceUse {
    ServiceUse {
        service: KEY,
        option,
    }
}

impl ServiceConfig for RegistryConfig {
    fn start(&self, cx: ServiceContext<'_>) -> anyhow::Result<Option<ServiceTask>> {
        let registry = Registry::open(&self.file(cx.data_dir))
            .map_err(|e| anyhow::anyhow!("the device registry could not be opened: {e}"))?;
        registry.attach_metrics(cx.telemetry.metrics());
        cx.services.insert(Arc::clone(&registry));
        Ok(Some(Box::pin(
            registry.keep_activity(ACTIVITY_PERIOD, cx.stop),
        )))
    }
}
