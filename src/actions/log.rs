//! `log`: a structured informational record per notification, in weir's own log.

use std::hash::{Hash, Hasher};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::idempotency::IdempotencyKey;
use super::policy::action_config;
use super::runner::{self, Notifier, SendError};
use super::{ActionComponent, ActionContext};
use crate::config::FieldProblem;
use crate::event::Event;
use crate::template::Template;
use crate::topology::ComponentTask;

action_config! {
    /// Writes one log record per event: the rendered `message` plus the event as a JSON field.
    pub struct LogActionConfig {
        /// e.g. `{{ alarm }} {{ state }} on {{ device_id }} ({{ severity }})`.
        pub message: Template,
        #[serde(default)]
        pub level: LogLevel,
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    #[default]
    Info,
    Warn,
    Error,
}

impl ActionComponent for LogActionConfig {
    fn buffer(&self) -> crate::buffers::BufferConfig {
        self.policies().buffer()
    }

    fn warnings(&self) -> Vec<FieldProblem> {
        self.policies().warnings()
    }

    fn check(&self) -> Vec<FieldProblem> {
        self.policies().check()
    }

    fn build(&self, cx: ActionContext) -> anyhow::Result<ComponentTask> {
        let notifier = LogNotifier {
            component: cx.id.to_string(),
            message: self.message.clone(),
            level: self.level,
        };
        runner::spawn(cx, self.policies(), notifier)
    }
}

struct LogNotifier {
    component: String,
    message: Template,
    level: LogLevel,
}

pub struct Record {
    message: String,
    device_id: Option<String>,
    event: String,
}

impl Notifier for LogNotifier {
    type Message = Record;

    fn prepare(&self, event: &Event) -> Result<Record, String> {
        let message = runner::render(&self.message, &event.view(), "message")?;
        let json = serde_json::to_string(event)
            .map_err(|err| format!("cannot encode the event: {err}"))?;
        Ok(Record {
            message,
            device_id: event.device_id.as_deref().map(str::to_owned),
            event: json,
        })
    }

    fn identity(&self, message: &Record, hasher: &mut dyn Hasher) {
        let mut hasher = hasher;
        message.message.hash(&mut hasher);
        message.device_id.hash(&mut hasher);
    }

    async fn send(&self, record: &Record, key: &IdempotencyKey) -> Result<(), SendError> {
        let device_id = record.device_id.as_deref().unwrap_or("-");
        let (component_id, event, message) = (&self.component, &record.event, &record.message);
        let idempotency_key = key.as_str();
        match self.level {
            LogLevel::Info => {
                tracing::info!(component_id, device_id, idempotency_key, event, "{message}")
            }
            LogLevel::Warn => {
                tracing::warn!(component_id, device_id, idempotency_key, event, "{message}")
            }
            LogLevel::Error => {
                tracing::error!(component_id, device_id, idempotency_key, event, "{message}")
            }
        }
        Ok(())
    }
}
