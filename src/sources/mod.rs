//! Sources: where readings enter weir.
//!
//! A source is a task that receives from a transport (or makes readings up, for the
//! simulator), decodes them into events and sends batches downstream until the topology's
//! shutdown signal fires. Sending waits for room downstream, so a slow pipeline slows the
//! source, which in turn slows its transport (HTTP clients wait, brokers stop delivering).
//! Every source has an `errors` output for payloads it could not turn into events.

mod amqp;
#[cfg(feature = "delta")]
mod delta_lake;
mod device_gateway;
mod device_registry;
mod gate;
mod http;
mod iothub;
mod mqtt;
mod reading;
mod simulator;

pub use amqp::AmqpSourceConfig;
#[cfg(feature = "delta")]
pub use delta_lake::DeltaLakeSourceConfig;
pub use device_gateway::DeviceGatewayConfig;
pub use device_registry::DeviceRegistrySourceConfig;
pub use gate::UnknownDevices;
pub use http::HttpSourceConfig;
pub use mqtt::MqttSourceConfig;
pub use simulator::SimulatorConfig;

use crate::config::ComponentType;
pub use crate::config::source::{SourceComponent, SourceContext};

/// Every source type.
pub const TYPES: &[ComponentType<dyn SourceComponent>] = &[
    ComponentType::of::<SimulatorConfig>("simulator"),
    ComponentType::of::<HttpSourceConfig>("http"),
    ComponentType::of::<MqttSourceConfig>("mqtt"),
    ComponentType::of::<AmqpSourceConfig>("amqp"),
    ComponentType::of::<DeviceRegistrySourceConfig>("device_registry"),
    ComponentType::of::<DeviceGatewayConfig>("device_gateway"),
    #[cfg(feature = "delta")]
    ComponentType::of::<DeltaLakeSourceConfig>("delta_lake"),
];
