//! `filter`: keep the events for which a condition holds.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{FunctionTransform, TransformComponent, TransformContext, TransformOutput};
use crate::event::{Event, EventBatch};
use crate::telemetry::events::ErrorType;
use crate::template::Condition;

/// Keeps events for which `condition` holds; the rest are dropped and counted as
/// intentionally discarded.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// e.g. `temperature is number and temperature < 200`. An event for which the condition
    /// cannot be evaluated goes to `<id>.errors`.
    pub condition: Condition,
}

impl TransformComponent for FilterConfig {
    fn build(&self, _: &TransformContext) -> anyhow::Result<Box<dyn FunctionTransform>> {
        Ok(Box::new(Filter {
            condition: self.condition.clone(),
        }))
    }
}

pub struct Filter {
    condition: Condition,
}

impl FunctionTransform for Filter {
    fn transform(&mut self, event: Event, out: &mut TransformOutput) {
        match self.condition.holds_for(&event) {
            Ok(true) => out.push(event),
            Ok(false) => out.discard(1),
            Err(err) => out.error(
                event,
                ErrorType::Expression,
                format!("condition failed: {err}"),
            ),
        }
    }

    fn transform_batch(&mut self, batch: EventBatch, out: &mut TransformOutput) {
        let mut dropped = 0;
        for event in batch {
            match self.condition.holds_for(&event) {
                Ok(true) => out.push(event),
                Ok(false) => dropped += 1,
                Err(err) => out.error(
                    event,
                    ErrorType::Expression,
                    format!("condition failed: {err}"),
                ),
            }
        }
        out.discard(dropped);
    }
}
