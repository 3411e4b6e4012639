//! A running topology: starting it, reloading it in place, waiting for it and stopping it
//! (the steps are in the [module documentation](super)).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::build::{self, Built, Instance, Shared};
use super::channel::{InputSender, Targets};
use super::instance::InstanceIdentity;
use super::leftovers::{self, Discard};
use super::services::RunningServices;
use super::{ComponentTask, Diff, ReloadError, TaskOutcome, diff};
use crate::config::service::Services;
use crate::config::{ComponentId, OutputRef, TopologyConfig};
use crate::telemetry::Telemetry;

/// A topology whose components are running.
pub struct RunningTopology {
    config: TopologyConfig,
    telemetry: Arc<Telemetry>,
    instances: BTreeMap<ComponentId, Instance>,
    tasks: JoinSet<TaskOutcome>,
    failures: Vec<TaskOutcome>,
    /// The shared services, started before the first component and stopped after the last.
    services: RunningServices,
    /// Which weir this is (`data_dir` cannot change by a reload, so neither can it).
    instance_id: Arc<InstanceIdentity>,
}

impl RunningTopology {
    /// Builds every component, then starts them all.
    pub fn start(config: &TopologyConfig, telemetry: &Arc<Telemetry>) -> Result<Self, ReloadError> {
        let empty = TopologyConfig {
            globals: config.globals.clone(),
            components: BTreeMap::new(),
        };
        let services = RunningServices::start(
            &config.globals.services,
            &config.globals.data_dir,
            &config.globals.run,
            telemetry,
        )
        .map_err(|error| ReloadError::Service { error })?;
        let mut topology = Self {
            config: empty,
            telemetry: Arc::clone(telemetry),
            instances: BTreeMap::new(),
            tasks: JoinSet::new(),
            failures: Vec::new(),
            services,
            instance_id: Arc::new(InstanceIdentity::from_env(&config.globals.data_dir)),
        };
        topology.build_and_swap(
            config.clone(),
            &Diff::between(&topology.config, config),
            Vec::new(),
        )?;
        Ok(topology)
    }

    /// The shared services (the device registry, the alarm board, ...), for the API.
    pub fn services(&self) -> &Arc<Services> {
        &self.services.services
    }

    /// How many component tasks have not finished yet (the watchdog's liveness check).
    pub fn running_tasks(&self) -> usize {
        self.tasks.len()
    }

    /// The configuration running now.
    pub fn config(&self) -> &TopologyConfig {
        &self.config
    }

    /// Applies `new`: only what changed is rebuilt; see the module documentation.
    pub async fn reload(&mut self, new: TopologyConfig) -> Result<Diff, ReloadError> {
        self.reload_discarding(new, &Discard::new()).await
    }

    /// [`Self::reload`], losing the events in the disk buffers of `discard`, which `new`
    /// drops (see [`leftovers`]); without it, dropping a buffer that holds events is refused.
    pub async fn reload_discarding(
        &mut self,
        new: TopologyConfig,
        discard: &Discard,
    ) -> Result<Diff, ReloadError> {
        let started = Instant::now();
        if let Some(reason) = diff::fixed_globals_changed(&self.config, &new) {
            return Err(ReloadError::NotReloadable(reason));
        }
        let diff = Diff::between(&self.config, &new);
        if diff.is_empty() {
            return Ok(diff);
        }
        let discarding = leftovers::check_reload(&self.config, &new, discard)?;
        // Taken now: a changed component's new instance will have the same id.
        let ended: Vec<_> = discarding
            .iter()
            .filter_map(|leftover| {
                let instance = self.instances.get(&leftover.component)?;
                Some((instance.discard.clone(), instance.finished.clone()))
            })
            .collect();

        // Hold every running consumer's channel open while its producers change: stopping a
        // source would otherwise close the channel of a sink it alone fed, and end the sink.
        let hold: Vec<InputSender> = self
            .instances
            .values()
            .filter_map(|i| i.input.as_ref()?.upgrade())
            .collect();

        // Sources being replaced stop first: their ports must be free before a new owner binds.
        let mut stopped = Vec::new();
        for id in diff.retiring() {
            if let Some(instance) = self
                .instances
                .get(id)
                .filter(|i| i.component.config.kind().is_source())
            {
                instance.stop.cancel();
                stopped.push(id.clone());
            }
        }
        for id in &stopped {
            if let Some(instance) = self.instances.get(id) {
                wait_finished(&instance.finished, id).await;
            }
        }

        let applied = self.build_and_swap(new, &diff, stopped);
        if applied.is_ok() {
            // Before `hold` goes: a discarded instance must end while its input is still
            // open, or it would drain its buffer into its destination on the way out.
            for (discard, _) in &ended {
                discard.cancel();
            }
        }
        drop(hold);
        applied?;
        for (_, finished) in ended {
            finished.cancelled().await;
        }
        for leftover in &discarding {
            leftovers::discard_now(&leftover.component, &leftover.dir, leftover.events).await?;
        }
        tracing::info!(
            added = diff.added.len(),
            removed = diff.removed.len(),
            changed = diff.changed.len(),
            rewired = diff.rewired.len(),
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            "reloaded the topology"
        );
        Ok(diff)
    }

    /// Steps 3 to 5 of a reload; on a build error, restarts `stopped` sources as they were.
    fn build_and_swap(
        &mut self,
        new: TopologyConfig,
        diff: &Diff,
        stopped: Vec<ComponentId>,
    ) -> Result<(), ReloadError> {
        let mut built: BTreeMap<ComponentId, Built> = BTreeMap::new();
        for id in diff.building() {
            let component = &new.components[id];
            let previous = self.instances.get(id).map(|i| i.finished.clone());
            match build::build(component, &self.shared(&new), previous) {
                Ok(b) => {
                    built.insert(id.clone(), b);
                }
                Err(error) => {
                    drop(built);
                    self.restart(&stopped);
                    return Err(ReloadError::Build {
                        component: id.clone(),
                        error,
                    });
                }
            }
        }

        // Rewire: every output that runs after the reload gets its new consumer list.
        let sender_of = |id: &ComponentId| -> Option<InputSender> {
            match built.get(id) {
                Some(b) => b.input.clone(),
                None => self
                    .instances
                    .get(id)
                    .and_then(|i| i.input.as_ref()?.upgrade()),
            }
        };
        let mut wiring: Vec<(Targets, Vec<InputSender>)> = Vec::new();
        for (id, component) in &new.components {
            let outputs = match built.get(id) {
                Some(b) => &b.instance.outputs,
                // A component that has finished (a source that ran out) feeds no one.
                None => match self
                    .instances
                    .get(id)
                    .filter(|i| !i.finished.is_cancelled())
                {
                    Some(instance) => &instance.outputs,
                    None => continue,
                },
            };
            for (output, list) in outputs {
                let reference = OutputRef {
                    component: component.id.clone(),
                    output: output.clone(),
                };
                let senders = new
                    .consumers_of(&reference)
                    .filter_map(|c| sender_of(&c.id))
                    .collect();
                wiring.push((Arc::clone(list), senders));
            }
        }
        for (list, senders) in wiring {
            list.store(Arc::new(senders));
        }

        // Retire the old instances: they drain into the consumers they had, then finish.
        for id in diff.retiring() {
            // Replaced or gone: a failure of the old instance no longer holds `/ready` down.
            self.telemetry.set_failed(id, false);
            if let Some(old) = self.instances.remove(id) {
                old.retired.store(true, Ordering::Release);
                // Sources were stopped before the build; the rest end when their input closes.
                old.stop.cancel();
            }
        }
        // Kept components with the same id as a retired one do not exist; update the rest.
        for id in &diff.rewired {
            if let (Some(instance), Some(component)) =
                (self.instances.get_mut(id), new.components.get(id))
            {
                instance.component = component.clone();
            }
        }
        for (id, Built { instance, task, .. }) in built {
            self.spawn(&id, &instance, task);
            self.instances.insert(id, instance);
        }
        // Every tap masks what any running component's `redact` names.
        let mut redacted: Vec<String> = new
            .components
            .values()
            .flat_map(|c| c.config.common().redact.iter().cloned())
            .collect();
        redacted.sort();
        redacted.dedup();
        self.shared(&new).taps().set_redacted(redacted);
        self.config = new;
        self.telemetry
            .metrics()
            .topology_components
            .set(self.instances.len() as i64);
        Ok(())
    }

    /// Runs an instance's task. When it ends, its output lists are emptied, so the channels
    /// of its consumers close once no one else feeds them: that is how a drain cascades.
    fn spawn(&mut self, id: &ComponentId, instance: &Instance, task: ComponentTask) {
        let finished = instance.finished.clone();
        let discard = instance.discard.clone();
        let outputs: Vec<Targets> = instance.outputs.values().cloned().collect();
        let component = id.clone();
        let telemetry = Arc::clone(&self.telemetry);
        let retired = Arc::clone(&instance.retired);
        self.tasks.spawn(async move {
            let result = tokio::select! {
                // First: once discarded, the task must not take another step.
                biased;
                () = discard.cancelled() => Ok(()),
                result = task => result,
            };
            // An instance a reload retired fails no one: its successor runs.
            if result.is_err() && !retired.load(Ordering::Acquire) {
                telemetry.set_failed(&component, true);
            }
            for list in outputs {
                list.store(Arc::new(Vec::new()));
            }
            finished.cancel();
            TaskOutcome { component, result }
        });
    }

    /// What every component is built with, under the configuration `config`.
    fn shared<'a>(&'a self, config: &'a TopologyConfig) -> Shared<'a> {
        Shared {
            telemetry: &self.telemetry,
            data_dir: &config.globals.data_dir,
            services: &self.services.services,
            instance_id: &self.instance_id,
            channel_max_events: config.globals.channel_max_events.get(),
            run: &config.globals.run,
            end_of_input: config.globals.end_of_input,
        }
    }

    /// Restarts sources stopped for a reload that then failed, with their old options and
    /// their existing output lists.
    fn restart(&mut self, stopped: &[ComponentId]) {
        for id in stopped {
            let Some(old) = self.instances.get(id) else {
                continue;
            };
            let rebuilt = build::rebuild_source(old, &self.shared(&self.config));
            match rebuilt {
                Ok((task, stop)) => {
                    let Some(mut instance) = self.instances.remove(id) else {
                        continue;
                    };
                    instance.stop = stop;
                    instance.finished = CancellationToken::new();
                    self.spawn(id, &instance, task);
                    self.instances.insert(id.clone(), instance);
                    tracing::warn!(component_id = %id, "restarted after the failed reload");
                }
                Err(err) => {
                    tracing::error!(component_id = %id, "cannot restart after the failed reload: {err:#}")
                }
            }
        }
    }

    /// Waits until every component has finished (all sources ended and the graph drained),
    /// logging each failure; returns the failures.
    pub async fn wait(&mut self) -> &[TaskOutcome] {
        while let Some(joined) = self.tasks.join_next().await {
            let outcome = match joined {
                Ok(outcome) => outcome,
                Err(err) => TaskOutcome {
                    component: ComponentId::new("<unknown>"),
                    result: Err(anyhow::anyhow!("task panicked or was aborted: {err}")),
                },
            };
            if let Err(err) = &outcome.result {
                tracing::error!(component_id = %outcome.component, "component failed: {err:#}");
                self.failures.push(outcome);
            }
        }
        &self.failures
    }

    /// Stops the sources and drains the graph; after `deadline`, abandons what is left.
    /// Then stops the shared services.
    pub async fn stop(mut self, deadline: Duration) -> Vec<TaskOutcome> {
        for instance in self.instances.values() {
            instance.stop.cancel();
        }
        self.instances.clear();
        if tokio::time::timeout(deadline, self.wait()).await.is_err() {
            tracing::error!(
                remaining = self.tasks.len(),
                ?deadline,
                "drain did not finish in time; abandoning the remaining components"
            );
            self.tasks.abort_all();
        }
        // After the drain, so what the components did last reaches the services' stores.
        self.services.stop().await;
        self.failures
    }
}

async fn wait_finished(finished: &CancellationToken, id: &ComponentId) {
    const PATIENCE: Duration = Duration::from_secs(30);
    if tokio::time::timeout(PATIENCE, finished.cancelled())
        .await
        .is_err()
    {
        tracing::warn!(component_id = %id, "the old source did not stop within {PATIENCE:?}; starting its successor anyway");
    }
}
