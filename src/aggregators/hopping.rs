//! `hopping`: overlapping windows of one size that start every `hop`, e.g. the last
//! 5 minutes, every minute.

use super::fixed::Assigner;
use super::window::{millis, window_config};
use super::{AggregatorComponent, AggregatorContext, spawn_fixed};
use crate::config::{Duration, FieldProblem, OutputName};
use crate::topology::ComponentTask;

window_config! {
    /// Windows `[start, start + size)` starting every `hop`; an event belongs to
    /// `size / hop` of them.
    pub struct HoppingConfig {
        /// Window length, e.g. `5m`.
        pub size: Duration,
        /// Distance between window starts, e.g. `1m`.
        pub hop: Duration,
        /// Shift of the window boundaries from the epoch.
        #[serde(default = "crate::aggregators::window::zero")]
        pub offset: Duration,
    }
}

impl AggregatorComponent for HoppingConfig {
    fn named_outputs(&self) -> Vec<OutputName> {
        super::late_outputs(self.late_events)
    }

    fn check(&self) -> Vec<FieldProblem> {
        let mut problems = self.common().check();
        if self.hop.get().as_millis() == 0 {
            problems.push(FieldProblem::at(["hop"], "expected a hop of at least 1ms"));
        } else if self.hop > self.size {
            problems.push(FieldProblem::at(
                ["hop"],
                "expected a hop no longer than `size` (use `tumbling` when they are equal)",
            ));
        } else if self.size.get().as_millis() > 1000 * self.hop.get().as_millis() {
            problems.push(FieldProblem::at(
                ["hop"],
                "an event would belong to over 1000 windows: expected a larger hop",
            ));
        }
        if self.offset >= self.hop && self.hop.get().as_millis() > 0 {
            problems.push(FieldProblem::at(
                ["offset"],
                "expected an offset smaller than `hop`",
            ));
        }
        problems
    }

    fn build(&self, cx: AggregatorContext) -> anyhow::Result<ComponentTask> {
        let assigner = Assigner::Hopping {
            size: millis(self.size),
            hop: millis(self.hop),
            offset: millis(self.offset),
        };
        spawn_fixed(cx, &self.common(), assigner, self.size.get())
    }
}
