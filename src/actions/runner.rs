//! The runtime every action shares.
//!
//! An action reads its input through a [`Buffer`] (`buffer:`; a disk buffer by default:
//! the action's outbox, which acknowledges upstream once an event is durable and hands
//! back after a crash whatever was not yet sent). The runner takes one event at a time,
//! renders it ([`Notifier::prepare`]), drops duplicates and throttled ones (counted; their
//! state is kept in [`limits`](super::limits)), and sends it with its
//! [`IdempotencyKey`], retrying transient failures with exponential backoff and jitter;
//! permanent failures and exhausted retries go to `<id>.errors`. An event is dropped —
//! which acknowledges it to the buffer — only once its notification was sent (and the
//! throttle and dedupe state that counts it was written) or dead-lettered. A crash in
//! between sends that one notification again, with the same key: notifications are at
//! least once. On shutdown the runner sends what its buffer hands out until it is empty.

use std::future::Future;
use std::hash::Hasher;
use std::sync::Arc;
use std::time::Instant;

use super::ActionContext;
use super::idempotency::{IdempotencyKey, StableHasher};
use super::limits::{self, Limits};
use super::policy::DEFAULT_BUFFER;
use super::policy::{Policies, RetryConfig};
use crate::buffers::Buffer;
use crate::event::{Event, EventBatch};
use crate::telemetry::events::{ComponentError, ErrorType, EventsDiscarded, Stage};
use crate::telemetry::{ActionMetrics, ComponentTelemetry, InternalEvent};
use crate::template::Template;
use crate::topology::ComponentTask;
use crate::topology::channel::Outputs;

/// Why one attempt to send failed.
#[derive(Debug)]
pub enum SendError {
    /// Worth another attempt: a 5xx, a timeout, a lost connection.
    Transient(String),
    /// Another attempt would fail the same way: a 4xx, a refused recipient.
    Permanent(String),
}

/// How one action renders and sends a notification.
pub trait Notifier: Send + Sync + 'static {
    type Message: Send + Sync + 'static;

    /// Renders the event's templates; an error is permanent (the event is dead-lettered).
    fn prepare(&self, event: &Event) -> Result<Self::Message, String>;

    /// The secrets `message` carries (header values, a URL's password or token): masked
    /// in every error message about it, since a server's answer may echo them.
    fn secrets(&self, _message: &Self::Message) -> Vec<String> {
        Vec::new()
    }

    /// Feeds what makes two messages identical, for `dedupe`.
    fn identity(&self, message: &Self::Message, hasher: &mut dyn Hasher);

    /// One attempt to send, carrying `key` where the protocol has room for it (see
    /// [`super::idempotency`]). Called for one message at a time.
    fn send(
        &self,
        message: &Self::Message,
        key: &IdempotencyKey,
    ) -> impl Future<Output = Result<(), SendError>> + Send;

    /// The event that reports how `message` (made from `event`) ended, sent or failed
    /// for good (`Err`, after the last attempt), on the action's [`OUTCOMES`] output;
    /// `None` (the default, for actions without that output) reports nothing.
    fn outcome(
        &self,
        _event: &Event,
        _message: &Self::Message,
        _result: Result<(), &str>,
    ) -> Option<Event> {
        None
    }
}

/// The output on which an action that has it reports how each notification ended (a
/// `direct_method` action: the device's answer).
pub const OUTCOMES: &str = "outcomes";

/// Renders `template` for one event; the error names the option.
pub fn render(
    template: &Template,
    view: &minijinja::Value,
    option: &str,
) -> Result<String, String> {
    template
        .render(view)
        .map_err(|err| format!("`{option}` failed: {err}"))
}

/// The rendered `template`, or the whole event as JSON when there is none.
pub fn body_or_event(
    template: Option<&Template>,
    event: &Event,
    view: &minijinja::Value,
    option: &str,
) -> Result<Vec<u8>, String> {
    match template {
        Some(template) => render(template, view, option).map(String::into_bytes),
        None => serde_json::to_vec(event).map_err(|err| format!("cannot encode the event: {err}")),
    }
}

/// Runs `notifier` under the action's policies, reading through the action's buffer.
pub fn spawn<N: Notifier>(
    cx: ActionContext,
    policies: Policies<'_>,
    notifier: N,
) -> anyhow::Result<ComponentTask> {
    let limits = Limits::open(
        limits::state_path(&cx.data_dir, &cx.id),
        policies.throttle,
        policies.dedupe,
    )?;
    let buffer_dir = cx.buffer_dir();
    let reporter = Reporter {
        metrics: cx.telemetry.action_metrics(),
        sent: cx.telemetry.sent_events("default"),
        out: cx.out,
        telemetry: cx.telemetry.clone(),
        component: cx.id.as_arc(),
    };
    let buffer_config = policies.buffer();
    let disk = buffer_config.is_disk(DEFAULT_BUFFER);
    let mut buffer = Buffer::new(
        cx.input,
        buffer_config,
        DEFAULT_BUFFER,
        cx.telemetry,
        buffer_dir,
    );
    let mut runner = Runner {
        notifier,
        throttle_key: policies.throttle.map(|t| t.key.clone()),
        limits,
        retry: policies.retry.clone(),
        reporter,
    };
    let mut reread = disk;
    Ok(Box::pin(async move {
        // One at a time: each is acknowledged on its own, so a crash repeats at most the
        // one being sent.
        while let Some(chunk) = buffer.next(1).await {
            // A disk buffer hands out its first event once this instance holds it, i.e.
            // after a reload's old instance finished and wrote its state.
            if std::mem::take(&mut reread) {
                runner.limits.reread()?;
            }
            for event in chunk.events {
                runner.handle(event).await;
            }
        }
        Ok(())
    }))
}

/// Counts outcomes and routes dead letters.
struct Reporter {
    out: Outputs,
    /// `component_sent_events_total` of the default output.
    sent: prometheus_client::metrics::counter::Counter,
    telemetry: ComponentTelemetry,
    metrics: ActionMetrics,
    component: Arc<str>,
}

impl Reporter {
    /// Sends events that failed for good to `<id>.errors`, counted and explained.
    async fn dead_letter(&self, dead: Vec<(Event, String)>, error_type: ErrorType) {
        self.metrics.failed.inc_by(dead.len() as u64);
        self.route(dead, error_type).await;
    }

    async fn route(&self, dead: Vec<(Event, String)>, error_type: ErrorType) {
        if dead.is_empty() {
            return;
        }
        let mut events = Vec::with_capacity(dead.len());
        for (event, message) in dead {
            ComponentError {
                error_type,
                stage: Stage::Sending,
                message: &message,
                count: 1,
            }
            .emit(&self.telemetry);
            events.push(event.with_error(&self.component, message));
        }
        self.out
            .send_named(crate::config::OutputName::ERRORS, EventBatch::new(events))
            .await;
    }
}

/// Whether a notification goes out, and why not.
enum Admission {
    Send,
    /// Throttled or a duplicate: dropped on purpose (counted).
    Skip,
    /// `throttle.key` failed to render.
    Fail(String),
}

struct Runner<N: Notifier> {
    notifier: N,
    throttle_key: Option<Template>,
    limits: Limits,
    retry: RetryConfig,
    reporter: Reporter,
}

impl<N: Notifier> Runner<N> {
    /// Sends (or skips, or dead-letters) what `event` asks for; dropping the event at the
    /// end acknowledges it.
    async fn handle(&mut self, event: Event) {
        let key = IdempotencyKey::of(&event);
        if self.limits.was_sent(key.as_str()) {
            // A second copy of a notification sent already (see `limits`).
            self.reporter.metrics.deduplicated.inc();
            self.skipped();
            return;
        }
        let message = match self.notifier.prepare(&event) {
            Ok(message) => message,
            Err(err) => {
                let dead = vec![(event, err)];
                self.reporter.dead_letter(dead, ErrorType::Expression).await;
                return;
            }
        };
        match self.admit(&event, &message, limits::now_ms()) {
            Admission::Send => {}
            Admission::Skip => {
                self.skipped();
                return;
            }
            Admission::Fail(err) => {
                let dead = vec![(event, err)];
                self.reporter.dead_letter(dead, ErrorType::Expression).await;
                return;
            }
        }
        crate::fault::crash_point("action.before_send");
        let started = Instant::now();
        let outcome = self.send_with_retry(&message, &key).await;
        if outcome.is_ok() {
            crate::fault::crash_point("action.sent");
            self.limits.sent(key.as_str());
        }
        // What was let through counts from now on, sent or not; written before the event
        // is acknowledged, so a restart neither repeats nor forgets it.
        self.remember();
        let result = outcome.as_ref().map(|_| ()).map_err(String::as_str);
        if let Some(report) = self.notifier.outcome(&event, &message, result) {
            // Before the event is acknowledged: a crash reports it (and sends it) again.
            self.reporter
                .out
                .send_named(OUTCOMES, EventBatch::new(vec![report]))
                .await;
        }
        match outcome {
            Ok(()) => {
                let metrics = &self.reporter.metrics;
                metrics.sent.inc();
                metrics.latency.observe(started.elapsed().as_secs_f64());
                self.reporter.sent.inc();
                // Dropping the event acknowledges it.
                drop(event);
            }
            Err(message) => {
                self.reporter
                    .dead_letter(vec![(event, message)], ErrorType::Io)
                    .await;
            }
        }
    }

    /// Counts a notification dropped on purpose (throttled, a duplicate).
    fn skipped(&self) {
        EventsDiscarded {
            count: 1,
            intentional: true,
        }
        .emit(&self.reporter.telemetry);
    }

    fn admit(&mut self, event: &Event, message: &N::Message, now: i64) -> Admission {
        if let Some(dedupe) = &mut self.limits.dedupe {
            let mut hasher = StableHasher::default();
            self.notifier.identity(message, &mut hasher);
            if dedupe.is_duplicate(hasher.finish(), now) {
                self.reporter.metrics.deduplicated.inc();
                return Admission::Skip;
            }
        }
        if let (Some(template), Some(throttle)) = (&self.throttle_key, &mut self.limits.throttle) {
            let key = match template.render(&event.view()) {
                Ok(key) => key,
                Err(err) => return Admission::Fail(format!("`throttle.key` failed: {err}")),
            };
            if !throttle.admit(&key, now) {
                self.reporter.metrics.throttled.inc();
                return Admission::Skip;
            }
        }
        Admission::Send
    }

    /// Writes the throttle and dedupe state and the keys sent; a failure is counted and logged (the next
    /// notification tries again).
    fn remember(&self) {
        if let Err(err) = self.limits.save() {
            ComponentError {
                error_type: ErrorType::Io,
                stage: Stage::Sending,
                message: &format!("cannot keep the throttle and dedupe state: {err:#}"),
                count: 1,
            }
            .emit(&self.reporter.telemetry);
        }
    }

    /// Sends until success, a permanent failure, or the last attempt.
    async fn send_with_retry(
        &self,
        message: &N::Message,
        key: &IdempotencyKey,
    ) -> Result<(), String> {
        let mut delays = self.retry.delays();
        let mut attempts = 0u32;
        // Listed only when an error needs masking: a sent message never does.
        let scrub = |err: String| {
            let secrets = self.notifier.secrets(message);
            crate::config::scrub(&err, secrets.iter().map(String::as_str))
        };
        loop {
            attempts += 1;
            match self.notifier.send(message, key).await {
                Ok(()) => return Ok(()),
                Err(SendError::Permanent(err)) => return Err(scrub(err)),
                Err(SendError::Transient(err)) => match (delays.next(), scrub(err)) {
                    (Some(delay), err) => {
                        self.reporter.metrics.retries.inc();
                        ComponentError {
                            error_type: ErrorType::Io,
                            stage: Stage::Sending,
                            message: &format!("{err}; retrying in {delay:?}"),
                            count: 1,
                        }
                        .emit(&self.reporter.telemetry);
                        tokio::time::sleep(delay).await;
                    }
                    (None, err) => {
                        return Err(format!("gave up after {attempts} attempts: {err}"));
                    }
                },
            }
        }
    }
}
