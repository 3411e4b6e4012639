//! Running a [`TopologyConfig`]: one task per component, wired by bounded channels.
//!
//! [`RunningTopology::start`] builds every component before it spawns any, so a component
//! that cannot start (a port in use) leaves nothing half-running. Shutdown is a drain:
//! sources stop reading and return, which closes their channels; each transform finishes
//! its input and returns; each sink writes what it holds and returns. Nothing in flight is
//! dropped.

pub mod channel;
pub mod graph;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::aggregators::{AggregatorContext, checkpoint_path};
use crate::config::{Component, ComponentConfig, ComponentId, OutputRef, TopologyConfig};
use crate::sinks::SinkContext;
use crate::sources::SourceContext;
use crate::telemetry::{ComponentTelemetry, Telemetry};
use crate::transforms::{FunctionTransform, TransformContext, TransformOutput};
use channel::{DEFAULT_BUFFER_BATCHES, Fanout, InputReceiver, InputSender, Outputs, input_channel};

/// The work of one running component.
pub type ComponentTask = BoxFuture<'static, anyhow::Result<()>>;

/// Why a topology could not start.
#[derive(Debug, thiserror::Error)]
#[error("component `{component}` could not start: {error:#}")]
pub struct BuildError {
    pub component: ComponentId,
    pub error: anyhow::Error,
}

/// How a component's task ended.
#[derive(Debug)]
pub struct TaskOutcome {
    pub component: ComponentId,
    pub result: anyhow::Result<()>,
}

/// A topology whose components are running.
pub struct RunningTopology {
    tasks: JoinSet<TaskOutcome>,
    shutdown: CancellationToken,
    failures: Vec<TaskOutcome>,
}

impl RunningTopology {
    /// Builds every component, then starts them all.
    pub fn start(config: &TopologyConfig, telemetry: &Arc<Telemetry>) -> Result<Self, BuildError> {
        let shutdown = CancellationToken::new();
        let handles: BTreeMap<&ComponentId, ComponentTelemetry> = config
            .components
            .values()
            .map(|c| {
                (
                    &c.id,
                    telemetry.component(&c.id, c.config.kind(), c.config.type_name()),
                )
            })
            .collect();

        // Every consumer gets one input channel; producers hold clones of its sender.
        let mut senders: BTreeMap<&ComponentId, InputSender> = BTreeMap::new();
        let mut receivers: BTreeMap<&ComponentId, InputReceiver> = BTreeMap::new();
        for component in config
            .components
            .values()
            .filter(|c| c.config.kind().takes_inputs())
        {
            let (tx, rx) = input_channel(&handles[&component.id], DEFAULT_BUFFER_BATCHES);
            senders.insert(&component.id, tx);
            receivers.insert(&component.id, rx);
        }

        let mut built: Vec<(ComponentId, ComponentTask)> = Vec::new();
        for component in config.components.values() {
            let telemetry = handles[&component.id].clone();
            let outputs = outputs_of(config, component, &senders, &telemetry);
            let task = build(
                component,
                outputs,
                receivers.remove(&component.id),
                telemetry,
                &shutdown,
                &config.globals.data_dir,
            )
            .map_err(|error| BuildError {
                component: component.id.clone(),
                error,
            })?;
            built.push((component.id.clone(), task));
        }
        // The builders hold every sender they need; drop ours so channels close on drain.
        drop(senders);

        let mut tasks = JoinSet::new();
        for (component, task) in built {
            tasks.spawn(async move {
                let result = task.await;
                TaskOutcome { component, result }
            });
        }
        telemetry
            .metrics()
            .topology_components
            .set(config.components.len() as i64);
        Ok(Self {
            tasks,
            shutdown,
            failures: Vec::new(),
        })
    }

    /// A token that, when cancelled, starts the drain.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
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
        self.shutdown.cancel();
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

/// The fan-outs of `component`'s outputs, each holding the senders of its consumers.
fn outputs_of(
    config: &TopologyConfig,
    component: &Component,
    senders: &BTreeMap<&ComponentId, InputSender>,
    telemetry: &ComponentTelemetry,
) -> Outputs {
    let fanout = |output: Option<String>| {
        let reference = OutputRef {
            component: component.id.clone(),
            output: output.clone(),
        };
        let targets = config
            .consumers_of(&reference)
            .filter_map(|c| senders.get(&c.id).cloned())
            .collect();
        Fanout::new(output.as_deref().unwrap_or("default"), targets, telemetry)
    };
    let default = component.config.has_default_output().then(|| fanout(None));
    let named = component
        .config
        .named_outputs()
        .into_iter()
        .map(|name| fanout(Some(name.0)))
        .collect();
    Outputs::new(default, named)
}

fn build(
    component: &Component,
    outputs: Outputs,
    input: Option<InputReceiver>,
    telemetry: ComponentTelemetry,
    shutdown: &CancellationToken,
    data_dir: &std::path::Path,
) -> anyhow::Result<ComponentTask> {
    let id = component.id.clone();
    let missing_input = || anyhow::anyhow!("internal error: no input channel for `{id}`");
    match &component.config {
        ComponentConfig::Source(config) => config.component().build(SourceContext {
            id: id.clone(),
            out: outputs,
            shutdown: shutdown.child_token(),
            telemetry,
        }),
        ComponentConfig::Transform(config) => {
            let transform = config
                .component()
                .build(&TransformContext { id: id.clone() })?;
            let output = TransformOutput::new(&id, telemetry, &config.outputs());
            let input = input.ok_or_else(missing_input)?;
            Ok(Box::pin(run_transform(transform, input, output, outputs)))
        }
        ComponentConfig::Sink(config) => config.component().build(SinkContext {
            id: id.clone(),
            input: input.ok_or_else(missing_input)?,
            telemetry,
        }),
        ComponentConfig::Aggregator(config) => config.component().build(AggregatorContext {
            id: id.clone(),
            input: input.ok_or_else(missing_input)?,
            out: outputs,
            telemetry,
            checkpoint: Some(checkpoint_path(data_dir, &id)),
        }),
        ComponentConfig::Action(config) => match *config {},
    }
}

/// The task around a [`FunctionTransform`]: read a batch, transform it, send the results.
async fn run_transform(
    mut transform: Box<dyn FunctionTransform>,
    mut input: InputReceiver,
    mut output: TransformOutput,
    outputs: Outputs,
) -> anyhow::Result<()> {
    while let Some(batch) = input.recv().await {
        transform.transform_batch(batch, &mut output);
        outputs.flush(&mut output.ports).await;
    }
    Ok(())
}
