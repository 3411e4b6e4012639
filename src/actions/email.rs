//! `email`: an e-mail per notification over SMTP, STARTTLS by default (rustls), with a
//! templated subject and body. SMTP 5xx answers fail for good; 4xx answers, timeouts and
//! lost connections are retried.

use std::hash::{Hash, Hasher};
use std::path::PathBuf;

use lettre::message::{Mailbox, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::idempotency::IdempotencyKey;
use super::policy::action_config;
use super::runner::{self, Notifier, SendError};
use super::{ActionComponent, ActionContext};
use crate::config::{Duration, FieldProblem, Sensitive};
use crate::event::Event;
use crate::template::Template;
use crate::topology::ComponentTask;

action_config! {
    /// Sends an e-mail per event.
    pub struct EmailConfig {
        /// The SMTP server's host name (also the name its certificate must carry).
        pub host: String,
        /// Default: 587 with `starttls`/`opportunistic`, 465 with `tls`, 25 with `none`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub port: Option<u16>,
        #[serde(default)]
        pub security: SmtpSecurity,
        /// PEM CA certificates to trust the server with; default: the system's roots.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub ca_file: Option<PathBuf>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub username: Option<String>,
        /// e.g. `${SMTP_PASSWORD}`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub password: Option<Sensitive>,
        /// e.g. `weir <alarms@example.com>`.
        pub from: String,
        /// Recipients; each may be a template, e.g. `{{ device.owner_email }}`.
        pub to: Vec<Template>,
        /// e.g. `[{{ severity }}] {{ alarm }} {{ state }} on {{ device_id }}`.
        pub subject: Template,
        /// Plain text.
        pub body: Template,
        /// Per attempt (connect and send).
        #[serde(default = "default_timeout")]
        pub timeout: Duration,
    }
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

/// How the SMTP connection is protected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SmtpSecurity {
    /// Plain connection upgraded with STARTTLS; refuse a server that cannot.
    #[default]
    Starttls,
    /// STARTTLS when the server offers it, plain text otherwise.
    Opportunistic,
    /// TLS from the first byte (SMTPS, port 465).
    Tls,
    /// Plain text only (a local relay).
    None,
}

impl ActionComponent for EmailConfig {
    fn buffer(&self) -> crate::buffers::BufferConfig {
        self.policies().buffer()
    }

    fn warnings(&self) -> Vec<FieldProblem> {
        self.policies().warnings()
    }

    fn check(&self) -> Vec<FieldProblem> {
        let mut problems = self.policies().check();
        if self.host.is_empty() {
            problems.push(FieldProblem::at(["host"], "expected a host name"));
        }
        if let Err(err) = self.from.parse::<Mailbox>() {
            problems.push(FieldProblem::at(
                ["from"],
                format!("`{}` is not an e-mail address: {err}", self.from),
            ));
        }
        if self.to.is_empty() {
            problems.push(FieldProblem::at(["to"], "expected at least one recipient"));
        }
        if self.username.is_some() != self.password.is_some() {
            problems.push(FieldProblem::at(
                ["username"],
                "`username` and `password` go together",
            ));
        }
        if self.ca_file.is_some() && self.security == SmtpSecurity::None {
            problems.push(FieldProblem::at(
                ["ca_file"],
                "`ca_file` needs `security` other than `none`",
            ));
        }
        problems
    }

    fn build(&self, cx: ActionContext) -> anyhow::Result<ComponentTask> {
        let mut tls = TlsParameters::builder(self.host.clone());
        if let Some(ca_file) = &self.ca_file {
            let pem = std::fs::read(ca_file)
                .map_err(|err| anyhow::anyhow!("cannot read {}: {err}", ca_file.display()))?;
            let certificate = Certificate::from_pem(&pem).map_err(|err| {
                anyhow::anyhow!("{} holds no usable certificate: {err}", ca_file.display())
            })?;
            tls = tls.add_root_certificate(certificate);
        }
        let tls = tls.build_rustls()?;
        let (security, default_port) = match self.security {
            SmtpSecurity::Starttls => (Tls::Required(tls), 587),
            SmtpSecurity::Opportunistic => (Tls::Opportunistic(tls), 587),
            SmtpSecurity::Tls => (Tls::Wrapper(tls), 465),
            SmtpSecurity::None => (Tls::None, 25),
        };
        let mut transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&self.host)
            .port(self.port.unwrap_or(default_port))
            .tls(security)
            .timeout(Some(self.timeout.get()));
        if let (Some(username), Some(password)) = (&self.username, &self.password) {
            transport = transport.credentials(Credentials::new(
                username.clone(),
                password.expose().clone(),
            ));
        }
        let from = self
            .from
            .parse::<Mailbox>()
            .map_err(|err| anyhow::anyhow!("`from`: {err}"))?;
        let notifier = Email {
            component: cx.id.to_string(),
            transport: transport.build(),
            from,
            config: self.clone(),
        };
        runner::spawn(cx, self.policies(), notifier)
    }
}

struct Email {
    /// In the `Message-ID`, beside the idempotency key.
    component: String,
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    config: EmailConfig,
}

/// One rendered e-mail.
pub struct Mail {
    to: Vec<Mailbox>,
    subject: String,
    body: String,
}

impl Notifier for Email {
    type Message = Mail;

    fn prepare(&self, event: &Event) -> Result<Mail, String> {
        let view = event.view();
        let mut to = Vec::with_capacity(self.config.to.len());
        for (i, recipient) in self.config.to.iter().enumerate() {
            let address = runner::render(recipient, &view, &format!("to[{i}]"))?;
            to.push(
                address
                    .parse::<Mailbox>()
                    .map_err(|err| format!("`{address}` (`to[{i}]`) is not an address: {err}"))?,
            );
        }
        let subject = runner::render(&self.config.subject, &view, "subject")?;
        let body = runner::render(&self.config.body, &view, "body")?;
        Ok(Mail { to, subject, body })
    }

    fn secrets(&self, _mail: &Mail) -> Vec<String> {
        let password = self.config.password.as_ref();
        password.map(|p| p.expose().clone()).into_iter().collect()
    }

    fn identity(&self, mail: &Mail, hasher: &mut dyn Hasher) {
        let mut hasher = hasher;
        for to in &mail.to {
            to.to_string().hash(&mut hasher);
        }
        mail.subject.hash(&mut hasher);
        mail.body.hash(&mut hasher);
    }

    async fn send(&self, mail: &Mail, key: &IdempotencyKey) -> Result<(), SendError> {
        let mut builder = lettre::Message::builder()
            .message_id(Some(format!("<{key}.{}@weir>", self.component)))
            .from(self.from.clone())
            .subject(mail.subject.clone())
            .header(ContentType::TEXT_PLAIN);
        for to in &mail.to {
            builder = builder.to(to.clone());
        }
        let message = builder
            .body(mail.body.clone())
            .map_err(|err| SendError::Permanent(format!("cannot build the e-mail: {err}")))?;
        match self.transport.send(message).await {
            Ok(_) => Ok(()),
            Err(err) if err.is_permanent() => Err(SendError::Permanent(format!(
                "the SMTP server refused the e-mail: {err}"
            ))),
            Err(err) => Err(SendError::Transient(format!("SMTP: {err}"))),
        }
    }
}
