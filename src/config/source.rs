//! What every source type provides, and what it is given when it is built.

use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::component::{ComponentId, ComponentTask, FieldProblem, Resource};
use super::options::Options;
use super::service::{ServiceUse, Services};
use crate::telemetry::ComponentTelemetry;
use crate::topology::InstanceIdentity;
use crate::topology::channel::Outputs;

/// What every source type provides.
pub trait SourceComponent: Options {
    fn check(&self) -> Vec<FieldProblem> {
        Vec::new()
    }

    /// What the source holds exclusively (a listening port), so a reload can free it
    /// before another component takes it, and `validate` can catch two owners.
    fn resources(&self) -> Vec<Resource> {
        Vec::new()
    }

    /// Named outputs besides the default one (every source also has `errors`).
    fn named_outputs(&self) -> Vec<super::component::OutputName> {
        Vec::new()
    }

    /// The services with settings the source needs, if any.
    fn services(&self) -> Vec<ServiceUse> {
        Vec::new()
    }

    /// How long the source waits for its events' commit before it gives up on them (an
    /// HTTP request answered 503), if it waits at all.
    fn ack_timeout(&self) -> Option<std::time::Duration> {
        None
    }

    /// Whether the source ends by itself (it reads a finished range, or makes up a set
    /// number of readings), and then the event-time range it reads (either end open):
    /// `weir run --batch` needs every source to be bounded. `None`: it runs until stopped.
    fn bounded(&self) -> Option<super::BatchRange> {
        None
    }

    /// Prepares the source (binding its port) and returns its task.
    fn build(&self, cx: SourceContext) -> anyhow::Result<ComponentTask>;
}

/// What a source is given when it is built.
pub struct SourceContext {
    pub id: ComponentId,
    pub out: Outputs,
    /// Fires when the source must stop reading; it then returns, which drains the graph.
    pub shutdown: CancellationToken,
    pub telemetry: ComponentTelemetry,
    /// Where state that outlives the process goes.
    pub data_dir: PathBuf,
    /// The topology's shared services (the device registry, ...).
    pub services: Arc<Services>,
    /// Which weir this is: a persistent id for names no other instance may share
    /// (`data_dir/instance_id`, or `WEIR_INSTANCE_ID`).
    pub instance_id: Arc<InstanceIdentity>,
    /// Live, or a batch run over a range (see [`super::RunMode`]).
    pub run: super::RunMode,
}
