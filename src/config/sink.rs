//! What every sink type provides, and what it is given when it is built.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::component::{ComponentId, ComponentTask, FieldProblem, Resource};
use super::options::Options;
use super::service::Services;
use crate::telemetry::ComponentTelemetry;
use crate::topology::InstanceIdentity;
use crate::topology::channel::{InputReceiver, Outputs};

/// What every sink type provides.
pub trait SinkComponent: Options {
    fn check(&self) -> Vec<FieldProblem> {
        Vec::new()
    }

    /// What the sink holds exclusively (a file), so two components cannot both own it.
    fn resources(&self) -> Vec<Resource> {
        Vec::new()
    }

    /// The longest the sink may hold an event before committing it (a batch timeout),
    /// when that is long enough to matter to a source waiting for the commit.
    fn commit_delay(&self) -> Option<std::time::Duration> {
        None
    }

    /// Whether the sink keeps a disk buffer (in [`buffer_dir`]). The sink then holds that
    /// directory like a file (a reload starts its new instance once the old one let go),
    /// and its sources' acknowledgements wait only for the buffer's durable append, not for
    /// [`SinkComponent::commit_delay`].
    fn disk_buffer(&self) -> bool {
        false
    }

    fn build(&self, cx: SinkContext) -> anyhow::Result<ComponentTask>;
}

/// Where the sink `id` keeps its disk buffer: `data_dir/buffers/<id>/`.
pub fn buffer_dir(data_dir: &Path, id: &ComponentId) -> PathBuf {
    crate::buffers::disk_dir(data_dir, id.as_str())
}

/// What a sink is given when it is built.
pub struct SinkContext {
    pub id: ComponentId,
    pub input: InputReceiver,
    /// The sink's one output, `errors`: events its destination refused for good (a type
    /// conflict, a rejected command). Transient failures are retried, never sent here.
    pub out: Outputs,
    pub telemetry: ComponentTelemetry,
    /// Where state that outlives the process goes.
    pub data_dir: PathBuf,
    /// The topology's shared services.
    pub services: Arc<Services>,
    /// Which weir this is: a persistent id for names no other instance may share
    /// (`data_dir/instance_id`, or `WEIR_INSTANCE_ID`).
    pub instance_id: Arc<InstanceIdentity>,
    /// Live, or a batch run over a range (see [`super::RunMode`]).
    pub run: super::RunMode,
}

impl SinkContext {
    /// Where this sink's disk buffer lives (see [`buffer_dir`]).
    pub fn buffer_dir(&self) -> PathBuf {
        buffer_dir(&self.data_dir, &self.id)
    }
}
