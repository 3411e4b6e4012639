//! `console`: prints events to stdout.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use super::{SinkComponent, SinkContext, TextFormat};
use crate::telemetry::InternalEvent;
use crate::telemetry::events::{BytesSent, ComponentError, ErrorType, Stage};
use crate::topology::ComponentTask;

/// Writes each event to stdout, as JSON lines or readable text.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    #[serde(default)]
    pub format: TextFormat,
}

impl SinkComponent for ConsoleConfig {
    fn build(&self, cx: SinkContext) -> anyhow::Result<ComponentTask> {
        let SinkContext {
            mut input,
            telemetry,
            ..
        } = cx;
        let format = self.format;
        let sent = telemetry.sent_events("default");
        Ok(Box::pin(async move {
            let mut stdout = tokio::io::stdout();
            let mut buffer = Vec::new();
            while let Some(batch) = input.recv().await {
                buffer.clear();
                for event in &batch.events {
                    if let Err(err) = format.write(event, &mut buffer) {
                        let message = format!("cannot encode event: {err}");
                        ComponentError {
                            error_type: ErrorType::Encode,
                            stage: Stage::Sending,
                            message: &message,
                            count: 1,
                        }
                        .emit(&telemetry);
                    }
                }
                if let Err(err) = stdout.write_all(&buffer).await.and(stdout.flush().await) {
                    batch.fail_deliveries();
                    return Err(err.into());
                }
                sent.inc_by(batch.len() as u64);
                BytesSent {
                    bytes: buffer.len(),
                }
                .emit(&telemetry);
            }
            Ok(())
        }))
    }
}
