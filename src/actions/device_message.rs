//! `device_message`: a cloud-to-device message per event, queued for its device in a
//! `device_gateway`'s queues (the `devicebound` service, as
//! `POST /v1/devices/{id}/messages/devicebound` queues one) and delivered while the
//! device is connected.
//!
//! A notification counts as sent once the message is queued (written to the gateway's
//! queue file); what becomes of it later (completed by the device, expired, delivered
//! too often) comes out of the gateway's `<gateway>.feedback` output as the `ack`
//! setting asks, with the message id, `<idempotency key>.<action id>`: a notification
//! sent again after a crash finds its message still queued and queues nothing new.
//!
//! Outcomes, as every action reports them: queued (sent); a device the registry does not
//! know, or a `gateway` that names none, fail for good (`<id>.errors`); a full queue, or
//! no gateway running yet, are retried under `retry` and then dead-lettered.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use super::idempotency::IdempotencyKey;
use super::policy::action_config;
use super::runner::{self, Notifier, SendError};
use super::{ActionComponent, ActionContext};
use crate::config::service::Services;
use crate::config::{Duration, FieldProblem};
use crate::devicebound::{Ack, Devicebound, NewMessage, NoGateway, QueueError};
use crate::event::Event;
use crate::registry::Registry;
use crate::template::Template;
use crate::topology::ComponentTask;

action_config! {
    /// Queues a cloud-to-device message for a device, delivered by a `device_gateway`.
    pub struct DeviceMessageConfig {
        /// The `device_gateway` source whose queues take the message; needed when the
        /// topology has more than one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub gateway: Option<String>,
        /// The device the message is for (default `{{ device_id }}`).
        #[serde(default = "default_device_id")]
        pub device_id: Template,
        /// The message body, e.g. `{"command":"reduce_load"}`; default: the event as JSON.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub payload: Option<Template>,
        /// Application properties, each a template, e.g. `{ severity: "{{ severity }}" }`.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        pub properties: BTreeMap<String, Template>,
        /// How long the message may wait for its device before it expires (default 1h).
        #[serde(default = "default_ttl")]
        pub ttl: Duration,
        /// Which outcomes come out on the gateway's `<gateway>.feedback`: `none` (the
        /// default), `positive` (completed), `negative` (expired, delivered too often),
        /// `full` (both).
        #[serde(default, skip_serializing_if = "Ack::is_none")]
        pub ack: Ack,
    }
}

fn default_device_id() -> Template {
    // A constant template always compiles.
    Template::compile("{{ device_id }}").unwrap_or_else(|_| unreachable!())
}

fn default_ttl() -> Duration {
    Duration::from_secs(3600)
}

impl ActionComponent for DeviceMessageConfig {
    fn buffer(&self) -> crate::buffers::BufferConfig {
        self.policies().buffer()
    }

    fn warnings(&self) -> Vec<FieldProblem> {
        self.policies().warnings()
    }

    fn check(&self) -> Vec<FieldProblem> {
        let mut problems = self.policies().check();
        if self.ttl.get().is_zero() {
            problems.push(FieldProblem::at(["ttl"], "expected more than 0s"));
        }
        if self
            .properties
            .keys()
            .any(|name| name.is_empty() || name.starts_with('$'))
        {
            problems.push(FieldProblem::at(
                ["properties"],
                "property names must not be empty nor start with `$` (system properties)",
            ));
        }
        problems
    }

    fn build(&self, cx: ActionContext) -> anyhow::Result<ComponentTask> {
        let notifier = DeviceMessage {
            action: cx.id.to_string(),
            services: Arc::clone(&cx.services),
            config: self.clone(),
        };
        runner::spawn(cx, self.policies(), notifier)
    }
}

struct DeviceMessage {
    action: String,
    services: Arc<Services>,
    config: DeviceMessageConfig,
}

/// One rendered message.
pub struct Rendered {
    device_id: String,
    payload: String,
    properties: Vec<(String, String)>,
}

impl Notifier for DeviceMessage {
    type Message = Rendered;

    fn prepare(&self, event: &Event) -> Result<Rendered, String> {
        let view = event.view();
        let device_id = runner::render(&self.config.device_id, &view, "device_id")?;
        if device_id.is_empty() {
            return Err("`device_id` rendered empty".into());
        }
        let payload = runner::body_or_event(self.config.payload.as_ref(), event, &view, "payload")?;
        let payload = String::from_utf8(payload)
            .map_err(|_| "`payload` rendered text that is not UTF-8".to_owned())?;
        let properties = self
            .config
            .properties
            .iter()
            .map(|(name, template)| {
                runner::render(template, &view, &format!("properties.{name}"))
                    .map(|value| (name.clone(), value))
            })
            .collect::<Result<_, _>>()?;
        Ok(Rendered {
            device_id,
            payload,
            properties,
        })
    }

    fn identity(&self, message: &Rendered, hasher: &mut dyn Hasher) {
        let mut hasher = hasher;
        message.device_id.hash(&mut hasher);
        message.payload.hash(&mut hasher);
        message.properties.hash(&mut hasher);
    }

    async fn send(&self, message: &Rendered, key: &IdempotencyKey) -> Result<(), SendError> {
        let device = &message.device_id;
        let Some(registry) = self.services.get::<Registry>() else {
            return Err(SendError::Permanent(
                "no device registry runs: add a `registry:` section".into(),
            ));
        };
        if registry.lookup(device).is_none() {
            return Err(SendError::Permanent(format!(
                "device `{device}` is not in the registry"
            )));
        }
        let picked = match self.services.get::<Devicebound>() {
            Some(gateways) => gateways.gateway(self.config.gateway.as_deref()),
            None => Err(NoGateway::None),
        };
        let queues = match picked {
            Ok(queues) => queues,
            // A reload may start one: worth a retry.
            Err(e @ NoGateway::None) => return Err(SendError::Transient(e.to_string())),
            Err(e) => return Err(SendError::Permanent(e.to_string())),
        };
        let new = NewMessage {
            id: Some(format!("{key}.{}", self.action)),
            payload: message.payload.clone(),
            properties: message.properties.clone(),
            ttl: self.config.ttl.get(),
            ack: self.config.ack,
        };
        match queues.enqueue(device, new) {
            Ok(_) => Ok(()),
            // The device may take what waits meanwhile.
            Err(e @ (QueueError::Full { .. } | QueueError::Store(_))) => {
                Err(SendError::Transient(e.to_string()))
            }
        }
    }
}
