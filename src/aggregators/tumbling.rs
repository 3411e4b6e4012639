//! `tumbling`: back-to-back windows of one size, e.g. every minute on the minute.

use super::fixed::Assigner;
use super::window::{millis, window_config};
use super::{AggregatorComponent, AggregatorContext, spawn_fixed};
use crate::config::{Duration, FieldProblem, OutputName};
use crate::topology::ComponentTask;

window_config! {
    /// Non-overlapping windows `[start, start + size)`, aligned to the epoch (plus `offset`).
    pub struct TumblingConfig {
        /// Window length, e.g. `1m`.
        pub size: Duration,
        /// Shift of the window boundaries from the epoch, e.g. `30s`.
        #[serde(default = "crate::aggregators::window::zero")]
        pub offset: Duration,
    }
}

impl AggregatorComponent for TumblingConfig {
    fn named_outputs(&self) -> Vec<OutputName> {
        super::late_outputs(self.late_events)
    }

    fn check(&self) -> Vec<FieldProblem> {
        let mut problems = self.common().check();
        if self.size.get().as_millis() == 0 {
            problems.push(FieldProblem::at(
                ["size"],
                "expected a window size of at least 1ms",
            ));
        }
        if self.offset >= self.size && self.size.get().as_millis() > 0 {
            problems.push(FieldProblem::at(
                ["offset"],
                "expected an offset smaller than `size`",
            ));
        }
        problems
    }

    fn build(&self, cx: AggregatorContext) -> anyhow::Result<ComponentTask> {
        let assigner = Assigner::Tumbling {
            size: millis(self.size),
            offset: millis(self.offset),
        };
        spawn_fixed(cx, &self.common(), assigner, self.size.get())
    }
}
