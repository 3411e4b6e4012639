//! Building one component: its channels, its outputs and the task that runs it.
//!
//! The builder knows sections, not types: each component's options are the trait object
//! of its section ([`SectionOptions`]), whose `build` makes the task from a context of
//! the section's shape.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use tokio_util::sync::CancellationToken;

use super::ComponentTask;
use super::channel::{
    Fanout, InputReceiver, InputSender, Outputs, Targets, WeakInputSender, input_channel, targets,
};
use super::instance::InstanceIdentity;
use super::tap::{Port, TapHub};
use crate::config::action::ActionContext;
use crate::config::aggregator::{AggregatorContext, EndOfInput};
use crate::config::service::Services;
use crate::config::sink::SinkContext;
use crate::config::source::SourceContext;
use crate::config::transform::{FunctionTransform, TransformContext, TransformOutput};
use crate::config::{Component, RunMode, SectionOptions};
use crate::telemetry::{ComponentTelemetry, Telemetry};

/// One running instance of a component.
pub(super) struct Instance {
    pub component: Component,
    /// The sending side of its input channel, cloned into its producers' outputs; weak, so
    /// the channel closes once its producers are gone.
    pub input: Option<WeakInputSender>,
    /// Its outputs' consumer lists, by output name (`None`: the default output).
    pub outputs: BTreeMap<Option<String>, Targets>,
    /// Sources: stop reading.
    pub stop: CancellationToken,
    /// Cancelled when the task has finished.
    pub finished: CancellationToken,
    /// Cancel to end the task at once, dropping what it holds (its disk buffer is being
    /// discarded, so it must not deliver what is in it).
    pub discard: CancellationToken,
    /// Aggregators: replaced, so do not checkpoint on the way out.
    pub retired: Arc<AtomicBool>,
}

/// A component built but not started yet.
pub(super) struct Built {
    pub instance: Instance,
    /// Holds its channel open until the rewiring has given its producers senders.
    pub input: Option<InputSender>,
    pub task: ComponentTask,
}

/// What every component of a topology is built with.
pub(super) struct Shared<'a> {
    pub telemetry: &'a Arc<Telemetry>,
    pub data_dir: &'a Path,
    pub services: &'a Arc<Services>,
    pub instance_id: &'a Arc<InstanceIdentity>,
    /// Events each input channel holds.
    pub channel_max_events: usize,
    /// Live or batch.
    pub run: &'a RunMode,
    /// What aggregators do with open windows when their input ends.
    pub end_of_input: EndOfInput,
}

impl Shared<'_> {
    /// The process's tap hub (a service without settings; the API finds it there).
    pub fn taps(&self) -> Arc<TapHub> {
        self.services
            .get_or_insert_with(|| TapHub::new(self.telemetry.metrics()))
    }
}

/// Builds one component with empty output lists (the rewiring fills them). A sink that
/// holds a resource waits for `previous` (its old instance) to finish before it starts.
pub(super) fn build(
    component: &Component,
    shared: &Shared<'_>,
    previous: Option<CancellationToken>,
) -> anyhow::Result<Built> {
    let config = &component.config;
    let telemetry = shared
        .telemetry
        .component(&component.id, config.kind(), config.type_name());
    let taps = shared.taps();
    let (input, receiver) = match config.kind().takes_inputs() {
        true => {
            let (tx, rx) = input_channel(&telemetry, shared.channel_max_events);
            let rx = rx.with_tap(taps.point(&component.id, Port::Input));
            // A sink or action: its input is a reading's last hop.
            let rx = match config.kind().has_default_output() {
                true => rx,
                false => rx.recording_hops(),
            };
            (Some(tx), Some(rx))
        }
        false => (None, None),
    };
    let mut outputs: BTreeMap<Option<String>, Targets> = BTreeMap::new();
    if config.has_default_output() {
        outputs.insert(None, targets(Vec::new()));
    }
    for name in config.named_outputs() {
        outputs.insert(Some(name.0), targets(Vec::new()));
    }
    let stop = CancellationToken::new();
    let retired = Arc::new(AtomicBool::new(false));
    let parts = Parts {
        receiver,
        outputs: fanouts(&outputs, &telemetry, component, &taps),
        telemetry,
        stop: stop.clone(),
        retired: Arc::clone(&retired),
    };
    let mut task = build_task(component, parts, shared)?;
    if let Some(previous) = previous
        .filter(|_| config.kind().is_sink() && !component.resources(shared.data_dir).is_empty())
    {
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
        discard: CancellationToken::new(),
        retired,
    };
    Ok(Built {
        instance,
        input,
        task,
    })
}

/// Builds a source's task again over its existing output lists (a source restarted after
/// a failed reload); returns the task and its new stop token.
pub(super) fn rebuild_source(
    instance: &Instance,
    shared: &Shared<'_>,
) -> anyhow::Result<(ComponentTask, CancellationToken)> {
    let component = &instance.component;
    let telemetry = shared.telemetry.component(
        &component.id,
        component.config.kind(),
        component.config.type_name(),
    );
    let stop = CancellationToken::new();
    let parts = Parts {
        receiver: None,
        outputs: fanouts(&instance.outputs, &telemetry, component, &shared.taps()),
        telemetry,
        stop: stop.clone(),
        retired: Arc::new(AtomicBool::new(false)),
    };
    Ok((build_task(component, parts, shared)?, stop))
}

/// A component's outputs over its consumer lists, each with its tap point; a source's
/// sample its readings for tracing as its `trace.sample` says.
fn fanouts(
    lists: &BTreeMap<Option<String>, Targets>,
    telemetry: &ComponentTelemetry,
    component: &Component,
    taps: &TapHub,
) -> Outputs {
    let sample = component.config.common().sample_rate();
    let fanout = |name: &str, list: &Targets| {
        Fanout::new(name, Arc::clone(list), telemetry)
            .with_tap(taps.point(&component.id, Port::Output(name.into())))
            .sampling(sample)
    };
    let default = lists.get(&None).map(|list| fanout("default", list));
    let named = lists
        .iter()
        .filter_map(|(name, list)| Some(fanout(name.as_ref()?, list)))
        .collect();
    Outputs::new(default, named)
}

/// The parts of one component made before its task is.
struct Parts {
    receiver: Option<InputReceiver>,
    outputs: Outputs,
    telemetry: ComponentTelemetry,
    stop: CancellationToken,
    retired: Arc<AtomicBool>,
}

fn build_task(
    component: &Component,
    parts: Parts,
    shared: &Shared<'_>,
) -> anyhow::Result<ComponentTask> {
    let id = component.id.clone();
    let missing_input = || anyhow::anyhow!("internal error: no input channel for `{id}`");
    let Parts {
        receiver,
        outputs,
        telemetry,
        stop,
        retired,
    } = parts;
    let data_dir = shared.data_dir.to_path_buf();
    let services = Arc::clone(shared.services);
    let instance_id = Arc::clone(shared.instance_id);
    match component.config.options() {
        SectionOptions::Source(config) => config.build(SourceContext {
            id: id.clone(),
            out: outputs,
            shutdown: stop,
            telemetry,
            data_dir,
            services,
            instance_id,
            run: shared.run.clone(),
        }),
        SectionOptions::Transform(config) => {
            let transform = config.build(&TransformContext {
                id: id.clone(),
                data_dir,
                services,
                instance_id,
            })?;
            let output = TransformOutput::new(&id, telemetry, &component.config.named_outputs());
            let input = receiver.ok_or_else(missing_input)?;
            Ok(Box::pin(run_transform(transform, input, output, outputs)))
        }
        SectionOptions::Sink(config) => config.build(SinkContext {
            id: id.clone(),
            input: receiver.ok_or_else(missing_input)?,
            out: outputs,
            telemetry,
            data_dir,
            services,
            instance_id,
            run: shared.run.clone(),
        }),
        SectionOptions::Aggregator(config) => config.build(AggregatorContext {
            id: id.clone(),
            input: receiver.ok_or_else(missing_input)?,
            out: outputs,
            telemetry,
            data_dir,
            retired,
            services,
            instance_id,
            end_of_input: shared.end_of_input,
        }),
        SectionOptions::Action(config) => config.build(ActionContext {
            id: id.clone(),
            input: receiver.ok_or_else(missing_input)?,
            out: outputs,
            telemetry,
            data_dir,
            services,
            instance_id,
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
