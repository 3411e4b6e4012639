//! Actions: insights become actions (`webhook`, `mqtt_publish`, `amqp_publish`, `email`,
//! `log`, `direct_method`, `device_message`).
//!
//! An action reads its inputs like a sink and sends one notification per event. What is
//! common to all of them — the buffer (disk by default: the outbox), throttling and dedupe
//! that outlive a restart ([`limits`]), retries with backoff, idempotency keys
//! ([`idempotency`]), dead letters, metrics and acknowledgement — lives in [`runner`]; each
//! action's file only says how to render and send one notification and which failures are
//! permanent.

mod amqp_publish;
mod device_message;
mod direct_method;
mod email;
pub mod idempotency;
pub mod limits;
mod log;
mod mqtt_publish;
pub mod policy;
pub mod runner;
mod webhook;

pub use amqp_publish::AmqpPublishConfig;
pub use device_message::DeviceMessageConfig;
pub use direct_method::DirectMethodConfig;
pub use email::EmailConfig;
pub use log::LogActionConfig;
pub use mqtt_publish::MqttPublishConfig;
pub use webhook::WebhookConfig;

use crate::config::ComponentType;
pub use crate::config::action::{ActionComponent, ActionContext};

/// Every action type.
pub const TYPES: &[ComponentType<dyn ActionComponent>] = &[
    ComponentType::of::<WebhookConfig>("webhook"),
    ComponentType::of::<MqttPublishConfig>("mqtt_publish"),
    ComponentType::of::<AmqpPublishConfig>("amqp_publish"),
    ComponentType::of::<EmailConfig>("email"),
    ComponentType::of::<LogActionConfig>("log"),
    ComponentType::of::<DirectMethodConfig>("direct_method"),
    ComponentType::of::<DeviceMessageConfig>("device_message"),
];
