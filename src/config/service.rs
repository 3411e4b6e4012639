//! Shared services: what components share outside the graph (the device registry, the
//! alarm board), reached through one typed map, [`Services`].
//!
//! A service with settings has a top-level key of its own (`registry:`), listed in the
//! [`Catalogue`](super::Catalogue) as a [`ServiceType`](super::ServiceType); its settings
//! are a [`ServiceConfig`] that starts it once, before the first component is built, and
//! it lives until weir stops (its settings cannot change while weir runs). A service
//! without settings is made by its first user with [`Services::get_or_insert_with`].

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use super::options::Options;
use crate::telemetry::Telemetry;

/// A service's background work; it ends soon after its `stop` token fires.
pub type ServiceTask = BoxFuture<'static, ()>;

/// The settings of a service, and how it starts.
pub trait ServiceConfig: Options {
    /// Starts the service: puts what components and the API use into `cx.services` and
    /// returns its background work, if it has any.
    fn start(&self, cx: ServiceContext<'_>) -> anyhow::Result<Option<ServiceTask>>;
}

/// What a service is given when it starts.
pub struct ServiceContext<'a> {
    /// Where weir keeps state (`data_dir`).
    pub data_dir: &'a Path,
    pub telemetry: &'a Arc<Telemetry>,
    pub services: &'a Services,
    /// Fires when weir stops, after the topology has drained.
    pub stop: CancellationToken,
    /// Live, or a batch run (`weir run --batch`), which may open services otherwise.
    pub run: &'a super::RunMode,
}

/// A component's need for a service with settings, so `validate` can ask for them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceUse {
    /// The key of the service's settings (`registry`).
    pub service: &'static str,
    /// The option that makes the component need it; `type` when it always does.
    pub option: &'static str,
}

/// The settings of every service the topology configures, in catalogue order.
#[derive(Clone, Debug, Default)]
pub struct ServiceConfigs(Vec<(&'static str, Arc<dyn ServiceConfig>)>);

impl ServiceConfigs {
    pub fn new(configs: Vec<(&'static str, Arc<dyn ServiceConfig>)>) -> Self {
        Self(configs)
    }

    /// Whether the service with settings under `key` is configured.
    pub fn contains(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub fn get(&self, key: &str) -> Option<&Arc<dyn ServiceConfig>> {
        self.0.iter().find(|(k, _)| *k == key).map(|(_, c)| c)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &Arc<dyn ServiceConfig>)> {
        self.0.iter().map(|(k, c)| (*k, c))
    }

    /// The keys whose settings differ between `self` and `other` (set, unset or changed).
    pub fn changed_keys<'a>(&'a self, other: &'a Self) -> Vec<&'static str> {
        let mut keys: Vec<&'static str> = Vec::new();
        for (key, _) in self.0.iter().chain(&other.0) {
            if !keys.contains(key) {
                keys.push(key);
            }
        }
        keys.into_iter()
            .filter(|key| match (self.get(key), other.get(key)) {
                (Some(a), Some(b)) => !(**a).same_as(&**b),
                (None, None) => false,
                _ => true,
            })
            .collect()
    }
}

impl PartialEq for ServiceConfigs {
    fn eq(&self, other: &Self) -> bool {
        self.changed_keys(other).is_empty()
    }
}

/// The shared services of a running topology, by type: the one door through which
/// components (in their build context) and the API reach the device registry, the alarm
/// board, and whatever service comes next. A service is any `Send + Sync` type; a
/// component asks for it by that type (`cx.services.get::<Registry>()`), so a new service
/// needs no new field anywhere.
type Service = Arc<dyn Any + Send + Sync>;

#[derive(Default)]
pub struct Services {
    by_type: RwLock<HashMap<TypeId, Service>>,
}

impl Services {
    /// The service of type `T`, if it runs.
    pub fn get<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        let by_type = self.by_type.read().unwrap_or_else(|p| p.into_inner());
        let service = Arc::clone(by_type.get(&TypeId::of::<T>())?);
        service.downcast::<T>().ok()
    }

    /// Makes `service` the one of type `T`, replacing any earlier one.
    pub fn insert<T: Any + Send + Sync>(&self, service: Arc<T>) {
        let mut by_type = self.by_type.write().unwrap_or_else(|p| p.into_inner());
        by_type.insert(TypeId::of::<T>(), service);
    }

    /// The service of type `T`, made by `make` if none runs yet (services without
    /// settings, such as the alarm board, are made by their first user).
    pub fn get_or_insert_with<T: Any + Send + Sync>(
        &self,
        make: impl FnOnce() -> Arc<T>,
    ) -> Arc<T> {
        let mut by_type = self.by_type.write().unwrap_or_else(|p| p.into_inner());
        let service = by_type
            .entry(TypeId::of::<T>())
            .or_insert_with(|| make() as Service);
        match Arc::clone(service).downcast::<T>() {
            Ok(service) => service,
            // Entries are keyed by their own type id, so this cannot happen.
            Err(_) => unreachable!("a service stored under another type's id"),
        }
    }
}
