//! `mqtt_publish`: a cloud-to-device command on a templated topic, QoS 1 by default: a
//! notification counts as sent when the broker acknowledged it (PUBACK).

use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use rumqttc::{AsyncClient, EventLoop, MqttOptions, PublishOptions, QoS};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::idempotency::IdempotencyKey;
use super::policy::action_config;
use super::runner::{self, Notifier, SendError};
use super::{ActionComponent, ActionContext};
use crate::config::{Duration, FieldProblem, RedactedUrl};
use crate::event::Event;
use crate::sources::CredentialFields;
use crate::telemetry::events::{ComponentError, ErrorType, Stage};
use crate::telemetry::{ComponentTelemetry, InternalEvent};
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
        match crate::sources::broker_address(self.url.expose_str()) {
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
        let (host, port, secure) =
            crate::sources::broker_address(self.url.expose_str()).map_err(anyhow::Error::msg)?;
        let client_id = self
            .client_id
            .clone()
            .unwrap_or_else(|| format!("weir-{}", cx.id));
        let mut options = MqttOptions::new(client_id, (host, port));
        options.set_keep_alive(30).set_clean_session(true);
        // The password file is read now, so a missing one fails the start with its name.
        if let Some(credentials) = self.credentials().resolve()? {
            credentials.apply_v4(&mut options);
        }
        if secure {
            let tls = self.tls.clone().unwrap_or_default().client_config()?;
            options.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(tls),
            ));
        }
        let (client, eventloop) = AsyncClient::builder(options).capacity(64).build();
        let stop = CancellationToken::new();
        let notifier = MqttPublish {
            client,
            eventloop: Mutex::new(Some(eventloop)),
            stop: stop.clone(),
            _stop_when_dropped: stop.drop_guard(),
            telemetry: cx.telemetry.clone(),
            connection_error: Default::default(),
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
    client: AsyncClient,
    /// Polled by a task started with the first publish (the build runs outside a task).
    eventloop: Mutex<Option<EventLoop>>,
    stop: CancellationToken,
    /// Stops the event loop when the action is gone.
    _stop_when_dropped: DropGuard,
    telemetry: ComponentTelemetry,
    /// The last connection failure, until the next poll succeeds.
    connection_error: std::sync::Arc<Mutex<Option<String>>>,
    config: MqttPublishConfig,
}

/// One rendered message.
pub struct Message {
    topic: String,
    payload: Vec<u8>,
}

impl MqttPublish {
    /// Starts polling the connection, once: it connects, reconnects and receives acks.
    fn start_eventloop(&self) {
        let taken = self
            .eventloop
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some(mut eventloop) = taken else { return };
        let stop = self.stop.clone();
        let telemetry = self.telemetry.clone();
        let url = self.config.url.redacted();
        let last_error = std::sync::Arc::clone(&self.connection_error);
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    _ = stop.cancelled() => return,
                    event = eventloop.poll() => event,
                };
                let failed = match event {
                    Ok(_) => None,
                    // The client is gone: the action has finished.
                    Err(rumqttc::ConnectionError::RequestsDone) => return,
                    Err(err) => Some(err),
                };
                *last_error.lock().unwrap_or_else(|p| p.into_inner()) =
                    failed.as_ref().map(connection_failure);
                if let Some(err) = failed {
                    // Publishes waiting meanwhile time out, are retried, and say why.
                    ComponentError {
                        error_type: match refused_credentials(&err) {
                            true => ErrorType::Unauthorized,
                            false => ErrorType::Io,
                        },
                        stage: Stage::Sending,
                        message: &format!(
                            "MQTT connection to {url} failed: {}; reconnecting",
                            connection_failure(&err)
                        ),
                        count: 1,
                    }
                    .emit(&telemetry);
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
            }
        });
    }

    /// Why the connection is down right now, for a publish that timed out meanwhile.
    fn connection_error(&self) -> String {
        match &*self
            .connection_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
        {
            Some(err) => format!(" (the connection failed: {err})"),
            None => String::new(),
        }
    }
}

/// The broker refused the user name and password, or this user.
fn refused_credentials(err: &rumqttc::ConnectionError) -> bool {
    use rumqttc::ConnectReturnCode::{BadUserNamePassword, NotAuthorized};
    matches!(
        err,
        rumqttc::ConnectionError::ConnectionRefused(BadUserNamePassword | NotAuthorized)
    )
}

fn connection_failure(err: &rumqttc::ConnectionError) -> String {
    match refused_credentials(err) {
        true => format!("{err} (not authorized: check `username` and `password`)"),
        false => err.to_string(),
    }
}

impl Notifier for MqttPublish {
    type Message = Message;

    fn prepare(&self, event: &Event) -> Result<Message, String> {
        let view = event.view();
        let topic = runner::render(&self.config.topic, &view, "topic")?;
        if topic.is_empty() || topic.contains(['+', '#']) {
            return Err(format!(
                "`{topic}` is not a topic to publish to (empty, or with a wildcard)"
            ));
        }
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
        self.start_eventloop();
        let qos = match self.config.qos {
            0 => QoS::AtMostOnce,
            _ => QoS::AtLeastOnce,
        };
        let options = PublishOptions::new(qos).retain(self.config.retain);
        let notice = self
            .client
            .publish_tracked(message.topic.clone(), message.payload.clone(), options)
            .await
            .map_err(|err| SendError::Transient(format!("cannot queue the publish: {err}")))?;
        match tokio::time::timeout(self.config.timeout.get(), notice.wait_completion_async()).await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(SendError::Transient(format!(
                "publish to `{}` failed: {err}",
                message.topic
            ))),
            Err(_) => Err(SendError::Transient(format!(
                "the broker did not acknowledge the publish to `{}` within {}{}",
                message.topic,
                self.config.timeout,
                self.connection_error()
            ))),
        }
    }
}
