//! Sinks: where events leave weir.
//!
//! A sink is a task that reads its input channel until every upstream has finished, writes
//! each batch to its destination, and returns once everything it received is written: that
//! is how a shutdown drains the graph.

mod amqp;
mod blackhole;
mod console;
#[cfg(feature = "delta")]
mod delta_lake;
mod file;
mod mqtt;
mod publish;
mod redis;
pub mod retry;

pub use amqp::AmqpSinkConfig;
pub use blackhole::BlackholeConfig;
pub use console::ConsoleConfig;
#[cfg(feature = "delta")]
pub use delta_lake::DeltaLakeConfig;
pub use file::FileConfig;
pub use mqtt::MqttSinkConfig;
pub use redis::{RedisConfig, RedisMode};

use crate::config::ComponentType;
pub use crate::config::sink::{SinkComponent, SinkContext};

/// Every sink type.
pub const TYPES: &[ComponentType<dyn SinkComponent>] = &[
    ComponentType::of::<ConsoleConfig>("console"),
    ComponentType::of::<FileConfig>("file"),
    ComponentType::of::<RedisConfig>("redis"),
    ComponentType::of::<BlackholeConfig>("blackhole"),
    ComponentType::of::<AmqpSinkConfig>("amqp"),
    ComponentType::of::<MqttSinkConfig>("mqtt"),
    #[cfg(feature = "delta")]
    ComponentType::of::<DeltaLakeConfig>("delta_lake"),
];

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
