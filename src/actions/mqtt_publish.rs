//! `mqtt_publish`: a cloud-to-device command on a templated topic, QoS 1 by default: a
//! notification counts as sent when the broker acknowledged it (PUBACK).

use std::hash::{Hash, Hasher};

use rumqttc::{PublishOptions, QoS};

use super::idempotency::IdempotencyKey;
use super::policy::action_config;
use super::runner::{self, Notifier, SendError};
use super::{ActionComponent, ActionContext};
use crate::broker::CredentialFields;
use crate::broker::mqtt::{Publisher, PublisherSettings};
use crate::config::{Duration, FieldProblem, RedactedUrl};
use crate::event::Event;
use crate::template::Template;
use crate::tls::TlsConfig;
use crate::topology::ComponentTask;

action_config! {
    /// Publishes one MQTT message per event.
    pub struct MqttPublishConfig {
        /// e.g. `mqtt://127.0.0.1:1883`, or `mqtts://broker:8883` (TLS).
        pub url: RedactedUrl,
        /// e.g. `devices/{{ device_id }}/commands`.
        pub topic: Template,
        /// e.g. `{"command":"reduce_load"}`; default: the event as JSON.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub payload: Option<Template>,
        /// 1 (the broker acknowledges; the default) or 0 (fire and forget).
        #[serde(default = "default_qos")]
        pub qos: u8,
        #[serde(default)]
        pub retain: bool,
        /// Default: `weir-<component id>`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub client_id: Option<String>,
        /// The user name weir connects as, for brokers that want credentials.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub username: Option<String>,
        /// The password, e.g. `${MQTT_PASSWORD}`; never logged.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub password: Option<crate::config::Sensitive>,
        /// A file holding the password (its trailing newline is not part of it), read when
        /// the action starts.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub password_file: Option<std::path::PathBuf>,
        /// How long to wait for the broker's acknowledgement; a timeout is retried.
        #[serde(default = "default_timeout")]
        pub timeout: Duration,
        /// Certificates for `mqtts://`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub tls: Option<TlsConfig>,
    }
}

fn default_qos() -> u8 {
    1
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

impl ActionComponent for MqttPublishConfig {
    fn buffer(&self) -> crate::buffers::BufferConfig {
        self.policies().buffer()
    }

    fn warnings(&self) -> Vec<FieldProblem> {
        self.policies().warnings()
    }

    fn check(&self) -> Vec<FieldProblem> {
        let mut problems = self.policies().check();
        match crate::broker::mqtt::broker_address(self.url.expose_str()) {
            Err(message) => problems.push(FieldProblem::at(["url"], message)),
            Ok((_, _, false)) if self.tls.is_some() => {
                problems.push(FieldProblem::at(["tls"], "`tls` needs an `mqtts://` URL"))
            }
            Ok(_) => {}
        }
        if self.qos > 1 {
            problems.push(FieldProblem::at(["qos"], "expected 0 or 1"));
        }
        problems.extend(self.credentials().check());
        problems
    }

    fn build(&self, cx: ActionContext) -> anyhow::Result<ComponentTask> {
        let client_id = self
            .client_id
            .clone()
            .unwrap_or_else(|| format!("weir-{}", cx.id));
        let settings = PublisherSettings {
            url: &self.url,
            client_id,
            credentials: self.credentials(),
            tls: self.tls.as_ref(),
            // rumqttc's default; the runner sends one message at a time anyway.
            max_inflight: 100,
        };
        let notifier = MqttPublish {
            publisher: Publisher::new(settings, cx.telemetry.clone())?,
            config: self.clone(),
        };
        runner::spawn(cx, self.policies(), notifier)
    }
}

impl MqttPublishConfig {
    fn credentials(&self) -> CredentialFields<'_> {
        CredentialFields {
            username: self.username.as_deref(),
            password: self.password.as_ref(),
            password_file: self.password_file.as_deref(),
        }
    }
}

struct MqttPublish {
    publisher: Publisher,
    config: MqttPublishConfig,
}

/// One rendered message.
pub struct Message {
    topic: String,
    payload: Vec<u8>,
}

impl Notifier for MqttPublish {
    type Message = Message;

    fn prepare(&self, event: &Event) -> Result<Message, String> {
        let view = event.view();
        let topic = runner::render(&self.config.topic, &view, "topic")?;
        crate::broker::mqtt::check_topic(&topic)?;
        let payload = runner::body_or_event(self.config.payload.as_ref(), event, &view, "payload")?;
        Ok(Message { topic, payload })
    }

    fn identity(&self, message: &Message, hasher: &mut dyn Hasher) {
        let mut hasher = hasher;
        message.topic.hash(&mut hasher);
        message.payload.hash(&mut hasher);
    }

    /// MQTT 3.1.1 has no message properties to carry `_key` in, and the payload is the
    /// user's: see [`super::idempotency`] for how a receiver gets the key.
    async fn send(&self, message: &Message, _key: &IdempotencyKey) -> Result<(), SendError> {
        let qos = match self.config.qos {
            0 => QoS::AtMostOnce,
            _ => QoS::AtLeastOnce,
        };
        let options = PublishOptions::new(qos).retain(self.config.retain);
        let notice = self
            .publisher
            .publish(&message.topic, message.payload.clone(), options)
            .await
            .map_err(SendError::Transient)?;
        self.publisher
            .acknowledged(notice, &message.topic, self.config.timeout)
            .await
            .map_err(SendError::Transient)
    }
}
