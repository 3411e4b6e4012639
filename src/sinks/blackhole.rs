//! `blackhole`: reads and counts events, writes nothing (benchmarks, disabled branches).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{SinkComponent, SinkContext};
use crate::config::FieldProblem;
use crate::topology::ComponentTask;

/// Accepts every event and discards it; `component_sent_events_total` still counts them.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BlackholeConfig {
    /// Accept at most this many events per second, like a destination with limited
    /// throughput: for rehearsing backpressure. Default: as fast as events arrive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
}

impl SinkComponent for BlackholeConfig {
    fn check(&self) -> Vec<FieldProblem> {
        match self.rate {
            Some(rate) if !(rate.is_finite() && rate > 0.0) => {
                vec![FieldProblem::at(
                    ["rate"],
                    "expected a positive number of events per second",
                )]
            }
            _ => Vec::new(),
        }
    }

    fn build(&self, cx: SinkContext) -> anyhow::Result<ComponentTask> {
        let SinkContext {
            mut input,
            telemetry,
            ..
        } = cx;
        let sent = telemetry.sent_events("default");
        let rate = self.rate;
        Ok(Box::pin(async move {
            let started = tokio::time::Instant::now();
            let mut consumed = 0u64;
            while let Some(batch) = input.recv().await {
                consumed += batch.len() as u64;
                if let Some(rate) = rate {
                    // Pace to the cumulative rate, so short bursts do not add up to drift.
                    let due = std::time::Duration::from_secs_f64(consumed as f64 / rate);
                    tokio::time::sleep_until(started + due).await;
                }
                sent.inc_by(batch.len() as u64);
            }
            Ok(())
        }))
    }
}
