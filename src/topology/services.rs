//! The shared services of a running topology, by type: the one door through which
//! components (in their build context) and the API reach the device registry, the alarm
//! board, and whatever service comes next.
//!
//! A service is any `Send + Sync` type; a component asks for it by that type
//! (`cx.services.get::<Registry>()`), so a new service needs no new field anywhere.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::GlobalConfig;
use crate::config::service::ServiceContext;
use crate::telemetry::Telemetry;

type Service = Arc<dyn Any + Send + Sync>;

/// Shared services by type.
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

/// The services a topology started from its settings, with their background work.
pub(super) struct RunningServices {
    pub services: Arc<Services>,
    tasks: JoinSet<()>,
    stop: CancellationToken,
}

impl RunningServices {
    /// Starts every service the globals configure, in catalogue order.
    pub fn start(
        globals: &GlobalConfig,
        telemetry: &Arc<Telemetry>,
    ) -> Result<Self, (&'static str, anyhow::Error)> {
        let mut running = Self {
            services: Arc::default(),
            tasks: JoinSet::new(),
            stop: CancellationToken::new(),
        };
        for (key, config) in globals.services.iter() {
            let cx = ServiceContext {
                data_dir: Path::new(&globals.data_dir),
                telemetry,
                services: &running.services,
                stop: running.stop.clone(),
            };
            match config.start(cx) {
                Ok(Some(task)) => {
                    running.tasks.spawn(task);
                }
                Ok(None) => {}
                Err(error) => return Err((key, error)),
            }
        }
        Ok(running)
    }

    /// Stops the services' background work and waits for it (after the topology drained,
    /// so what the components did last is in it).
    pub async fn stop(mut self) {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}
