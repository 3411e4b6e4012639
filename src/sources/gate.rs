//! The registry as a gate: which devices a source lets in.
//!
//! With a `registry:` section, every source refuses devices the registry knows as disabled;
//! `unknown_devices: refuse` refuses the ones it does not know too. A refused reading of a
//! broker goes to `<id>.errors` (still part of its message's delivery, so the message is
//! acknowledged once the dead letter is handled), and is counted in
//! `component_errors_total{error_type="unauthorized"}` and
//! `registry_auth_failures_total{reason}`.

use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::SourceContext;
use crate::config::OutputName;
use crate::config::ServiceUse;
use crate::event::{Event, EventBatch};
use crate::registry::{self, AuthError, Registry};
use crate::telemetry::InternalEvent;
use crate::telemetry::events::{ComponentError, ErrorType, Stage};

/// What a source does with a device the registry does not know.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UnknownDevices {
    /// Let it in (simulators and fleets not registered yet keep working).
    #[default]
    Accept,
    /// Refuse it (needs the `registry:` section).
    Refuse,
}

impl UnknownDevices {
    pub fn is_accept(&self) -> bool {
        *self == Self::Accept
    }

    /// A source with this setting needs the registry unless it accepts every device.
    pub fn services(&self) -> Vec<ServiceUse> {
        match self.is_accept() {
            true => Vec::new(),
            false => vec![registry::used_by("unknown_devices")],
        }
    }
}

/// A source's gate; open when the topology has no registry.
#[derive(Clone)]
pub(crate) struct DeviceGate {
    registry: Option<Arc<Registry>>,
    refuse_unknown: bool,
}

impl DeviceGate {
    pub fn new(registry: Option<Arc<Registry>>, unknown: UnknownDevices) -> anyhow::Result<Self> {
        if unknown == UnknownDevices::Refuse && registry.is_none() {
            anyhow::bail!(
                "`unknown_devices: refuse` needs the device registry: add a `registry:` section"
            );
        }
        Ok(Self {
            registry,
            refuse_unknown: unknown == UnknownDevices::Refuse,
        })
    }

    /// Whether `device_id` may send; a refusal is counted by reason.
    pub fn admit(&self, device_id: &str) -> Result<(), AuthError> {
        match &self.registry {
            Some(registry) => registry.admit(device_id, self.refuse_unknown),
            None => Ok(()),
        }
    }

    /// The events whose device may send; the others go to `<id>.errors`, counted.
    pub async fn screen(&self, cx: &SourceContext, events: Vec<Event>) -> Vec<Event> {
        if self.registry.is_none() {
            return events;
        }
        let mut admitted = Vec::with_capacity(events.len());
        let mut refused = Vec::new();
        for event in events {
            let verdict = match &event.device_id {
                Some(id) => self.admit(id),
                None => Ok(()),
            };
            match verdict {
                Ok(()) => admitted.push(event),
                Err(reason) => refused.push((event, reason)),
            }
        }
        if refused.is_empty() {
            return admitted;
        }
        let source = cx.id.as_arc();
        let mut dead = Vec::with_capacity(refused.len());
        for (event, reason) in refused {
            let message = format!("refused: {reason}");
            ComponentError {
                error_type: ErrorType::Unauthorized,
                stage: Stage::Receiving,
                message: &message,
                count: 1,
            }
            .emit(&cx.telemetry);
            dead.push(event.with_error(&source, message));
        }
        cx.out
            .send_named(OutputName::ERRORS, EventBatch::new(dead))
            .await;
        admitted
    }
}
