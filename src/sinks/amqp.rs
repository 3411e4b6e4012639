//! `amqp`: forwards each event to a RabbitMQ exchange as one persistent message, with
//! publisher confirms: an event is acknowledged upstream only once the broker confirmed
//! its message (see [`super::publish`]). The routing key defaults to the device id, which
//! is what a consistent-hash exchange (the `amqp` source's `partition`) hashes, so each
//! device's readings reach one processing instance.
//!
//! Unlike the `amqp_publish` action (a notification per event, under throttle and dedupe
//! policies), this sink forwards the stream itself: every event, in order, nothing skipped.

use futures::future::join_all;
use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::publish::{Options, Publish};
use super::retry::RetryConfig;
use super::{SinkComponent, SinkContext};
use crate::broker::amqp::{Confirmed, Publisher, confirmed};
use crate::buffers::{BufferConfig, BufferType};
use crate::codecs::EncodingConfig;
use crate::config::{Duration, FieldProblem, RedactedUrl};
use crate::event::Event;
use crate::template::Template;
use crate::tls::TlsConfig;
use crate::topology::ComponentTask;

/// Publishes every event to an AMQP exchange, acknowledged once the broker confirmed it.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AmqpSinkConfig {
    /// e.g. `amqp://weir:${AMQP_PASSWORD}@rabbit:5672/%2f`, or `amqps://…` (TLS).
    pub url: RedactedUrl,
    /// The exchange, e.g. the consistent-hash exchange of a `partition`; default: the
    /// default exchange (the routing key names a queue).
    #[serde(default)]
    pub exchange: String,
    /// The routing key, a template; default `{{ device_id }}`.
    #[serde(default = "default_routing_key")]
    pub routing_key: Template,
    /// How each event becomes a message body: a reading with `device_id`, the fields and
    /// `event_time` (RFC 3339), as `json` (the default) or `msgpack`.
    #[serde(default)]
    pub encoding: EncodingConfig,
    /// Persistent messages (delivery mode 2): a durable queue keeps them across a broker
    /// restart.
    #[serde(default = "default_true")]
    pub persistent: bool,
    /// Ask the broker to return a message no queue takes; it is then published again
    /// (after a backoff) until a queue is bound. `false`: the broker drops it, confirmed.
    #[serde(default = "default_true")]
    pub mandatory: bool,
    /// How long to wait for the broker's confirms of a batch; then it is published again.
    #[serde(default = "default_timeout")]
    pub timeout: Duration,
    /// The most events published before waiting for their confirms.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// Certificates for `amqps://`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    #[serde(default)]
    pub buffer: BufferConfig,
    #[serde(default)]
    pub retry: RetryConfig,
}

fn default_routing_key() -> Template {
    // A constant template compiles.
    Template::compile("{{ device_id }}").unwrap_or_else(|_| unreachable!())
}

fn default_true() -> bool {
    true
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_max_batch() -> usize {
    500
}

/// AMQP's limit on a routing key (a short string).
const MAX_ROUTING_KEY: usize = 255;

impl SinkComponent for AmqpSinkConfig {
    fn disk_buffer(&self) -> bool {
        self.buffer.is_disk(BufferType::Memory)
    }

    fn check(&self) -> Vec<FieldProblem> {
        let mut problems = crate::broker::amqp::check_url(&self.url, self.tls.as_ref());
        problems.extend(self.options().check());
        problems
    }

    fn build(&self, cx: SinkContext) -> anyhow::Result<ComponentTask> {
        // Certificates are read now, so a bad file fails the start (or rolls a reload back).
        let tls = crate::broker::amqp::tls(self.tls.as_ref())?;
        let publisher = AmqpPublisher {
            publisher: Publisher::new(self.url.clone(), tls, self.timeout),
            config: self.clone(),
        };
        Ok(self.options().task(cx, publisher))
    }
}

impl AmqpSinkConfig {
    fn options(&self) -> Options<'_> {
        Options {
            encoding: &self.encoding,
            max_batch: self.max_batch,
            timeout: self.timeout,
            buffer: self.buffer,
            retry: self.retry,
        }
    }
}

struct AmqpPublisher {
    publisher: Publisher,
    config: AmqpSinkConfig,
}

/// One event's message.
struct Message {
    routing_key: String,
    payload: Vec<u8>,
}

impl Publish for AmqpPublisher {
    type Message = Message;

    fn prepare(&self, event: &Event) -> Result<Message, String> {
        let routing_key = self
            .config
            .routing_key
            .render(&event.view())
            .map_err(|err| {
                format!(
                    "routing_key `{}` failed: {err}",
                    self.config.routing_key.source()
                )
            })?;
        if routing_key.len() > MAX_ROUTING_KEY {
            return Err(format!(
                "the routing key is {} bytes long; AMQP allows {MAX_ROUTING_KEY}",
                routing_key.len()
            ));
        }
        let payload = self.config.encoding.encode(event)?;
        Ok(Message {
            routing_key,
            payload,
        })
    }

    fn bytes(message: &Message) -> usize {
        message.payload.len()
    }

    async fn publish(&self, messages: &[&Message]) -> Vec<Result<(), String>> {
        let channel = match self.publisher.channel().await {
            Ok(channel) => channel,
            Err(why) => return vec![Err(why); messages.len()],
        };
        let mut properties = BasicProperties::default()
            .with_content_type(self.config.encoding.content_type().into());
        if self.config.persistent {
            properties = properties.with_delivery_mode(2);
        }
        let options = BasicPublishOptions {
            mandatory: self.config.mandatory,
            ..BasicPublishOptions::default()
        };
        // Every message goes out before the first confirm is awaited: the broker confirms
        // a batch about as fast as one message.
        let mut confirms = Vec::with_capacity(messages.len());
        let mut refused = None;
        for message in messages {
            match channel
                .basic_publish(
                    self.config.exchange.as_str().into(),
                    message.routing_key.as_str().into(),
                    options,
                    &message.payload,
                    properties.clone(),
                )
                .await
            {
                Ok(confirm) => confirms.push(confirm),
                Err(err) => {
                    refused = Some(format!("AMQP: {err}"));
                    break;
                }
            }
        }
        let timeout = self.config.timeout;
        let mut start_over = refused.is_some();
        let mut outcomes: Vec<Result<(), String>> = join_all(
            confirms
                .into_iter()
                .map(|confirm| confirmed(confirm, timeout)),
        )
        .await
        .into_iter()
        .zip(messages)
        .map(|(confirmed, message)| match confirmed {
            Confirmed::Stored => Ok(()),
            // Not the connection's fault: the exchange has no queue for this key.
            Confirmed::Returned(why) => Err(format!(
                "no queue took the message for `{}` on exchange `{}` (is a queue \
                         bound?): {why}",
                message.routing_key, self.config.exchange
            )),
            Confirmed::NotNow(why) => {
                start_over = true;
                Err(why)
            }
        })
        .collect();
        let published = outcomes.len();
        if let Some(why) = refused {
            outcomes.extend(std::iter::repeat_n(Err(why), messages.len() - published));
        }
        if start_over {
            // A closed channel (the exchange is missing), a lost connection, or confirms
            // that never came: the next attempt goes out on a new connection.
            self.publisher.reset().await;
        }
        outcomes
    }

    async fn close(self) {
        self.publisher.close().await;
    }
}
