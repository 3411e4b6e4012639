//! `amqp_publish`: one message per notification to an exchange, with publisher confirms:
//! a notification counts as sent when the broker confirmed it. A message the broker
//! returns as unroutable (`mandatory`) fails for good; a nack or a lost connection is
//! retried (on a new connection).

use std::hash::{Hash, Hasher};

use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;

use super::idempotency::IdempotencyKey;
use super::policy::action_config;
use super::runner::{self, Notifier, SendError};
use super::{ActionComponent, ActionContext};
use crate::broker::amqp::{Confirmed, Publisher, confirmed};
use crate::config::{Duration, FieldProblem, RedactedUrl};
use crate::event::Event;
use crate::template::Template;
use crate::tls::TlsConfig;
use crate::topology::ComponentTask;

action_config! {
    /// Publishes one AMQP message per event.
    pub struct AmqpPublishConfig {
        /// e.g. `amqp://guest:guest@127.0.0.1:5672/%2f`, or `amqps://…` (TLS).
        pub url: RedactedUrl,
        /// The exchange; default: the default exchange (routing key = queue name).
        #[serde(default)]
        pub exchange: String,
        /// e.g. `alarms.{{ severity }}.{{ device_id }}`.
        pub routing_key: Template,
        /// The message body; default: the event as JSON.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub payload: Option<Template>,
        /// Ask the broker to return messages no queue takes (they go to `<id>.errors`).
        #[serde(default = "default_true")]
        pub mandatory: bool,
        /// Persistent messages (delivery mode 2) survive a broker restart.
        #[serde(default = "default_true")]
        pub persistent: bool,
        /// How long to wait for the broker's confirm; a timeout is retried.
        #[serde(default = "default_timeout")]
        pub timeout: Duration,
        /// Certificates for `amqps://`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub tls: Option<TlsConfig>,
    }
}

fn default_true() -> bool {
    true
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

impl ActionComponent for AmqpPublishConfig {
    fn buffer(&self) -> crate::buffers::BufferConfig {
        self.policies().buffer()
    }

    fn warnings(&self) -> Vec<FieldProblem> {
        self.policies().warnings()
    }

    fn check(&self) -> Vec<FieldProblem> {
        let mut problems = self.policies().check();
        problems.extend(crate::broker::amqp::check_url(&self.url, self.tls.as_ref()));
        problems
    }

    fn build(&self, cx: ActionContext) -> anyhow::Result<ComponentTask> {
        let tls = crate::broker::amqp::tls(self.tls.as_ref())?;
        let notifier = AmqpPublish {
            publisher: Publisher::new(self.url.clone(), tls, self.timeout),
            config: self.clone(),
        };
        runner::spawn(cx, self.policies(), notifier)
    }
}

struct AmqpPublish {
    config: AmqpPublishConfig,
    /// The connection and its confirming channel, opened on first use and again after a
    /// failure; one message at a time (the runner sends one by one).
    publisher: Publisher,
}

pub struct Message {
    routing_key: String,
    payload: Vec<u8>,
}

impl AmqpPublish {
    async fn publish(&self, message: &Message, key: &IdempotencyKey) -> Result<(), SendError> {
        let channel = self
            .publisher
            .channel()
            .await
            .map_err(SendError::Transient)?;
        let mut properties = BasicProperties::default().with_message_id(key.as_str().into());
        if self.config.persistent {
            properties = properties.with_delivery_mode(2);
        }
        let options = BasicPublishOptions {
            mandatory: self.config.mandatory,
            ..BasicPublishOptions::default()
        };
        let confirm = channel
            .basic_publish(
                self.config.exchange.as_str().into(),
                message.routing_key.as_str().into(),
                options,
                &message.payload,
                properties,
            )
            .await
            .map_err(|err| SendError::Transient(format!("AMQP: {err}")))?;
        match confirmed(confirm, self.config.timeout).await {
            Confirmed::Stored => Ok(()),
            Confirmed::Returned(why) => Err(SendError::Permanent(format!(
                "the broker returned the message for `{}` on exchange `{}`: {why}",
                message.routing_key, self.config.exchange
            ))),
            Confirmed::NotNow(why) => Err(SendError::Transient(why)),
        }
    }
}

impl Notifier for AmqpPublish {
    type Message = Message;

    fn prepare(&self, event: &Event) -> Result<Message, String> {
        let view = event.view();
        let routing_key = runner::render(&self.config.routing_key, &view, "routing_key")?;
        if routing_key.len() > 255 {
            return Err(format!(
                "the routing key is {} bytes long; AMQP allows 255",
                routing_key.len()
            ));
        }
        let payload = runner::body_or_event(self.config.payload.as_ref(), event, &view, "payload")?;
        Ok(Message {
            routing_key,
            payload,
        })
    }

    fn secrets(&self, _message: &Message) -> Vec<String> {
        crate::redact::url_secrets(self.config.url.expose_str())
    }

    fn identity(&self, message: &Message, hasher: &mut dyn Hasher) {
        let mut hasher = hasher;
        message.routing_key.hash(&mut hasher);
        message.payload.hash(&mut hasher);
    }

    async fn send(&self, message: &Message, key: &IdempotencyKey) -> Result<(), SendError> {
        let result = self.publish(message, key).await;
        if let Err(SendError::Transient(_)) = &result {
            // Start over on a new connection next time.
            self.publisher.reset().await;
        }
        result
    }
}
