//! `blackhole`: reads and counts events, writes nothing (benchmarks, disabled branches).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{SinkComponent, SinkContext};
use crate::topology::ComponentTask;

/// Accepts every event and discards it; `component_sent_events_total` still counts them.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BlackholeConfig {}

impl SinkComponent for BlackholeConfig {
    fn build(&self, cx: SinkContext) -> anyhow::Result<ComponentTask> {
        let SinkContext {
            mut input,
            telemetry,
            ..
        } = cx;
        let sent = telemetry.sent_events("default");
        Ok(Box::pin(async move {
            while let Some(batch) = input.recv().await {
                sent.inc_by(batch.len() as u64);
            }
            Ok(())
        }))
    }
}
