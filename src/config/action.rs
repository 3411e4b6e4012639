//! What every action type provides, and what it is given when it is built.

use std::path::PathBuf;
use std::sync::Arc;

use super::component::{ComponentId, ComponentTask, FieldProblem, OutputName};
use super::options::Options;
use super::service::Services;
use crate::buffers::BufferConfig;
use crate::telemetry::ComponentTelemetry;
use crate::topology::InstanceIdentity;
use crate::topology::channel::{InputReceiver, Outputs};

/// What every action type provides.
pub trait ActionComponent: Options {
    /// Checks that serde cannot express; each problem names the field it is about.
    fn check(&self) -> Vec<FieldProblem> {
        Vec::new()
    }

    /// What `weir validate` warns about without refusing it (a deprecated option), by field.
    fn warnings(&self) -> Vec<FieldProblem> {
        Vec::new()
    }

    /// The buffer the action reads its input through, its type resolved (disk unless
    /// configured otherwise).
    /// A disk buffer lives in [`ActionContext::buffer_dir`] and is held like a file: a
    /// reload starts the new instance once the old one let go.
    fn buffer(&self) -> BufferConfig;

    /// Whether the action keeps a disk buffer.
    fn disk_buffer(&self) -> bool {
        self.buffer().kind == Some(crate::buffers::BufferType::Disk)
    }

    /// Outputs besides `errors` others may read (a `direct_method` action's `outcomes`).
    fn named_outputs(&self) -> Vec<OutputName> {
        Vec::new()
    }

    fn build(&self, cx: ActionContext) -> anyhow::Result<ComponentTask>;
}

/// What an action is given when it is built.
pub struct ActionContext {
    pub id: ComponentId,
    pub input: InputReceiver,
    /// The action's outputs: `errors`, notifications that failed for good (a 4xx, a
    /// template that cannot render, retries exhausted), and its
    /// [`ActionComponent::named_outputs`].
    pub out: Outputs,
    pub telemetry: ComponentTelemetry,
    /// Where state that outlives the process goes.
    pub data_dir: PathBuf,
    /// The topology's shared services.
    pub services: Arc<Services>,
    /// Which weir this is: a persistent id for names no other instance may share
    /// (`data_dir/instance_id`, or `WEIR_INSTANCE_ID`).
    pub instance_id: Arc<InstanceIdentity>,
}

impl ActionContext {
    /// Where this action's disk buffer lives: `data_dir/buffers/<id>/`, as a sink's.
    pub fn buffer_dir(&self) -> PathBuf {
        super::sink::buffer_dir(&self.data_dir, &self.id)
    }
}
