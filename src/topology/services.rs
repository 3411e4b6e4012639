//! Starting and stopping the shared services a topology's settings configure (the map
//! itself, [`Services`], is part of the components' contract, in `config::service`).

use std::path::Path;
use std::sync::Arc;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::RunMode;
use crate::config::service::{ServiceConfigs, ServiceContext, Services};
use crate::telemetry::Telemetry;

/// The services a topology started from its settings, with their background work.
pub(super) struct RunningServices {
    pub services: Arc<Services>,
    tasks: JoinSet<()>,
    stop: CancellationToken,
}

impl RunningServices {
    /// Starts every configured service, in catalogue order.
    pub fn start(
        configs: &ServiceConfigs,
        data_dir: &Path,
        run: &RunMode,
        telemetry: &Arc<Telemetry>,
    ) -> anyhow::Result<Self> {
        let mut running = Self {
            services: Arc::default(),
            tasks: JoinSet::new(),
            stop: CancellationToken::new(),
        };
        for (_, config) in configs.iter() {
            let cx = ServiceContext {
                data_dir,
                telemetry,
                services: &running.services,
                stop: running.stop.clone(),
                run,
            };
            match config.start(cx) {
                Ok(Some(task)) => {
                    running.tasks.spawn(task);
                }
                Ok(None) => {}
                Err(error) => return Err(error),
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
