//! Sources: where readings enter weir.
//!
//! A source is a task that receives from a transport (or makes readings up, for the
//! simulator), decodes them into events and sends batches downstream until the topology's
//! shutdown signal fires. Sending waits for room downstream, so a slow pipeline slows the
//! source, which in turn slows its transport (HTTP clients wait, brokers stop delivering).
//! Every source has an `errors` output for payloads it could not turn into events.

mod amqp;
mod device_registry;
mod gate;
mod http;
mod mqtt;
mod reading;
mod simulator;

pub use amqp::AmqpSourceConfig;
pub use device_registry::DeviceRegistrySourceConfig;
pub use gate::UnknownDevices;
pub use http::HttpSourceConfig;
pub use mqtt::MqttSourceConfig;
pub use simulator::SimulatorConfig;

pub(crate) use amqp::amqp_tls;
pub(crate) use mqtt::broker_address;

use tokio_util::sync::CancellationToken;

use crate::config::component::component_types;
use crate::config::{ComponentId, FieldProblem, OutputName, Resource};
use crate::telemetry::ComponentTelemetry;
use crate::topology::ComponentTask;
use crate::topology::channel::Outputs;

component_types! {
    /// Every source type.
    pub enum SourceConfig: SourceComponent {
        "simulator" => Simulator(SimulatorConfig),
        "http" => Http(HttpSourceConfig),
        "mqtt" => Mqtt(MqttSourceConfig),
        "amqp" => Amqp(AmqpSourceConfig),
        "device_registry" => DeviceRegistry(DeviceRegistrySourceConfig),
    }
}

/// What every source type provides.
pub trait SourceComponent: Send + Sync {
    fn check(&self) -> Vec<FieldProblem> {
        Vec::new()
    }

    /// What the source holds exclusively (a listening port), so a reload can free it
    /// before another component takes it, and `validate` can catch two owners.
    fn resources(&self) -> Vec<Resource> {
        Vec::new()
    }

    /// The option that makes the source use the device registry, if any.
    fn registry_option(&self) -> Option<&'static str> {
        None
    }

    /// How long the source waits for its events' commit before it gives up on them (an
    /// HTTP request answered 503), if it waits at all.
    fn ack_timeout(&self) -> Option<std::time::Duration> {
        None
    }

    /// Prepares the source (binding its port) and returns its task.
    fn build(&self, cx: SourceContext) -> anyhow::Result<ComponentTask>;
}

impl SourceConfig {
    /// Named outputs: every source has `errors`.
    pub fn outputs(&self) -> Vec<OutputName> {
        vec![OutputName::errors()]
    }
}

/// What a source is given when it is built.
pub struct SourceContext {
    pub id: ComponentId,
    pub out: Outputs,
    /// Fires when the source must stop reading; it then returns, which drains the graph.
    pub shutdown: CancellationToken,
    pub telemetry: ComponentTelemetry,
    /// The device registry, when the topology has a `registry:` section.
    pub registry: Option<std::sync::Arc<crate::registry::Registry>>,
}
