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
mod handover;
mod hopping;
mod session;
mod sliding;
mod tumbling;
pub mod window;

use std::path::PathBuf;
use std::time::Duration;

pub use absence::AbsenceConfig;
pub use hopping::HoppingConfig;
pub use session::SessionConfig;
pub use sliding::SlidingConfig;
pub use tumbling::TumblingConfig;

use crate::config::ComponentType;
pub use crate::config::aggregator::{AggregatorComponent, AggregatorContext};
use crate::config::{ComponentId, OutputName};
use crate::topology::ComponentTask;
use fixed::{Assigner, FixedWindows};
use window::{LatePolicy, WindowCommon, WindowSpec};

/// Every aggregator type.
pub const TYPES: &[ComponentType<dyn AggregatorComponent>] = &[
    ComponentType::of::<TumblingConfig>("tumbling"),
    ComponentType::of::<HoppingConfig>("hopping"),
    ComponentType::of::<SlidingConfig>("sliding"),
    ComponentType::of::<SessionConfig>("session"),
    ComponentType::of::<AbsenceConfig>("absence"),
];

/// The output for late and future events, when they are routed.
pub const LATE: &str = "late";

fn late_outputs(policy: LatePolicy) -> Vec<OutputName> {
    match policy {
        LatePolicy::Route => vec![OutputName(LATE.into())],
        LatePolicy::Drop | LatePolicy::Adjust => Vec::new(),
    }
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
