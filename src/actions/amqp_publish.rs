//! `amqp_publish`: one message per notification to an exchange, with publisher confirms:
//! a notification counts as sent when the broker confirmed it. A message the broker
//! returns as unroutable (`mandatory`) fails for good; a nack or a lost connection is
//! retried (on a new connection).

use std::hash::{Hash, Hasher};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::tcp::OwnedTLSConfig;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};

use super::idempotency::IdempotencyKey;
use super::policy::action_config;
use super::runner::{self, Notifier, SendError};
use super::{ActionComponent, ActionContext};
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
        let url = self.url.expose_str();
        if !url.starts_with("amqp://") && !url.starts_with("amqps://") {
            problems.push(FieldProblem::at(
                ["url"],
                "expected an `amqp://` or `amqps://` URL",
            ));
        } else if self.tls.is_some() && !url.starts_with("amqps://") {
            problems.push(FieldProblem::at(["tls"], "`tls` needs an `amqps://` URL"));
        }
        problems
    }

    fn build(&self, cx: ActionContext) -> anyhow::Result<ComponentTask> {
        let notifier = AmqpPublish {
            tls: crate::sources::amqp_tls(self.tls.as_ref())?,
            config: self.clone(),
            channel: tokio::sync::Mutex::new(None),
        };
        runner::spawn(cx, self.policies(), notifier)
    }
}

struct AmqpPublish {
    config: AmqpPublishConfig,
    tls: OwnedTLSConfig,
    /// The open connection and its confirming channel; opened on first use and again
    /// after a failure.
    channel: tokio::sync::Mutex<Option<(Connection, Channel)>>,
}

pub struct Message {
    routing_key: String,
    payload: Vec<u8>,
}

impl AmqpPublish {
    async fn connect(&self) -> lapin::Result<(Connection, Channel)> {
        crate::tls::install_default_provider();
        let connection = Connection::connect_with_config(
            self.config.url.expose_str(),
            ConnectionProperties::default(),
            self.tls.clone(),
            lapin::runtime::default_runtime()?,
        )
        .await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok((connection, channel))
    }

    async fn publish(
        &self,
        channel: &Channel,
        message: &Message,
        key: &IdempotencyKey,
    ) -> Result<(), SendError> {
        let transient = |err: lapin::Error| SendError::Transient(format!("AMQP: {err}"));
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
            .map_err(transient)?;
        match tokio::time::timeout(self.config.timeout.get(), confirm).await {
            Err(_) => Err(SendError::Transient(format!(
                "the broker did not confirm within {}",
                self.config.timeout
            ))),
            Ok(Err(err)) => Err(transient(err)),
            Ok(Ok(Confirmation::Ack(None) | Confirmation::NotRequested)) => Ok(()),
            Ok(Ok(Confirmation::Ack(Some(returned)))) => Err(SendError::Permanent(format!(
                "the broker returned the message for `{}` on exchange `{}`: {} {}",
                message.routing_key, self.config.exchange, returned.reply_code, returned.reply_text
            ))),
            Ok(Ok(Confirmation::Nack(_))) => Err(SendError::Transient(
                "the broker refused (nacked) the message".into(),
            )),
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
        let mut slot = self.channel.lock().await;
        if slot.as_ref().is_none_or(|(c, _)| !c.status().connected()) {
            let opened = self.connect().await.map_err(|err| {
                SendError::Transient(format!("cannot connect to the AMQP broker: {err}"))
            })?;
            *slot = Some(opened);
        }
        let Some((_, channel)) = slot.as_ref() else {
            return Err(SendError::Transient("no AMQP channel".into()));
        };
        let result = self.publish(channel, message, key).await;
        if let Err(SendError::Transient(_)) = &result {
            // Start over on a new connection next time.
            *slot = None;
        }
        result
    }
}
