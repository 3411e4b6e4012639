//! What the broker sinks (`amqp`, `mqtt`) share: take a chunk from the buffer, make each
//! event a message, publish them all at once, and let go of an event (which acknowledges
//! it upstream) only when the broker confirmed its message.
//!
//! A message the broker did not confirm (it is down, it nacked, the confirm did not come in
//! time, no queue took it) is published again after a backoff, for as long as it takes:
//! the sink holds its chunk, its buffer fills, and backpressure reaches the sources. So a
//! message may reach the broker twice (its first confirm lost), never zero times. An event
//! that cannot become a message (its routing key or topic does not render) goes to
//! `<id>.errors`.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use super::SinkContext;
use super::retry::{Backoff, RetryConfig};
use crate::buffers::{Buffer, BufferConfig, BufferType};
use crate::codecs::EncodingConfig;
use crate::config::{Duration, FieldProblem};
use crate::event::{Event, EventBatch};
use crate::telemetry::events::{BatchCommitted, ComponentError, ErrorType, Stage};
use crate::telemetry::{ComponentTelemetry, InternalEvent};
use crate::topology::ComponentTask;
use crate::topology::channel::Outputs;

/// A broker connection that publishes messages and hears the broker confirm them.
pub trait Publish: Send + Sync + 'static {
    type Message: Send + Sync + 'static;

    /// The message for `event`, or why it cannot have one (it goes to `errors`).
    fn prepare(&self, event: &Event) -> Result<Self::Message, String>;

    /// The payload's size, for `component_sent_bytes_total`.
    fn bytes(message: &Self::Message) -> usize;

    /// Publishes every message and waits for the broker's word on each: `Ok` when it
    /// confirmed that message, else why not (to be published again).
    fn publish(
        &self,
        messages: &[&Self::Message],
    ) -> impl Future<Output = Vec<Result<(), String>>> + Send;

    /// Ends the connection: the sink has published everything.
    fn close(self) -> impl Future<Output = ()> + Send;
}

/// The options every broker sink has besides its connection's.
pub struct Options<'a> {
    pub encoding: &'a EncodingConfig,
    pub max_batch: usize,
    pub timeout: Duration,
    pub buffer: BufferConfig,
    pub retry: RetryConfig,
}

impl Options<'_> {
    pub fn check(&self) -> Vec<FieldProblem> {
        let mut problems = Vec::new();
        if let Err(message) = self.encoding.check() {
            problems.push(FieldProblem::at(["encoding", "codec"], message));
        }
        if self.max_batch == 0 {
            problems.push(FieldProblem::at(
                ["max_batch"],
                "expected at least one event",
            ));
        }
        if self.timeout.get().is_zero() {
            problems.push(FieldProblem::at(
                ["timeout"],
                "expected a duration above zero",
            ));
        }
        problems.extend(self.buffer.check(BufferType::Memory));
        problems.extend(self.retry.check());
        problems
    }

    /// The sink's task: `publisher` publishes what its buffer (memory by default) holds.
    pub fn task<P: Publish>(&self, cx: SinkContext, publisher: P) -> ComponentTask {
        let buffer_dir = cx.buffer_dir();
        let sink = Sink {
            publisher,
            max_batch: self.max_batch,
            retry: self.retry,
            out: cx.out,
            telemetry: cx.telemetry.clone(),
            component: cx.id.as_arc(),
        };
        let buffer = Buffer::new(
            cx.input,
            self.buffer,
            BufferType::Memory,
            cx.telemetry,
            buffer_dir,
        );
        Box::pin(async move {
            sink.run(buffer).await.close().await;
            Ok(())
        })
    }
}

/// Events whose messages the broker has not confirmed yet. Dropping them (the sink task is
/// cancelled mid-publish) fails their deliveries instead of acknowledging them.
struct Pending<M>(Vec<(Event, M)>);

impl<M> Drop for Pending<M> {
    fn drop(&mut self) {
        for (event, _) in &self.0 {
            event.fail_delivery();
        }
    }
}

/// The running sink: reads `buffer` until it closes.
struct Sink<P> {
    publisher: P,
    max_batch: usize,
    retry: RetryConfig,
    out: Outputs,
    telemetry: ComponentTelemetry,
    component: Arc<str>,
}

impl<P: Publish> Sink<P> {
    /// Publishes until the buffer closes; hands the publisher back to be closed.
    async fn run(self, mut buffer: Buffer) -> P {
        while let Some(chunk) = buffer.next(self.max_batch).await {
            self.write(chunk.events).await;
        }
        self.publisher
    }

    /// Publishes one chunk until the broker confirmed every message of it.
    async fn write(&self, events: Vec<Event>) {
        let started = Instant::now();
        let mut pending = Pending(Vec::with_capacity(events.len()));
        // Bound for `errors`; failed like `pending` if the sink stops before sending them.
        let mut refused = Pending(Vec::new());
        for event in events {
            match self.publisher.prepare(&event) {
                Ok(message) => pending.0.push((event, message)),
                Err(why) => refused.0.push((event.with_error(&self.component, why), ())),
            }
        }
        if let Some(first) = refused.0.first().and_then(|(e, _)| e.meta().error.as_ref()) {
            ComponentError {
                error_type: ErrorType::Expression,
                stage: Stage::Processing,
                message: &format!("{} ({} events to `errors`)", first.message, refused.0.len()),
                count: refused.0.len(),
            }
            .emit(&self.telemetry);
        }
        let sent = self.telemetry.sent_events("default");
        let (mut confirmed, mut bytes) = (0, 0);
        let mut backoff = Backoff::new(&self.retry, &self.telemetry);
        while !pending.0.is_empty() {
            let outcomes = {
                let messages: Vec<&P::Message> = pending.0.iter().map(|(_, m)| m).collect();
                self.publisher.publish(&messages).await
            };
            let mut first_failure = None;
            let mut failed = 0;
            let mut left = Vec::new();
            for ((event, message), outcome) in std::mem::take(&mut pending.0).into_iter().zip(
                outcomes
                    .into_iter()
                    .chain(std::iter::repeat_with(|| Err("no outcome".into()))),
            ) {
                match outcome {
                    // Dropping the event acknowledges it: the broker holds its message.
                    Ok(()) => {
                        confirmed += 1;
                        bytes += P::bytes(&message);
                        sent.inc();
                    }
                    Err(why) => {
                        failed += 1;
                        first_failure.get_or_insert(why);
                        left.push((event, message));
                    }
                }
            }
            pending.0 = left;
            if let Some(why) = first_failure {
                let err = anyhow::anyhow!("{why} ({failed} messages to publish again)");
                backoff.wait(&err).await;
            }
        }
        BatchCommitted {
            events: confirmed,
            bytes,
            duration: started.elapsed(),
        }
        .emit(&self.telemetry);
        if !refused.0.is_empty() {
            let refused = std::mem::take(&mut refused.0).into_iter().map(|(e, _)| e);
            self.out
                .send_named("errors", EventBatch::new(refused.collect()))
                .await;
        }
    }
}
