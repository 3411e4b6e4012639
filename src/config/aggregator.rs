//! What every aggregator type provides, and what it is given when it is built.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use super::component::{ComponentId, ComponentTask, FieldProblem, OutputName};
use super::options::Options;
use super::service::Services;
use crate::telemetry::ComponentTelemetry;
use crate::topology::InstanceIdentity;
use crate::topology::channel::{InputReceiver, Outputs};

/// What every aggregator type provides.
pub trait AggregatorComponent: Options {
    /// Named outputs besides the default one and `errors`.
    fn named_outputs(&self) -> Vec<OutputName> {
        Vec::new()
    }

    fn check(&self) -> Vec<FieldProblem> {
        Vec::new()
    }

    fn build(&self, cx: AggregatorContext) -> anyhow::Result<ComponentTask>;
}

/// What an aggregator is given when it is built.
pub struct AggregatorContext {
    pub id: ComponentId,
    pub input: InputReceiver,
    pub out: Outputs,
    pub telemetry: ComponentTelemetry,
    /// Where state that outlives the process goes (open windows are checkpointed there).
    pub data_dir: PathBuf,
    /// Set when a reload replaced this instance: its open windows are not checkpointed
    /// (the new definition would not accept them).
    pub retired: Arc<AtomicBool>,
    /// The topology's shared services.
    pub services: Arc<Services>,
    /// Which weir this is: a persistent id for names no other instance may share
    /// (`data_dir/instance_id`, or `WEIR_INSTANCE_ID`).
    pub instance_id: Arc<InstanceIdentity>,
    /// What the open windows become when the input ends (not by a reload).
    pub end_of_input: EndOfInput,
}

/// What an aggregator does with its open windows when its input ends for good.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EndOfInput {
    /// Keep them: they are checkpointed to `data_dir` and resumed by the next start (a
    /// daemon's shutdown).
    #[default]
    Checkpoint,
    /// Time moves on past them: every open window closes and is emitted as it would be
    /// once its group went idle (`weir test`, whose input is all there will be).
    CloseWindows,
}
