//! The runtime every action shares.
//!
//! Two tasks per action. The *intake* reads the input, renders each event into a message
//! ([`Notifier::prepare`]), drops duplicates and throttled ones (counted), and puts the
//! rest in a bounded queue (`when_full`: block, drop newest, drop oldest). The *sender*
//! takes messages one at a time and sends each, retrying transient failures with
//! exponential backoff and jitter; permanent failures and exhausted retries go to
//! `<id>.errors`. An event is dropped — which acknowledges its delivery — only once its
//! notification was sent or dead-lettered, so a source's acknowledgement waits for the
//! action. On shutdown the intake finishes its input and the sender drains the queue.

use std::collections::VecDeque;
use std::future::Future;
use std::hash::Hasher;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::Notify;

use super::ActionContext;
use super::policy::{Deduper, Policies, RetryConfig, Throttler, WhenFull};
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

    /// Feeds what makes two messages identical, for `dedupe`.
    fn identity(&self, message: &Self::Message, hasher: &mut dyn Hasher);

    /// One attempt to send. Called for one message at a time.
    fn send(&self, message: &Self::Message) -> impl Future<Output = Result<(), SendError>> + Send;
}

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

/// One notification on its way: the message and the event whose delivery waits for it.
struct Job<M> {
    /// Taken out when the notification was sent or dead-lettered.
    event: Option<Event>,
    message: M,
    queued_at: Instant,
}

impl<M> Drop for Job<M> {
    /// A job dropped with its event still in it was abandoned (a drain that ran out of
    /// time): its source must not take that as done.
    fn drop(&mut self) {
        if let Some(event) = &self.event {
            event.fail_delivery();
        }
    }
}

/// Runs `notifier` under the action's policies.
pub fn spawn<N: Notifier>(cx: ActionContext, policies: Policies<'_>, notifier: N) -> ComponentTask {
    let notifier = Arc::new(notifier);
    let metrics = cx.telemetry.action_metrics();
    let queue = Arc::new(JobQueue::new(
        policies.queue.max_events,
        metrics.queued.clone(),
    ));
    let reporter = Reporter {
        out: cx.out,
        telemetry: cx.telemetry,
        metrics,
        component: cx.id.as_arc(),
    };
    let mut intake = Intake {
        notifier: Arc::clone(&notifier),
        throttle: policies
            .throttle
            .map(|t| (t.key.clone(), Throttler::new(t))),
        dedupe: policies.dedupe.map(Deduper::new),
        when_full: policies.queue.when_full,
        queue: Arc::clone(&queue),
        reporter: reporter.clone(),
    };
    let sender = Sender {
        notifier,
        queue,
        retry: policies.retry.clone(),
        reporter,
    };
    let mut input = cx.input;
    Box::pin(async move {
        let sending = tokio::spawn(sender.run());
        while let Some(batch) = input.recv().await {
            intake.take(batch).await;
        }
        intake.queue.close();
        sending
            .await
            .map_err(|err| anyhow::anyhow!("the action's sender failed: {err}"))
    })
}

/// Counts outcomes and routes dead letters.
#[derive(Clone)]
struct Reporter {
    out: Outputs,
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

    /// Sends what a full queue dropped to `<id>.errors` (counted as dropped by the caller).
    async fn dead_letter_dropped(&self, dropped: Vec<(Event, String)>) {
        self.route(dropped, ErrorType::Io).await;
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

struct Intake<N: Notifier> {
    notifier: Arc<N>,
    throttle: Option<(Template, Throttler)>,
    dedupe: Option<Deduper>,
    when_full: WhenFull,
    queue: Arc<JobQueue<Job<N::Message>>>,
    reporter: Reporter,
}

impl<N: Notifier> Intake<N> {
    async fn take(&mut self, batch: EventBatch) {
        let mut dead = Vec::new();
        let mut dropped = Vec::new();
        let mut skipped = 0;
        for event in batch {
            let message = match self.notifier.prepare(&event) {
                Ok(message) => message,
                Err(err) => {
                    dead.push((event, err));
                    continue;
                }
            };
            let now = Instant::now();
            if let Some(dedupe) = &mut self.dedupe {
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                self.notifier.identity(&message, &mut hasher);
                if dedupe.is_duplicate(hasher.finish(), now) {
                    self.reporter.metrics.deduplicated.inc();
                    skipped += 1;
                    continue;
                }
            }
            if let Some((key, throttle)) = &mut self.throttle {
                let key = match key.render(&event.view()) {
                    Ok(key) => key,
                    Err(err) => {
                        dead.push((event, format!("`throttle.key` failed: {err}")));
                        continue;
                    }
                };
                if !throttle.admit(&key, now) {
                    self.reporter.metrics.throttled.inc();
                    skipped += 1;
                    continue;
                }
            }
            let job = Job {
                event: Some(event),
                message,
                queued_at: now,
            };
            if let Some(mut lost) = self.queue.push(job, self.when_full).await {
                self.reporter.metrics.dropped.inc();
                if let Some(event) = lost.event.take() {
                    dropped.push((event, "the action's queue was full".to_owned()));
                }
            }
        }
        // Throttled and duplicate notifications are dropped on purpose.
        EventsDiscarded {
            count: skipped,
            intentional: true,
        }
        .emit(&self.reporter.telemetry);
        self.reporter.dead_letter(dead, ErrorType::Expression).await;
        // Dead-lettered so nothing is lost silently (counted as dropped, not as failed).
        self.reporter.dead_letter_dropped(dropped).await;
    }
}

struct Sender<N: Notifier> {
    notifier: Arc<N>,
    queue: Arc<JobQueue<Job<N::Message>>>,
    retry: RetryConfig,
    reporter: Reporter,
}

impl<N: Notifier> Sender<N> {
    async fn run(self) {
        let sent = self.reporter.telemetry.sent_events("default");
        while let Some(mut job) = self.queue.pop().await {
            let outcome = self.send_with_retry(&job.message).await;
            let Some(event) = job.event.take() else {
                continue;
            };
            match outcome {
                Ok(()) => {
                    self.reporter.metrics.sent.inc();
                    self.reporter
                        .metrics
                        .latency
                        .observe(job.queued_at.elapsed().as_secs_f64());
                    sent.inc();
                    // Dropping the event acknowledges its delivery.
                    drop(event);
                }
                Err(message) => {
                    self.reporter
                        .dead_letter(vec![(event, message)], ErrorType::Io)
                        .await;
                }
            }
        }
    }

    /// Sends until success, a permanent failure, or the last attempt.
    async fn send_with_retry(&self, message: &N::Message) -> Result<(), String> {
        let mut delays = self.retry.delays();
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            match self.notifier.send(message).await {
                Ok(()) => return Ok(()),
                Err(SendError::Permanent(err)) => return Err(err),
                Err(SendError::Transient(err)) => match delays.next() {
                    Some(delay) => {
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
                    None => return Err(format!("gave up after {attempts} attempts: {err}")),
                },
            }
        }
    }
}

/// A bounded FIFO that can block, refuse the newest or evict the oldest when full.
struct JobQueue<T> {
    state: Mutex<QueueState<T>>,
    changed: Notify,
    capacity: usize,
    gauge: prometheus_client::metrics::gauge::Gauge,
}

struct QueueState<T> {
    items: VecDeque<T>,
    closed: bool,
}

impl<T> JobQueue<T> {
    fn new(capacity: usize, gauge: prometheus_client::metrics::gauge::Gauge) -> Self {
        Self {
            state: Mutex::new(QueueState {
                items: VecDeque::new(),
                closed: false,
            }),
            changed: Notify::new(),
            capacity: capacity.max(1),
            gauge,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `item`; returns the item that had to go instead (the new one or the oldest).
    async fn push(&self, item: T, when_full: WhenFull) -> Option<T> {
        let mut item = Some(item);
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(outcome) = self.try_push(&mut item, when_full) {
                return outcome;
            }
            notified.await;
        }
    }

    /// `None` when the caller must wait for room; else what had to go instead.
    fn try_push(&self, item: &mut Option<T>, when_full: WhenFull) -> Option<Option<T>> {
        let mut state = self.lock();
        let lost = match (state.items.len() >= self.capacity, when_full) {
            (false, _) => None,
            (true, WhenFull::Block) => return None,
            (true, WhenFull::DropNewest) => return Some(item.take()),
            (true, WhenFull::DropOldest) => state.items.pop_front(),
        };
        state.items.extend(item.take());
        self.gauge.set(state.items.len() as i64);
        drop(state);
        self.changed.notify_waiters();
        Some(lost)
    }

    /// The oldest item; `None` once the queue is closed and empty.
    async fn pop(&self) -> Option<T> {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(outcome) = self.try_pop() {
                return outcome;
            }
            notified.await;
        }
    }

    /// `None` when the caller must wait; `Some(None)` once closed and empty.
    fn try_pop(&self) -> Option<Option<T>> {
        let mut state = self.lock();
        match state.items.pop_front() {
            Some(item) => {
                self.gauge.set(state.items.len() as i64);
                drop(state);
                self.changed.notify_waiters();
                Some(Some(item))
            }
            None if state.closed => Some(None),
            None => None,
        }
    }

    fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(capacity: usize) -> JobQueue<u32> {
        JobQueue::new(capacity, Default::default())
    }

    #[test]
    fn an_abandoned_job_fails_its_delivery_and_a_finished_one_commits() {
        use crate::event::{Delivery, DeliveryStatus, EventMeta, Fields};
        let job = |delivery: &Arc<Delivery>| {
            let mut event = Event::new(
                None,
                Fields::new(),
                Arc::new(EventMeta::received_by("s".into())),
            );
            event.attach(delivery);
            Job {
                event: Some(event),
                message: (),
                queued_at: Instant::now(),
            }
        };
        let (delivery, mut abandoned) = Delivery::new();
        drop(job(&delivery));
        drop(delivery);
        assert_eq!(abandoned.try_recv().unwrap(), DeliveryStatus::Failed);

        let (delivery, mut finished) = Delivery::new();
        let mut done = job(&delivery);
        drop(delivery);
        drop(done.event.take());
        drop(done);
        assert_eq!(finished.try_recv().unwrap(), DeliveryStatus::Committed);
    }

    #[tokio::test]
    async fn drop_newest_and_drop_oldest() {
        let q = queue(2);
        assert_eq!(q.push(1, WhenFull::DropNewest).await, None);
        assert_eq!(q.push(2, WhenFull::DropNewest).await, None);
        assert_eq!(q.push(3, WhenFull::DropNewest).await, Some(3));
        assert_eq!(q.push(4, WhenFull::DropOldest).await, Some(1));
        q.close();
        assert_eq!(q.pop().await, Some(2));
        assert_eq!(q.pop().await, Some(4));
        assert_eq!(q.pop().await, None);
    }

    #[tokio::test]
    async fn block_waits_for_room() {
        let q = Arc::new(queue(1));
        q.push(1, WhenFull::Block).await;
        let pusher = tokio::spawn({
            let q = Arc::clone(&q);
            async move { q.push(2, WhenFull::Block).await }
        });
        tokio::task::yield_now().await;
        assert!(!pusher.is_finished());
        assert_eq!(q.pop().await, Some(1));
        assert_eq!(pusher.await.unwrap(), None);
        assert_eq!(q.pop().await, Some(2));
    }
}
