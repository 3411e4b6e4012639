//! Actions: insights become actions (`webhook`, `mqtt_publish`, `amqp_publish`, `email`,
//! `log`).
//!
//! The section is part of the pipeline language already, so files that use it get a clear
//! "unknown action type" until the action emitters land; no type is built in yet.

use crate::config::component::component_types;

component_types! {
    /// Every action type.
    pub enum ActionConfig: ActionComponent {}
}

/// What every action type provides.
pub trait ActionComponent: Send + Sync {}
