//! `mqtt`: forwards each event to an MQTT broker as one QoS 1 publish: an event is
//! acknowledged upstream only once the broker acknowledged its publish (PUBACK; see
//! [`super::publish`]). The topic is a template over the event.
//!
//! Unlike the `mqtt_publish` action (a command or notification per event, under throttle
//! and dedupe policies), this sink forwards the stream itself: every event, nothing skipped.
//! The client id defaults to one naming this weir's instance, so two instances running one
//! YAML never take each other's connection over.

use futures::future::join_all;
use rumqttc::{PublishOptions, QoS};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::publish::{Options, Publish};
use super::retry::RetryConfig;
use super::{SinkComponent, SinkContext};
use crate::broker::CredentialFields;
use crate::broker::mqtt::{Publisher, PublisherSettings, broker_address, check_topic};
use crate::buffers::{BufferConfig, BufferType};
use crate::codecs::EncodingConfig;
use crate::config::{Duration, FieldProblem, RedactedUrl, Sensitive};
use crate::event::Event;
use crate::template::Template;
use crate::tls::TlsConfig;
use crate::topology::ComponentTask;

/// Publishes every event over MQTT at QoS 1, acknowledged once the broker acknowledged it.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MqttSinkConfig {
    /// e.g. `mqtt://127.0.0.1:1883`, or `mqtts://broker:8883` (TLS).
    pub url: RedactedUrl,
    /// The topic, a template such as `plant/{{ device_id }}/readings`.
    pub topic: Template,
    /// How each event becomes a payload: a reading with `device_id`, the fields and
    /// `event_time` (RFC 3339), as `json` (the default) or `msgpack`.
    #[serde(default)]
    pub encoding: EncodingConfig,
    #[serde(default)]
    pub retain: bool,
    /// Default: `weir-<instance id>-<component id>`, so instances never share one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The user name weir connects as, for brokers that want credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The password, e.g. `${MQTT_PASSWORD}`; never logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Sensitive>,
    /// A file holding the password (its trailing newline is not part of it), read when
    /// the sink starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<std::path::PathBuf>,
    /// Publishes awaiting the broker's acknowledgement at once.
    #[serde(default = "default_max_inflight")]
    pub max_inflight: u16,
    /// How long to wait for the broker's acknowledgements of a batch; then it is
    /// published again.
    #[serde(default = "default_timeout")]
    pub timeout: Duration,
    /// The most events published before waiting for their acknowledgements.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// Certificates for `mqtts://`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    #[serde(default)]
    pub buffer: BufferConfig,
    #[serde(default)]
    pub retry: RetryConfig,
}

fn default_max_inflight() -> u16 {
    100
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_max_batch() -> usize {
    500
}

impl SinkComponent for MqttSinkConfig {
    fn disk_buffer(&self) -> bool {
        self.buffer.is_disk(BufferType::Memory)
    }

    fn check(&self) -> Vec<FieldProblem> {
        let mut problems = Vec::new();
        match broker_address(self.url.expose_str()) {
            Err(message) => problems.push(FieldProblem::at(["url"], message)),
            Ok((_, _, false)) if self.tls.is_some() => {
                problems.push(FieldProblem::at(["tls"], "`tls` needs an `mqtts://` URL"))
            }
            Ok(_) => {}
        }
        if self.topic.source().trim().is_empty() {
            problems.push(FieldProblem::at(["topic"], "expected a topic template"));
        }
        if self.max_inflight == 0 {
            problems.push(FieldProblem::at(["max_inflight"], "expected at least 1"));
        }
        problems.extend(self.credentials().check());
        problems.extend(self.options().check());
        problems
    }

    fn build(&self, cx: SinkContext) -> anyhow::Result<ComponentTask> {
        let client_id = match &self.client_id {
            Some(id) => id.clone(),
            None => format!("weir-{}-{}", cx.instance_id.get()?, cx.id),
        };
        let settings = PublisherSettings {
            url: &self.url,
            client_id,
            credentials: self.credentials(),
            tls: self.tls.as_ref(),
            max_inflight: self.max_inflight,
        };
        let publisher = MqttPublisher {
            publisher: Publisher::new(settings, cx.telemetry.clone())?,
            config: self.clone(),
        };
        Ok(self.options().task(cx, publisher))
    }
}

impl MqttSinkConfig {
    fn options(&self) -> Options<'_> {
        Options {
            encoding: &self.encoding,
            max_batch: self.max_batch,
            timeout: self.timeout,
            buffer: self.buffer,
            retry: self.retry,
        }
    }

    fn credentials(&self) -> CredentialFields<'_> {
        CredentialFields {
            username: self.username.as_deref(),
            password: self.password.as_ref(),
            password_file: self.password_file.as_deref(),
        }
    }
}

struct MqttPublisher {
    publisher: Publisher,
    config: MqttSinkConfig,
}

/// One event's publish.
struct Message {
    topic: String,
    payload: Vec<u8>,
}

impl Publish for MqttPublisher {
    type Message = Message;

    fn prepare(&self, event: &Event) -> Result<Message, String> {
        let topic = self
            .config
            .topic
            .render(&event.view())
            .map_err(|err| format!("topic `{}` failed: {err}", self.config.topic.source()))?;
        check_topic(&topic)?;
        let payload = self.config.encoding.encode(event)?;
        Ok(Message { topic, payload })
    }

    fn bytes(message: &Message) -> usize {
        message.payload.len()
    }

    async fn publish(&self, messages: &[&Message]) -> Vec<Result<(), String>> {
        let options = PublishOptions::new(QoS::AtLeastOnce).retain(self.config.retain);
        let timeout = self.config.timeout;
        // Queue every publish, then wait for the acknowledgements together. Queueing waits
        // for room in the client's queue, which a connection that is down does not drain:
        // that wait is bounded by the timeout too.
        let mut notices = Vec::with_capacity(messages.len());
        let mut stuck: Option<String> = None;
        for message in messages {
            // Once one publish could not be queued, the rest would wait as long: not tried.
            if let Some(why) = &stuck {
                notices.push(Err(why.clone()));
                continue;
            }
            let queued = tokio::time::timeout(
                timeout.get(),
                self.publisher
                    .publish(&message.topic, message.payload.clone(), options),
            )
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "the publish to `{}` was not taken within {timeout}: is the broker down?",
                    message.topic
                ))
            });
            if let Err(why) = &queued {
                stuck = Some(why.clone());
            }
            notices.push(queued);
        }
        join_all(
            notices
                .into_iter()
                .zip(messages)
                .map(|(notice, message)| async move {
                    self.publisher
                        .acknowledged(notice?, &message.topic, timeout)
                        .await
                }),
        )
        .await
    }

    /// Dropping the client ends its connection.
    async fn close(self) {}
}
