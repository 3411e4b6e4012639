//! What every transform type provides, what it is given when it is built, and the
//! synchronous interface the topology runs it through.
//!
//! A transform is a synchronous function over a batch ([`FunctionTransform`]); the topology
//! runs it in its own task, reads its input channel and forwards what it emits to each
//! output. Keeping transforms synchronous keeps them easy to test and lets the runner batch
//! all channel work.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::component::{ComponentId, DEFAULT_DATA_DIR, FieldProblem, OutputName};
use super::options::Options;
use super::service::{ServiceUse, Services};
use crate::event::{Event, EventBatch};
use crate::telemetry::events::{ComponentError, ErrorType, EventsDiscarded, Stage};
use crate::telemetry::{ComponentTelemetry, InternalEvent};
use crate::topology::InstanceIdentity;
use crate::topology::channel::PortBuffers;

/// What every transform type provides.
pub trait TransformComponent: Options {
    /// Named outputs besides the default one (every transform also has `errors`).
    fn named_outputs(&self) -> Vec<OutputName> {
        Vec::new()
    }

    /// Whether the transform emits to its default output (`route` only has named ones).
    fn has_default_output(&self) -> bool {
        true
    }

    /// Checks that serde cannot express; each problem names the field it is about.
    fn check(&self) -> Vec<FieldProblem> {
        Vec::new()
    }

    /// The services with settings the transform needs, if any.
    fn services(&self) -> Vec<ServiceUse> {
        Vec::new()
    }

    fn build(&self, cx: &TransformContext) -> anyhow::Result<Box<dyn FunctionTransform>>;
}

/// What a transform may know about itself when it is built.
pub struct TransformContext {
    pub id: ComponentId,
    /// Where state that outlives the process goes (`alarm` keeps its alarms there).
    pub data_dir: PathBuf,
    /// The topology's shared services (the device registry, the alarm board, ...).
    pub services: Arc<Services>,
    /// Which weir this is: a persistent id for names no other instance may share
    /// (`data_dir/instance_id`, or `WEIR_INSTANCE_ID`).
    pub instance_id: Arc<InstanceIdentity>,
}

impl TransformContext {
    /// A context with the default data directory and no services (tests, benches).
    pub fn new(id: ComponentId) -> Self {
        Self {
            id,
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            services: Arc::default(),
            instance_id: Arc::new(InstanceIdentity::new(Path::new(DEFAULT_DATA_DIR), None)),
        }
    }
}

/// The runtime of a transform: turns each input batch into output events.
pub trait FunctionTransform: Send {
    fn transform(&mut self, event: Event, out: &mut TransformOutput);

    fn transform_batch(&mut self, batch: EventBatch, out: &mut TransformOutput) {
        for event in batch {
            self.transform(event, out);
        }
    }

    /// A transform that also acts on requests from outside the graph (an alarm
    /// acknowledged through the API) returns what signals them; the runner then calls
    /// [`Self::on_wake`] whenever it fires, between batches.
    fn wake_signal(&self) -> Option<Arc<tokio::sync::Notify>> {
        None
    }

    fn on_wake(&mut self, _out: &mut TransformOutput) {}
}

/// Where a transform puts its results while handling one batch.
pub struct TransformOutput {
    component: Arc<str>,
    telemetry: ComponentTelemetry,
    pub(crate) ports: PortBuffers,
}

impl TransformOutput {
    pub fn new(id: &ComponentId, telemetry: ComponentTelemetry, outputs: &[OutputName]) -> Self {
        Self {
            component: id.as_arc(),
            telemetry,
            ports: PortBuffers {
                default: Vec::new(),
                named: outputs.iter().map(|o| (o.0.clone(), Vec::new())).collect(),
            },
        }
    }

    /// The metrics handle of the transform.
    pub fn telemetry(&self) -> &ComponentTelemetry {
        &self.telemetry
    }

    /// Emits to the default output.
    pub fn push(&mut self, event: Event) {
        self.ports.default.push(event);
    }

    /// Emits to a named output declared by the transform.
    pub fn push_named(&mut self, output: &str, event: Event) {
        match self.ports.named.iter_mut().find(|(name, _)| name == output) {
            Some((_, events)) => events.push(event),
            None => debug_assert!(false, "undeclared output `{output}`"),
        }
    }

    /// Routes an event the transform could not handle to `errors`, counted and explained.
    pub fn error(&mut self, event: Event, error_type: ErrorType, message: String) {
        ComponentError {
            error_type,
            stage: Stage::Processing,
            message: &message,
            count: 1,
        }
        .emit(&self.telemetry);
        let event = event.with_error(&self.component, message);
        self.push_named(OutputName::ERRORS, event);
    }

    /// Counts events dropped on purpose (a filter's `false`).
    pub fn discard(&mut self, count: usize) {
        EventsDiscarded {
            count,
            intentional: true,
        }
        .emit(&self.telemetry);
    }

    /// The events emitted so far, by output (tests and benches).
    pub fn take(&mut self) -> Vec<(String, Vec<Event>)> {
        let mut all = vec![(
            "default".to_owned(),
            std::mem::take(&mut self.ports.default),
        )];
        for (name, events) in &mut self.ports.named {
            all.push((name.clone(), std::mem::take(events)));
        }
        all
    }
}
