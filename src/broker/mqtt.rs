//! MQTT 3.1.1 publishing, shared by the `mqtt` sink and the `mqtt_publish` action: the
//! broker's address from a URL, the connection options (credentials, TLS), and a
//! [`Publisher`] whose publishes report when the broker acknowledged them (PUBACK).

use std::sync::{Arc, Mutex};

use rumqttc::{AsyncClient, EventLoop, MqttOptions, PublishNotice, PublishOptions};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::credentials::CredentialFields;
use crate::config::{Duration, RedactedUrl};
use crate::telemetry::events::{ComponentError, ErrorType, Stage};
use crate::telemetry::{ComponentTelemetry, InternalEvent};
use crate::tls::TlsConfig;

/// Host, port, and whether the connection uses TLS, from an `mqtt://` or `mqtts://` URL.
pub fn broker_address(url: &str) -> Result<(String, u16, bool), String> {
    let (rest, secure) = match (url.strip_prefix("mqtt://"), url.strip_prefix("mqtts://")) {
        (Some(rest), _) => (rest, false),
        (_, Some(rest)) => (rest, true),
        _ => return Err("expected an `mqtt://host:port` or `mqtts://host:port` URL".into()),
    };
    let (host, port) = match rest.trim_end_matches('/').rsplit_once(':') {
        Some((host, port)) => (
            host,
            port.parse::<u16>()
                .map_err(|_| format!("`{port}` is not a port"))?,
        ),
        None => (rest.trim_end_matches('/'), if secure { 8883 } else { 1883 }),
    };
    if host.is_empty() {
        return Err("the URL has no host".into());
    }
    Ok((host.to_owned(), port, secure))
}

/// What a publishing connection is made of.
pub struct PublisherSettings<'a> {
    pub url: &'a RedactedUrl,
    pub client_id: String,
    pub credentials: CredentialFields<'a>,
    pub tls: Option<&'a TlsConfig>,
    /// QoS 1 publishes awaiting their PUBACK at once.
    pub max_inflight: u16,
}

/// A client whose connection is polled by a task of its own (started with the first
/// publish: the build runs outside a task), reconnecting after every failure.
pub struct Publisher {
    client: AsyncClient,
    eventloop: Mutex<Option<EventLoop>>,
    stop: CancellationToken,
    /// Stops the event loop when the publisher is gone.
    _stop_when_dropped: DropGuard,
    telemetry: ComponentTelemetry,
    /// The last connection failure, until the next poll succeeds.
    connection_error: Arc<Mutex<Option<String>>>,
    url: String,
}

impl Publisher {
    /// The client, not yet connected; the password file is read now, so a missing one
    /// fails the start with its name.
    pub fn new(
        settings: PublisherSettings<'_>,
        telemetry: ComponentTelemetry,
    ) -> anyhow::Result<Self> {
        let (host, port, secure) =
            broker_address(settings.url.expose_str()).map_err(anyhow::Error::msg)?;
        let mut options = MqttOptions::new(settings.client_id, (host, port));
        options
            .set_keep_alive(30)
            .set_clean_session(true)
            .set_inflight(settings.max_inflight.max(1));
        if let Some(credentials) = settings.credentials.resolve()? {
            credentials.apply_v4(&mut options);
        }
        if secure {
            let tls = settings.tls.cloned().unwrap_or_default().client_config()?;
            options.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(tls),
            ));
        }
        let capacity = usize::from(settings.max_inflight).max(64);
        let (client, eventloop) = AsyncClient::builder(options).capacity(capacity).build();
        let stop = CancellationToken::new();
        Ok(Self {
            client,
            eventloop: Mutex::new(Some(eventloop)),
            stop: stop.clone(),
            _stop_when_dropped: stop.drop_guard(),
            telemetry,
            connection_error: Default::default(),
            url: settings.url.redacted(),
        })
    }

    /// Queues one publish; the notice resolves when the broker acknowledged it (QoS 1).
    pub async fn publish(
        &self,
        topic: &str,
        payload: Vec<u8>,
        options: PublishOptions,
    ) -> Result<PublishNotice, String> {
        self.start_eventloop();
        self.client
            .publish_tracked(topic.to_owned(), payload, options)
            .await
            .map_err(|err| format!("cannot queue the publish to `{topic}`: {err}"))
    }

    /// Waits up to `timeout` for the broker's acknowledgement of a publish to `topic`.
    pub async fn acknowledged(
        &self,
        notice: PublishNotice,
        topic: &str,
        timeout: Duration,
    ) -> Result<(), String> {
        match tokio::time::timeout(timeout.get(), notice.wait_completion_async()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(format!("publish to `{topic}` failed: {err}")),
            Err(_) => Err(format!(
                "the broker did not acknowledge the publish to `{topic}` within {timeout}{}",
                self.connection_error()
            )),
        }
    }

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
        let url = self.url.clone();
        let last_error = Arc::clone(&self.connection_error);
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    _ = stop.cancelled() => return,
                    event = eventloop.poll() => event,
                };
                let failed = match event {
                    Ok(_) => None,
                    // The client is gone: its component has finished.
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

/// Whether `topic` can be published to: not empty, no wildcard.
pub fn check_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() || topic.contains(['+', '#']) {
        return Err(format!(
            "`{topic}` is not a topic to publish to (empty, or with a wildcard)"
        ));
    }
    Ok(())
}
