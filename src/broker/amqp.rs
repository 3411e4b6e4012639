//! AMQP 0-9-1 (RabbitMQ) connections: TLS settings, the URL check, and a publisher with
//! publisher confirms, shared by the `amqp` source, the `amqp` sink and the `amqp_publish`
//! action.

use lapin::options::ConfirmSelectOptions;
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::{Channel, Confirmation, Connection, ConnectionProperties, PublisherConfirm};

use crate::config::{Duration, FieldProblem, RedactedUrl};
use crate::tls::TlsConfig;

/// The problems of an `amqp://`/`amqps://` URL and its `tls` option, for a `check`.
pub fn check_url(url: &RedactedUrl, tls: Option<&TlsConfig>) -> Vec<FieldProblem> {
    let url = url.expose_str();
    if !url.starts_with("amqp://") && !url.starts_with("amqps://") {
        return vec![FieldProblem::at(
            ["url"],
            "expected an `amqp://` or `amqps://` URL",
        )];
    }
    if tls.is_some() && !url.starts_with("amqps://") {
        return vec![FieldProblem::at(["tls"], "`tls` needs an `amqps://` URL")];
    }
    Vec::new()
}

/// lapin's TLS settings from weir's: PEM files read now, so a bad file fails the build.
pub fn tls(tls: Option<&TlsConfig>) -> anyhow::Result<OwnedTLSConfig> {
    use anyhow::Context as _;
    let Some(tls) = tls else {
        return Ok(OwnedTLSConfig::default());
    };
    let read = |path: &std::path::Path| {
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
    };
    let identity = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => Some(OwnedIdentity::PKCS8 {
            pem: read(cert)?,
            key: read(key)?,
        }),
        (None, None) => None,
        _ => anyhow::bail!("mutual TLS needs both `cert_file` and `key_file`"),
    };
    let cert_chain = match &tls.ca_file {
        Some(ca) => Some(
            String::from_utf8(read(ca)?)
                .with_context(|| format!("{} is not PEM text", ca.display()))?,
        ),
        None => None,
    };
    Ok(OwnedTLSConfig {
        identity,
        cert_chain,
    })
}

/// Opens a connection to `url`.
pub async fn connect(url: &RedactedUrl, tls: &OwnedTLSConfig) -> lapin::Result<Connection> {
    crate::tls::install_default_provider();
    Connection::connect_with_config(
        url.expose_str(),
        ConnectionProperties::default(),
        tls.clone(),
        lapin::runtime::default_runtime()?,
    )
    .await
}

/// One connection and a channel in confirm mode on it, opened on first use and again after
/// [`Publisher::reset`] or a lost connection.
pub struct Publisher {
    url: RedactedUrl,
    tls: OwnedTLSConfig,
    /// The longest a connection may take to open (a host that drops packets would
    /// otherwise hold a publish for the system's TCP timeout, minutes).
    timeout: Duration,
    open: tokio::sync::Mutex<Option<(Connection, Channel)>>,
}

impl Publisher {
    pub fn new(url: RedactedUrl, tls: OwnedTLSConfig, timeout: Duration) -> Self {
        Self {
            url,
            tls,
            timeout,
            open: tokio::sync::Mutex::new(None),
        }
    }

    /// The confirming channel, connecting first if there is none or its connection is gone.
    pub async fn channel(&self) -> Result<Channel, String> {
        let mut open = self.open.lock().await;
        if let Some((connection, channel)) = open.as_mut()
            && connection.status().connected()
        {
            if channel.status().connected() {
                return Ok(channel.clone());
            }
            // The broker closed the channel (a publish to a missing exchange does): a new
            // one on the same connection.
            if let Ok(new) = confirming_channel(connection).await {
                *channel = new.clone();
                return Ok(new);
            }
        }
        if let Some((connection, _)) = open.take() {
            close_connection(connection, "weir reconnects").await;
        }
        let opening = async {
            let connection = connect(&self.url, &self.tls).await?;
            let channel = confirming_channel(&connection).await?;
            lapin::Result::Ok((connection, channel))
        };
        let cannot = |why: String| {
            format!(
                "cannot connect to the AMQP broker at {}: {why}",
                self.url.redacted()
            )
        };
        let opened = tokio::time::timeout(self.timeout.get(), opening)
            .await
            .map_err(|_| cannot(format!("no answer within {}", self.timeout)))?
            .map_err(|err| cannot(err.to_string()))?;
        let channel = opened.1.clone();
        *open = Some(opened);
        Ok(channel)
    }

    /// Starts over on a new connection next time (after a failure whose cause is unknown:
    /// a channel the broker closed, a confirm that never came).
    pub async fn reset(&self) {
        if let Some((connection, _)) = self.open.lock().await.take() {
            close_connection(connection, "weir reconnects").await;
        }
    }

    /// Closes the connection (the component is stopping).
    pub async fn close(&self) {
        if let Some((connection, _)) = self.open.lock().await.take() {
            close_connection(connection, "weir is stopping").await;
        }
    }
}

/// Closes `connection`, waiting a little for the broker's reply (a dead peer sends none).
async fn close_connection(connection: Connection, why: &str) {
    let closing = connection.close(200, why.into());
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), closing).await;
}

async fn confirming_channel(connection: &Connection) -> lapin::Result<Channel> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// What the broker made of one published message.
#[derive(Debug, PartialEq)]
pub enum Confirmed {
    /// The broker took responsibility for it (routed to every queue that takes it, and
    /// persisted if persistent).
    Stored,
    /// `mandatory` and no queue took it: the broker returned it.
    Returned(String),
    /// The broker refused it (a nack), or the channel failed before confirming: may pass
    /// on another attempt.
    NotNow(String),
}

/// Waits up to `timeout` for the broker's confirm of one publish.
pub async fn confirmed(confirm: PublisherConfirm, timeout: Duration) -> Confirmed {
    match tokio::time::timeout(timeout.get(), confirm).await {
        Err(_) => Confirmed::NotNow(format!("the broker did not confirm within {timeout}")),
        Ok(Err(err)) => Confirmed::NotNow(format!("AMQP: {err}")),
        Ok(Ok(Confirmation::Ack(None) | Confirmation::NotRequested)) => Confirmed::Stored,
        Ok(Ok(Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)))) => {
            Confirmed::Returned(format!("{} {}", returned.reply_code, returned.reply_text))
        }
        Ok(Ok(Confirmation::Nack(None))) => {
            Confirmed::NotNow("the broker refused (nacked) the message".into())
        }
    }
}
