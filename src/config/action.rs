//! What every action type provides, and what it is given when it is built.

use std::path::PathBuf;
use std::sync::Arc;

use super::component::{ComponentId, ComponentTask, FieldProblem};
use super::options::Options;
use super::service::Services;
use crate::telemetry::ComponentTelemetry;
use crate::topology::InstanceIdentity;
use crate::topology::channel::{InputReceiver, Outputs};

/// What every action type provides.
pub trait ActionComponent: Options {
    /// Checks that serde cannot express; each problem names the field it is about.
    fn check(&self) -> Vec<FieldProblem> {
        Vec::new()
    }

    fn build(&self, cx: ActionContext) -> anyhow::Result<ComponentTask>;
}

/// What an action is given when it is built.
pub struct ActionContext {
    pub id: ComponentId,
    pub input: InputReceiver,
    /// The action's one output, `errors`: notifications that failed for good (a 4xx, a
    /// template that cannot render, retries exhausted, a full queue that drops).
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
