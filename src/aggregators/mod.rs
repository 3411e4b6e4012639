//! Aggregators: event-time windows.
//!
//! Each window type is an engine ([`engine::WindowEngine`]) run by [`engine::spawn`]:
//! sharded by group key over the cores, ticking on the wall clock for idle groups and
//! early results, checkpointed in `data_dir` across restarts. `tumbling` and `hopping`
//! share the [`fixed`] engine. Aggregates are in [`aggregate`]; the options every window
//! type shares are in [`window`].

mod absence;
pub mod aggregate;
pub mod engine;
pub mod fixed;
mod hopping;
mod session;
mod sliding;
mod tumbling;
pub mod window;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

pub use absence::AbsenceConfig;
pub use hopping::HoppingConfig;
pub use session::SessionConfig;
pub use sliding::SlidingConfig;
pub use tumbling::TumblingConfig;

use crate::config::component::component_types;
use crate::config::{ComponentId, FieldProblem, OutputName};
use crate::telemetry::ComponentTelemetry;
use crate::topology::ComponentTask;
use crate::topology::channel::{InputReceiver, Outputs};
use fixed::{Assigner, FixedWindows};
use window::{LatePolicy, WindowCommon, WindowSpec};

component_types! {
    /// Every aggregator type.
    pub enum AggregatorConfig: AggregatorComponent {
        "tumbling" => Tumbling(TumblingConfig),
        "hopping" => Hopping(HoppingConfig),
        "sliding" => Sliding(SlidingConfig),
        "session" => Session(SessionConfig),
        "absence" => Absence(AbsenceConfig),
    }
}

/// What every aggregator type provides.
pub trait AggregatorComponent: Send + Sync {
    /// Named outputs besides the default one and `errors`.
    fn named_outputs(&self) -> Vec<OutputName> {
        Vec::new()
    }

    fn check(&self) -> Vec<FieldProblem> {
        Vec::new()
    }

    fn build(&self, cx: AggregatorContext) -> anyhow::Result<ComponentTask>;
}

impl AggregatorConfig {
    /// Every named output, including `errors` (events without a readable event time).
    pub fn outputs(&self) -> Vec<OutputName> {
        let mut outputs = self.component().named_outputs();
        outputs.push(OutputName::errors());
        outputs
    }
}

/// The output for late and future events, when they are routed.
pub const LATE: &str = "late";

fn late_outputs(policy: LatePolicy) -> Vec<OutputName> {
    match policy {
        LatePolicy::Route => vec![OutputName(LATE.into())],
        LatePolicy::Drop | LatePolicy::Adjust => Vec::new(),
    }
}

/// What an aggregator is given when it is built.
pub struct AggregatorContext {
    pub id: ComponentId,
    pub input: InputReceiver,
    pub out: Outputs,
    pub telemetry: ComponentTelemetry,
    /// Where open windows are checkpointed on shutdown (`<data_dir>/aggregators/<id>.json`).
    pub checkpoint: Option<PathBuf>,
    /// Set when a reload replaced this instance: its open windows are not checkpointed
    /// (the new definition would not accept them).
    pub retired: Arc<AtomicBool>,
}

/// Runs fixed windows (tumbling or hopping) of `size` placed by `assigner`.
fn spawn_fixed(
    cx: AggregatorContext,
    common: &WindowCommon,
    assigner: Assigner,
    size: Duration,
) -> anyhow::Result<ComponentTask> {
    let component = cx.id.as_arc();
    let spec = || WindowSpec::new(component.clone(), common, size);
    let runner = engine::Runner::new(spec(), common.shards);
    engine::spawn(cx, runner, || FixedWindows::new(spec(), assigner))
}

/// The checkpoint file of aggregator `id` under `data_dir`.
pub fn checkpoint_path(data_dir: &std::path::Path, id: &ComponentId) -> PathBuf {
    data_dir.join("aggregators").join(format!("{id}.json"))
}
