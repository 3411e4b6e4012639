//! The registry as a shared service: started from the `registry:` settings, found by
//! components and the API as `services.get::<Registry>()`.
//!
//! A live weir opens its store (`path`) and keeps it. A batch run (`weir run --batch`)
//! changes no device: it loads its registry read-only, from a snapshot (`snapshot`, a
//! file `weir devices export` wrote) or from a store no running weir holds, and refuses a
//! store a running weir holds (redb locks it) with the way out.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::{Registry, RegistryConfig};
use crate::config::service::{ServiceConfig, ServiceContext, ServiceTask};
use crate::config::{RunMode, ServiceType, ServiceUse};

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
        let file = self.file(cx.data_dir);
        let batch = matches!(cx.run, RunMode::Batch(_));
        let registry = match self {
            Self::Snapshot(_) if !batch => anyhow::bail!(
                "registry.snapshot ({}) is read-only and serves `weir run --batch` only; a live weir keeps its devices in a store (`registry: {{ path: registry.redb }}`)",
                file.display()
            ),
            Self::Snapshot(_) => Registry::from_snapshot(&file)?,
            Self::Store(_) if batch => read_store(&file)?,
            Self::Store(_) => Registry::open(&file)
                .map_err(|e| anyhow::anyhow!("the device registry could not be opened: {e}"))?,
        };
        registry.attach_metrics(cx.telemetry.metrics());
        cx.services.insert(Arc::clone(&registry));
        if registry.is_read_only() {
            // No activity is written: there is nowhere to write it.
            return Ok(None);
        }
        Ok(Some(Box::pin(
            registry.keep_activity(ACTIVITY_PERIOD, cx.stop),
        )))
    }
}

/// The store of a batch run's `registry.path`, read once and closed.
fn read_store(file: &Path) -> anyhow::Result<Arc<Registry>> {
    const WAY_OUT: &str = "export the live registry with `weir devices export --output FILE` (it pages through the running weir's API) and set `registry: { snapshot: FILE }` in the batch pipeline";
    if !file.exists() {
        anyhow::bail!(
            "the registry store {} does not exist: a batch run reads a registry and never makes one; {WAY_OUT}",
            file.display()
        );
    }
    Registry::read_store(file).map_err(|e| match e.is_locked() {
        true => anyhow::anyhow!(
            "the registry store {} is locked by a running weir, and a batch run never opens the live daemon's store: {WAY_OUT}",
            file.display()
        ),
        false => anyhow::anyhow!("the device registry could not be read: {e}"),
    })
}
