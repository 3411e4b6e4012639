//! Actions: insights become actions (`webhook`, `mqtt_publish`, `amqp_publish`, `email`,
//! `log`).
//!
//! An action reads its inputs like a sink and sends one notification per event. What is
//! common to all of them — throttling, dedupe, the bounded queue, retries with backoff,
//! dead letters, metrics and acknowledgement — lives in [`runner`]; each action's file only
//! says how to render and send one notification and which failures are permanent.

mod amqp_publish;
mod email;
mod log;
mod mqtt_publish;
pub mod policy;
pub mod runner;
mod webhook;

pub use amqp_publish::AmqpPublishConfig;
pub use email::EmailConfig;
pub use log::LogActionConfig;
pub use mqtt_publish::MqttPublishConfig;
pub use webhook::WebhookConfig;

use crate::config::component::component_types;
use crate::config::{ComponentId, FieldProblem};
use crate::telemetry::ComponentTelemetry;
use crate::topology::ComponentTask;
use crate::topology::channel::{InputReceiver, Outputs};

component_types! {
    /// Every action type.
    pub enum ActionConfig: ActionComponent {
        "webhook" => Webhook(WebhookConfig),
        "mqtt_publish" => MqttPublish(MqttPublishConfig),
        "amqp_publish" => AmqpPublish(AmqpPublishConfig),
        "email" => Email(EmailConfig),
        "log" => Log(LogActionConfig),
    }
}

/// What every action type provides.
pub trait ActionComponent: Send + Sync {
    /// Checks that serde cannot express; each problem names the field it is about.
    fn check(&self) -> Vec<FieldProblem> {
        Vec::new()
    }

    fn build(&self, cx: ActionContext) -> anyhow::Result<ComponentTask>;
}

/// What an action is given when it is built.
pub struct ActionContext {
    pub id: ComponentId,
    pub input: InputReceiver,
    /// The action's one output, `errors`: notifications that failed for good (a 4xx, a
    /// template that cannot render, retries exhausted, a full queue that drops).
    pub out: Outputs,
    pub telemetry: ComponentTelemetry,
}
