//! Sinks: where events leave weir.
//!
//! A sink is a task that reads its input channel until every upstream has finished, writes
//! each batch to its destination, and returns once everything it received is written: that
//! is how a shutdown drains the graph.

mod blackhole;
pub mod buffer;
mod console;
mod delta_lake;
mod file;
mod redis;
pub mod retry;

pub use blackhole::BlackholeConfig;
pub use console::ConsoleConfig;
pub use delta_lake::DeltaLakeConfig;
pub use file::FileConfig;
pub use redis::{RedisConfig, RedisMode};

use crate::config::component::component_types;
use crate::config::{ComponentId, FieldProblem, Resource};
use crate::telemetry::ComponentTelemetry;
use crate::topology::ComponentTask;
use crate::topology::channel::{InputReceiver, Outputs};

component_types! {
    /// Every sink type.
    pub enum SinkConfig: SinkComponent {
        "console" => Console(ConsoleConfig),
        "file" => File(FileConfig),
        "redis" => Redis(RedisConfig),
        "blackhole" => Blackhole(BlackholeConfig),
        "delta_lake" => DeltaLake(DeltaLakeConfig),
    }
}

/// What every sink type provides.
pub trait SinkComponent: Send + Sync {
    fn check(&self) -> Vec<FieldProblem> {
        Vec::new()
    }

    /// What the sink holds exclusively (a file), so two components cannot both own it.
    fn resources(&self) -> Vec<Resource> {
        Vec::new()
    }

    /// The longest the sink may hold an event before committing it (a batch timeout),
    /// when that is long enough to matter to a source waiting for the commit.
    fn commit_delay(&self) -> Option<std::time::Duration> {
        None
    }

    fn build(&self, cx: SinkContext) -> anyhow::Result<ComponentTask>;
}

/// What a sink is given when it is built.
pub struct SinkContext {
    pub id: ComponentId,
    pub input: InputReceiver,
    /// The sink's one output, `errors`: events its destination refused for good (a type
    /// conflict, a rejected command). Transient failures are retried, never sent here.
    pub out: Outputs,
    pub telemetry: ComponentTelemetry,
}

/// The on-the-wire shape of events for sinks that write text.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Deserialize,
    serde::Serialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum TextFormat {
    /// One JSON object per line: `device_id`, the fields, and `meta`.
    #[default]
    Json,
    /// `device_id field=value ...`, for people reading a terminal.
    Text,
}

impl TextFormat {
    /// Appends one event in this format, newline-terminated.
    pub fn write(self, event: &crate::event::Event, out: &mut Vec<u8>) -> serde_json::Result<()> {
        use std::io::Write as _;
        match self {
            Self::Json => event.to_json_line(out),
            Self::Text => {
                let _ = write!(
                    out,
                    "{} {}",
                    event.time,
                    event.device_id.as_deref().unwrap_or("-")
                );
                for (key, value) in event.fields() {
                    let _ = write!(out, " {key}={value}");
                }
                out.push(b'\n');
                Ok(())
            }
        }
    }
}
