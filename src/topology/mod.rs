//! Running a [`TopologyConfig`]: one task per component, wired by bounded channels, and
//! rewired in place when the configuration changes.
//!
//! Starting is a reload from nothing, so there is one way to bring components up. A reload
//! ([`RunningTopology::reload`]) goes:
//!
//! 1. **diff** the running and the new configuration ([`diff::Diff`]); refuse changes to
//!    globals that cannot change at run time;
//! 2. **stop** the sources being removed or rebuilt and wait for them, so their ports are
//!    free for whoever takes them next;
//! 3. **build** every new or changed component; if one fails, restart the stopped sources
//!    as they were and report the error: nothing half-applied remains;
//! 4. **rewire**: every running output's consumer list is swapped for the new one;
//!    unchanged components keep running with their state (connections, open windows);
//! 5. **retire** the old instances of removed or rebuilt components: nothing sends to them
//!    any more, so they drain what they hold into the consumers they had and finish.
//!
//! A sink that holds a file starts writing only after its old instance finished, so two
//! instances never write one file. Shutdown is the same drain for everything: sources stop
//! reading and return, channels close behind them, each transform and sink finishes its
//! input. Nothing in flight is dropped.

pub mod channel;
pub mod diff;
pub mod graph;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::actions::ActionContext;
use crate::aggregators::{AggregatorContext, checkpoint_path};
use crate::config::{Component, ComponentConfig, ComponentId, OutputRef, TopologyConfig};
use crate::registry::Registry;
use crate::sinks::SinkContext;
use crate::sources::SourceContext;
use crate::telemetry::{ComponentTelemetry, Telemetry};
use crate::transforms::{AlarmBoard, FunctionTransform, TransformContext, TransformOutput};
use channel::{
    DEFAULT_BUFFER_BATCHES, Fanout, InputReceiver, InputSender, Outputs, Targets, WeakInputSender,
    input_channel, targets,
};
pub use diff::Diff;

/// The work of one running component.
pub type ComponentTask = BoxFuture<'static, anyhow::Result<()>>;

/// Why a topology could not start or reload.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    NotReloadable(String),
    #[error("component `{component}` could not start: {error:#}")]
    Build {
        component: ComponentId,
        error: anyhow::Error,
    },
    #[error("the device registry could not be opened: {0}")]
    Registry(String),
}

impl ReloadError {
    /// The `reason` label of `config_reload_failures_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotReloadable(_) => "not_reloadable",
            Self::Build { .. } => "build_failed",
            Self::Registry(_) => "registry_unavailable",
        }
    }
}

/// How a component's task ended.
#[derive(Debug)]
pub struct TaskOutcome {
    pub component: ComponentId,
    pub result: anyhow::Result<()>,
}

/// One running instance of a component.
struct Instance {
    component: Component,
    /// The sending side of its input channel, cloned into its producers' outputs; weak, so
    /// the channel closes once its producers are gone.
    input: Option<WeakInputSender>,
    /// Its outputs' consumer lists, by output name (`None`: the default output).
    outputs: BTreeMap<Option<String>, Targets>,
    /// Sources: stop reading.
    stop: CancellationToken,
    /// Cancelled when the task has finished.
    finished: CancellationToken,
    /// Aggregators: replaced, so do not checkpoint on the way out.
    retired: Arc<AtomicBool>,
}

/// A component built but not started yet.
struct Built {
    instance: Instance,
    /// Holds its channel open until the rewiring has given its producers senders.
    input: Option<InputSender>,
    task: ComponentTask,
}

/// A topology whose components are running.
pub struct RunningTopology {
    config: TopologyConfig,
    telemetry: Arc<Telemetry>,
    instances: BTreeMap<ComponentId, Instance>,
    tasks: JoinSet<TaskOutcome>,
    failures: Vec<TaskOutcome>,
    /// The device registry of `registry:`, shared with every component that uses it.
    registry: Option<Arc<Registry>>,
    /// The alarms of every `alarm` transform, for `/v1/alarms`.
    alarms: Arc<AlarmBoard>,
}

impl RunningTopology {
    /// Builds every component, then starts them all.
    pub fn start(config: &TopologyConfig, telemetry: &Arc<Telemetry>) -> Result<Self, ReloadError> {
        let empty = TopologyConfig {
            globals: config.globals.clone(),
            components: BTreeMap::new(),
        };
        let registry = match &config.globals.registry {
            Some(registry) => {
                let opened = Registry::open(&registry.file(&config.globals.data_dir))
                    .map_err(|e| ReloadError::Registry(e.to_string()))?;
                opened.attach_metrics(telemetry.metrics());
                Some(opened)
            }
            None => None,
        };
        let mut topology = Self {
            config: empty,
            telemetry: Arc::clone(telemetry),
            instances: BTreeMap::new(),
            tasks: JoinSet::new(),
            failures: Vec::new(),
            registry,
            alarms: AlarmBoard::new(),
        };
        topology.build_and_swap(
            config.clone(),
            &Diff::between(&topology.config, config),
            Vec::new(),
        )?;
        Ok(topology)
    }

    /// The device registry, when the topology has a `registry:` section.
    pub fn registry(&self) -> Option<&Arc<Registry>> {
        self.registry.as_ref()
    }

    /// The configuration running now.
    pub fn config(&self) -> &TopologyConfig {
        &self.config
    }

    /// The alarm board of this topology's `alarm` transforms.
    pub fn alarms(&self) -> Arc<AlarmBoard> {
        Arc::clone(&self.alarms)
    }

    /// Applies `new`: only what changed is rebuilt; see the module documentation.
    pub async fn reload(&mut self, new: TopologyConfig) -> Result<Diff, ReloadError> {
        let started = Instant::now();
        if let Some(reason) = diff::fixed_globals_changed(&self.config, &new) {
            return Err(ReloadError::NotReloadable(reason));
        }
        let diff = Diff::between(&self.config, &new);
        if diff.is_empty() {
            return Ok(diff);
        }

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
        drop(hold);
        applied?;
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
            match self.build(component, &new, previous) {
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
        let outputs: Vec<Targets> = instance.outputs.values().cloned().collect();
        let component = id.clone();
        self.tasks.spawn(async move {
            let result = task.await;
            for list in outputs {
                list.store(Arc::new(Vec::new()));
            }
            finished.cancel();
            TaskOutcome { component, result }
        });
    }

    /// Builds one component with empty output lists (the rewiring fills them). A sink that
    /// holds a resource waits for `previous` (its old instance) to finish before it starts.
    fn build(
        &self,
        component: &Component,
        config: &TopologyConfig,
        previous: Option<CancellationToken>,
    ) -> anyhow::Result<Built> {
        let id = component.id.clone();
        let telemetry =
            self.telemetry
                .component(&id, component.config.kind(), component.config.type_name());
        let (input, receiver) = match component.config.kind().takes_inputs() {
            true => {
                let (tx, rx) = input_channel(&telemetry, DEFAULT_BUFFER_BATCHES);
                (Some(tx), Some(rx))
            }
            false => (None, None),
        };
        let mut outputs: BTreeMap<Option<String>, Targets> = BTreeMap::new();
        if component.config.has_default_output() {
            outputs.insert(None, targets(Vec::new()));
        }
        for name in component.config.named_outputs() {
            outputs.insert(Some(name.0), targets(Vec::new()));
        }
        let fanouts = fanouts(&outputs, &telemetry);
        let stop = CancellationToken::new();
        let retired = Arc::new(AtomicBool::new(false));
        let context = BuildContext {
            receiver,
            outputs: fanouts,
            telemetry,
            stop: stop.clone(),
            retired: Arc::clone(&retired),
            data_dir: &config.globals.data_dir,
            registry: self.registry.clone(),
            alarms: &self.alarms,
        };
        let mut task = build_task(component, context)?;
        if let Some(previous) = previous.filter(|_| {
            component.config.kind().is_sink() && !component.config.resources().is_empty()
        }) {
            task = Box::pin(async move {
                previous.cancelled().await;
                task.await
            });
        }
        let weak = input.as_ref().map(InputSender::downgrade);
        let instance = Instance {
            component: component.clone(),
            input: weak,
            outputs,
            stop,
            finished: CancellationToken::new(),
            retired,
        };
        Ok(Built {
            instance,
            input,
            task,
        })
    }

    /// Restarts sources stopped for a reload that then failed, with their old options and
    /// their existing output lists.
    fn restart(&mut self, stopped: &[ComponentId]) {
        for id in stopped {
            let Some(old) = self.instances.get(id) else {
                continue;
            };
            let component = old.component.clone();
            let outputs = old.outputs.clone();
            let telemetry =
                self.telemetry
                    .component(id, component.config.kind(), component.config.type_name());
            let fanouts = fanouts(&outputs, &telemetry);
            let stop = CancellationToken::new();
            let context = BuildContext {
                receiver: None,
                outputs: fanouts,
                telemetry,
                stop: stop.clone(),
                retired: Arc::new(AtomicBool::new(false)),
                data_dir: &self.config.globals.data_dir,
                registry: self.registry.clone(),
                alarms: &self.alarms,
            };
            match build_task(&component, context) {
                Ok(task) => {
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
        self.failures
    }
}

/// A component's outputs over its consumer lists.
fn fanouts(lists: &BTreeMap<Option<String>, Targets>, telemetry: &ComponentTelemetry) -> Outputs {
    let default = lists
        .get(&None)
        .map(|list| Fanout::new("default", Arc::clone(list), telemetry));
    let named = lists
        .iter()
        .filter_map(|(name, list)| Some(Fanout::new(name.as_ref()?, Arc::clone(list), telemetry)))
        .collect();
    Outputs::new(default, named)
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

/// What building one component's task needs.
struct BuildContext<'a> {
    receiver: Option<InputReceiver>,
    outputs: Outputs,
    telemetry: ComponentTelemetry,
    stop: CancellationToken,
    retired: Arc<AtomicBool>,
    data_dir: &'a std::path::Path,
    registry: Option<Arc<Registry>>,
    alarms: &'a Arc<AlarmBoard>,
}

fn build_task(component: &Component, cx: BuildContext<'_>) -> anyhow::Result<ComponentTask> {
    let id = component.id.clone();
    let missing_input = || anyhow::anyhow!("internal error: no input channel for `{id}`");
    let BuildContext {
        receiver,
        outputs,
        telemetry,
        stop,
        retired,
        data_dir,
        registry,
        alarms,
    } = cx;
    match &component.config {
        ComponentConfig::Source(config) => config.component().build(SourceContext {
            id: id.clone(),
            out: outputs,
            shutdown: stop,
            telemetry,
            registry,
        }),
        ComponentConfig::Transform(config) => {
            let transform = config.component().build(&TransformContext {
                id: id.clone(),
                registry,
                data_dir: data_dir.to_path_buf(),
                alarms: Arc::clone(alarms),
            })?;
            let output = TransformOutput::new(&id, telemetry, &config.outputs());
            let input = receiver.ok_or_else(missing_input)?;
            Ok(Box::pin(run_transform(transform, input, output, outputs)))
        }
        ComponentConfig::Sink(config) => config.component().build(SinkContext {
            id: id.clone(),
            input: receiver.ok_or_else(missing_input)?,
            out: outputs,
            telemetry,
        }),
        ComponentConfig::Aggregator(config) => config.component().build(AggregatorContext {
            id: id.clone(),
            input: receiver.ok_or_else(missing_input)?,
            out: outputs,
            telemetry,
            checkpoint: Some(checkpoint_path(data_dir, &id)),
            retired,
        }),
        ComponentConfig::Action(config) => config.component().build(ActionContext {
            id: id.clone(),
            input: receiver.ok_or_else(missing_input)?,
            out: outputs,
            telemetry,
        }),
    }
}

/// The task around a [`FunctionTransform`]: read a batch, transform it, send the results.
async fn run_transform(
    mut transform: Box<dyn FunctionTransform>,
    mut input: InputReceiver,
    mut output: TransformOutput,
    outputs: Outputs,
) -> anyhow::Result<()> {
    let wake = transform.wake_signal();
    loop {
        tokio::select! {
            batch = input.recv() => {
                let Some(batch) = batch else { break };
                transform.transform_batch(batch, &mut output);
            }
            () = woken(wake.as_deref()) => transform.on_wake(&mut output),
        }
        outputs.flush(&mut output.ports).await;
    }
    Ok(())
}

/// Resolves when `wake` fires; never without one.
async fn woken(wake: Option<&tokio::sync::Notify>) {
    match wake {
        Some(wake) => wake.notified().await,
        None => std::future::pending().await,
    }
}
