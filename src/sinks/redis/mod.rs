//! `redis`: warm state, one document per device (or a capped stream of readings) in Redis.
//!
//! The sink takes batches from its buffer, turns each event into commands (`commands`),
//! sends the batch as one pipeline and reads one reply per command, so a command Redis
//! refuses (WRONGTYPE on a key of another type) dead-letters only its own event. An event
//! is dropped, which acknowledges it upstream, only once Redis has replied for it. A lost
//! connection or a server that is loading fails the whole attempt: it is retried with
//! backoff and jitter until it passes, while the buffer fills and backpressure holds the
//! sources. A retried batch is written again: `hash` and `json` writes are idempotent,
//! `stream` entries may be duplicated (bounded by one batch).

mod commands;
mod connection;
mod scripts;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use self::commands::Commands;
use self::connection::{Connection, Replies, Target};
use super::retry::{RetryConfig, WriteError, with_retries};
use super::{SinkComponent, SinkContext};
use crate::buffers::{Buffer, BufferConfig, BufferType};
use crate::config::{self, FieldProblem, RedactedUrl};
use crate::event::{Event, EventBatch};
use crate::telemetry::events::{BatchCommitted, ComponentError, ErrorType, EventsDiscarded, Stage};
use crate::telemetry::{ComponentTelemetry, InternalEvent};
use crate::template::Template;
use crate::tls::TlsConfig;
use crate::topology::ComponentTask;
use crate::topology::channel::Outputs;

/// Writes events to Redis: the latest state per device (`hash`, `json`) or a capped stream
/// of readings (`stream`). Every document holds `device_id`, the event's fields,
/// `event_time` (RFC 3339, UTC) and `event_time_ms` (epoch milliseconds); body fields with
/// those names are left out. In `hash` and `stream` mode values are Redis strings: strings
/// as they are, numbers and booleans as JSON text (`21.5`, `true`), null as `null`, arrays
/// and objects as JSON. An event is acknowledged upstream once Redis has replied for it;
/// what Redis refuses (e.g. WRONGTYPE) goes to `<id>.errors`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port/db`, or `rediss://` for TLS. With `cluster: true`,
    /// the seed nodes of the cluster, comma-separated (`redis://a:7000,redis://b:7001`).
    pub url: RedactedUrl,
    /// The key each event is written to, a template such as `device:{{ device_id }}`.
    pub key: Template,
    #[serde(default)]
    pub mode: RedisMode,
    /// Expire a document this long after its last write (PEXPIRE; `SET ... PX` in `json`
    /// mode); default: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<config::Duration>,
    /// `hash` and `json` mode: keep a document when a reading older than the stored one
    /// arrives late. Redis compares the reading's event time with the stored
    /// `event_time_ms` in a Lua script (EVALSHA, pipelined), atomically; a reading with the
    /// same time is written. Skipped readings count as intentionally discarded.
    #[serde(default)]
    pub only_newer: bool,
    /// `stream` mode: keep about this many entries per stream (`XADD key MAXLEN ~ n`).
    /// Default 10000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maxlen: Option<u64>,
    /// `url` names Redis Cluster nodes: keys are routed to the node owning their slot.
    #[serde(default)]
    pub cluster: bool,
    /// Certificates for `rediss://`: `ca_file` to trust a private CA (default: the
    /// system's roots), `cert_file` and `key_file` for mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// The most events written in one pipeline.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// How long to wait for a connection or a reply before retrying.
    #[serde(default = "default_timeout")]
    pub timeout: config::Duration,
    #[serde(default)]
    pub buffer: BufferConfig,
    #[serde(default)]
    pub retry: RetryConfig,
}

/// What the sink writes for each event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RedisMode {
    /// HSET the fields into a hash: the latest value of every field the device sent.
    #[default]
    Hash,
    /// SET the key to the event as one JSON document (`event_time_ms` first).
    Json,
    /// XADD the event to a stream capped at about `maxlen` entries.
    Stream,
}

fn default_max_batch() -> usize {
    1000
}

fn default_timeout() -> config::Duration {
    config::Duration::from_secs(5)
}

const DEFAULT_MAXLEN: u64 = 10_000;

impl SinkComponent for RedisConfig {
    fn disk_buffer(&self) -> bool {
        self.buffer.is_disk(BufferType::Memory)
    }

    fn check(&self) -> Vec<FieldProblem> {
        let mut problems = self.check_url();
        if self.key.source().trim().is_empty() {
            problems.push(FieldProblem::at(["key"], "expected a key template"));
        }
        if self.ttl.is_some_and(|ttl| ttl.get().as_millis() == 0) {
            problems.push(FieldProblem::at(
                ["ttl"],
                "expected a duration of at least 1ms",
            ));
        }
        if self.only_newer && self.mode == RedisMode::Stream {
            problems.push(FieldProblem::at(
                ["only_newer"],
                "applies to `hash` and `json` mode: a stream keeps every reading",
            ));
        }
        match self.maxlen {
            Some(_) if self.mode != RedisMode::Stream => problems.push(FieldProblem::at(
                ["maxlen"],
                "applies to `stream` mode only",
            )),
            Some(0) => problems.push(FieldProblem::at(["maxlen"], "expected at least one entry")),
            _ => {}
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

    fn build(&self, cx: SinkContext) -> anyhow::Result<ComponentTask> {
        let target = Target {
            urls: connection::split_urls(self.url.expose_str()),
            cluster: self.cluster,
            certificates: self
                .tls
                .as_ref()
                .map(connection::certificates)
                .transpose()?,
            timeout: self.timeout.get(),
            max_backoff: self.retry.max_backoff.get(),
        };
        let buffer_dir = cx.buffer_dir();
        let sink = Sink {
            component: cx.id.as_arc(),
            key: self.key.clone(),
            commands: Commands {
                mode: self.mode,
                ttl_ms: self.ttl.map_or(0, |ttl| {
                    ttl.get().as_millis().try_into().unwrap_or(u64::MAX)
                }),
                only_newer: self.only_newer,
                maxlen: self.maxlen.unwrap_or(DEFAULT_MAXLEN),
            },
            cluster: self.cluster,
            retry: self.retry,
            out: cx.out,
            telemetry: cx.telemetry.clone(),
        };
        let buffer = Buffer::new(
            cx.input,
            self.buffer,
            BufferType::Memory,
            cx.telemetry,
            buffer_dir,
        );
        let max_batch = self.max_batch;
        Ok(Box::pin(async move {
            sink.run(buffer, target, max_batch).await;
            Ok(())
        }))
    }
}

impl RedisConfig {
    fn check_url(&self) -> Vec<FieldProblem> {
        let urls = connection::split_urls(self.url.expose_str());
        let mut problems: Vec<FieldProblem> = urls
            .iter()
            .filter_map(|url| connection::check_url(url).err())
            .map(|message| FieldProblem::at(["url"], message))
            .collect();
        if urls.is_empty() {
            problems.push(FieldProblem::at(
                ["url"],
                "expected a redis:// or rediss:// URL",
            ));
        }
        if urls.len() > 1 && !self.cluster {
            problems.push(FieldProblem::at(
                ["url"],
                "several URLs name the nodes of a cluster: add `cluster: true`, or give one URL",
            ));
        }
        if self.tls.is_some() && !urls.iter().all(|url| url.starts_with("rediss://")) {
            problems.push(FieldProblem::at(
                ["tls"],
                "applies to `rediss://` URLs (TLS); use `rediss://` or remove `tls`",
            ));
        }
        problems
    }
}

/// The running sink.
struct Sink {
    component: Arc<str>,
    key: Template,
    commands: Commands,
    cluster: bool,
    retry: RetryConfig,
    out: Outputs,
    telemetry: ComponentTelemetry,
}

/// An event waiting for Redis's reply, with its rendered key.
struct Item {
    event: Event,
    key: String,
}

/// Events Redis has not confirmed yet. Dropping them unconfirmed (the sink task is
/// cancelled mid-write) marks their deliveries failed instead of acknowledging them.
#[derive(Default)]
struct Pending(Vec<Item>);

impl Pending {
    /// The events, for settling by their replies.
    fn take(&mut self) -> Vec<Item> {
        std::mem::take(&mut self.0)
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        for item in &self.0 {
            item.event.fail_delivery();
        }
    }
}

/// One batch on its way: what is still to be written and what came of the rest.
#[derive(Default)]
struct Progress {
    pending: Pending,
    /// Bound for `errors`; failed like `pending` if the sink stops before sending them.
    refused: Vec<Event>,
    written: usize,
    skipped: usize,
    bytes: usize,
}

impl Drop for Progress {
    fn drop(&mut self) {
        for event in &self.refused {
            event.fail_delivery();
        }
    }
}

/// What Redis made of one event's commands.
enum Outcome {
    Written,
    /// `only_newer` kept the stored, newer document.
    Skipped,
    /// Worth another attempt (the server is loading, the script cache is empty).
    Retry {
        reason: String,
        missing_script: bool,
    },
    /// Refused for good (WRONGTYPE, ...).
    Refused(String),
}

impl Sink {
    async fn run(self, mut buffer: Buffer, target: Target, max_batch: usize) {
        let connection = with_retries(&self.retry, &self.telemetry, || async {
            target.connect().await.map_err(|err| {
                WriteError::Transient(
                    err.context(format!("cannot connect to Redis at {}", target.describe())),
                )
            })
        })
        .await;
        let Ok(connection) = connection else {
            // Connecting only fails transiently, and those failures are retried forever.
            return;
        };
        // Scripts are loaded before the first EVALSHA, and again after a NOSCRIPT.
        let mut load_scripts = self.commands.only_newer;
        while let Some(chunk) = buffer.next(max_batch).await {
            load_scripts = self.write(chunk.events, &connection, load_scripts).await;
        }
    }

    /// Writes one batch until every event is written, skipped or refused; returns whether
    /// the scripts must be loaded before the next batch.
    async fn write(&self, events: Vec<Event>, connection: &Connection, load_scripts: bool) -> bool {
        let started = Instant::now();
        let mut progress = Progress::default();
        for event in events {
            match self.key.render(&event.view()) {
                Ok(key) if !key.is_empty() => progress.pending.0.push(Item { event, key }),
                Ok(_) => self.refuse_key(&mut progress, event, "rendered an empty key"),
                Err(err) => self.refuse_key(&mut progress, event, &err.to_string()),
            }
        }
        let state = Mutex::new((progress, load_scripts));
        // Only transient failures come back from an attempt, and those are retried.
        let _ = with_retries(&self.retry, &self.telemetry, || {
            self.attempt(connection, &state)
        })
        .await;
        let (mut progress, load_scripts) = state.into_inner().unwrap_or_else(|p| p.into_inner());
        self.telemetry
            .sent_events("default")
            .inc_by(progress.written as u64);
        EventsDiscarded {
            count: progress.skipped,
            intentional: true,
        }
        .emit(&self.telemetry);
        BatchCommitted {
            events: progress.written + progress.skipped,
            bytes: progress.bytes,
            duration: started.elapsed(),
        }
        .emit(&self.telemetry);
        if !progress.refused.is_empty() {
            let refused = std::mem::take(&mut progress.refused);
            self.out
                .send_named("errors", EventBatch::new(refused))
                .await;
        }
        load_scripts
    }

    fn refuse_key(&self, progress: &mut Progress, event: Event, why: &str) {
        let message = format!("key template `{}` {why}", self.key.source());
        ComponentError {
            error_type: ErrorType::Expression,
            stage: Stage::Processing,
            message: &message,
            count: 1,
        }
        .emit(&self.telemetry);
        progress
            .refused
            .push(event.with_error(&self.component, message));
    }

    /// One attempt at writing what is pending.
    async fn attempt(
        &self,
        connection: &Connection,
        state: &Mutex<(Progress, bool)>,
    ) -> Result<(), WriteError> {
        let (pending, load_scripts) = {
            let mut state = lock(state);
            (std::mem::take(&mut state.0.pending), state.1)
        };
        if pending.0.is_empty() {
            return Ok(());
        }
        if load_scripts && let Err(err) = connection.load_scripts().await {
            lock(state).0.pending = pending;
            return Err(WriteError::Transient(
                anyhow::Error::new(err).context("cannot load the only_newer scripts into Redis"),
            ));
        }
        lock(state).1 = false;

        let per_event = self.commands.per_event();
        let mut pipe = redis::pipe();
        let mut keys: Vec<&str> = Vec::new();
        let mut bytes = Vec::with_capacity(pending.0.len());
        for item in &pending.0 {
            bytes.push(self.commands.append(&mut pipe, &item.key, &item.event));
            if self.cluster {
                keys.extend(std::iter::repeat_n(item.key.as_str(), per_event));
            }
        }
        let replies = connection.send(pipe, &keys).await;
        drop(keys);
        let replies = match replies {
            Ok(replies) if replies.len() == pending.0.len() * per_event => replies,
            Ok(replies) => {
                let message = format!(
                    "Redis sent {} replies to {} commands",
                    replies.len(),
                    pending.0.len() * per_event
                );
                lock(state).0.pending = pending;
                return Err(WriteError::Transient(anyhow::anyhow!(message)));
            }
            Err(err) => {
                lock(state).0.pending = pending;
                return Err(WriteError::Transient(
                    anyhow::Error::new(err).context("Redis did not answer the batch"),
                ));
            }
        };
        self.settle(state, pending, &bytes, &replies)
    }

    /// Sorts the pending events by their replies.
    fn settle(
        &self,
        state: &Mutex<(Progress, bool)>,
        mut pending: Pending,
        bytes: &[usize],
        replies: &Replies,
    ) -> Result<(), WriteError> {
        let mut state = lock(state);
        let (progress, load_scripts) = &mut *state;
        let mut retry_reason = None;
        let mut refused = 0;
        let mut first_refusal = None;
        let per_event = self.commands.per_event();
        for ((item, bytes), replies) in pending
            .take()
            .into_iter()
            .zip(bytes)
            .zip(replies.chunks(per_event))
        {
            match outcome(replies, self.commands.only_newer) {
                Outcome::Written => {
                    progress.written += 1;
                    progress.bytes += bytes;
                }
                Outcome::Skipped => progress.skipped += 1,
                Outcome::Retry {
                    reason,
                    missing_script,
                } => {
                    *load_scripts |= missing_script;
                    retry_reason.get_or_insert(reason);
                    progress.pending.0.push(item);
                }
                Outcome::Refused(reason) => {
                    let message = format!("Redis refused the write to `{}`: {reason}", item.key);
                    refused += 1;
                    progress
                        .refused
                        .push(item.event.with_error(&self.component, message.clone()));
                    first_refusal.get_or_insert(message);
                }
            }
        }
        if let Some(message) = first_refusal {
            ComponentError {
                error_type: ErrorType::Io,
                stage: Stage::Sending,
                message: &format!("{message} ({refused} events of the batch refused)"),
                count: refused,
            }
            .emit(&self.telemetry);
        }
        match retry_reason {
            None => Ok(()),
            Some(reason) => Err(WriteError::Transient(anyhow::anyhow!(
                "Redis could not take {} events now: {reason}",
                progress.pending.0.len()
            ))),
        }
    }
}

fn lock<T>(state: &Mutex<T>) -> MutexGuard<'_, T> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the replies to one event's commands mean.
fn outcome(replies: &[redis::RedisResult<redis::Value>], only_newer: bool) -> Outcome {
    for reply in replies {
        match reply {
            Err(err) if is_transient(err) => {
                return Outcome::Retry {
                    reason: err.to_string(),
                    missing_script: err.code() == Some("NOSCRIPT"),
                };
            }
            Err(err) => return Outcome::Refused(err.to_string()),
            Ok(redis::Value::Int(0)) if only_newer => return Outcome::Skipped,
            Ok(_) => {}
        }
    }
    Outcome::Written
}

/// Errors that say "not now" rather than "never".
fn is_transient(err: &redis::RedisError) -> bool {
    const NOT_NOW: [&str; 10] = [
        "NOSCRIPT",
        "LOADING",
        "TRYAGAIN",
        "CLUSTERDOWN",
        "MASTERDOWN",
        "READONLY",
        "MOVED",
        "ASK",
        "OOM",
        "BUSY",
    ];
    err.is_io_error()
        || err.is_timeout()
        || err.is_connection_dropped()
        || err.code().is_some_and(|code| NOT_NOW.contains(&code))
}

#[cfg(test)]
mod tests {
    use redis::{ErrorKind, RedisError, ServerErrorKind, Value};

    use super::*;

    fn server(kind: ServerErrorKind) -> redis::RedisResult<Value> {
        Err(RedisError::from((
            ErrorKind::Server(kind),
            "from the server",
        )))
    }

    fn extension(code: &str) -> redis::RedisResult<Value> {
        Err(redis::make_extension_error(
            code.into(),
            Some("detail".into()),
        ))
    }

    #[test]
    fn replies_decide_each_event() {
        let ok = || Ok(Value::Okay);
        assert!(matches!(outcome(&[ok(), ok()], false), Outcome::Written));
        assert!(matches!(
            outcome(&[Ok(Value::Int(0))], false),
            Outcome::Written
        ));
        assert!(matches!(
            outcome(&[Ok(Value::Int(0))], true),
            Outcome::Skipped
        ));
        assert!(matches!(
            outcome(&[Ok(Value::Int(1))], true),
            Outcome::Written
        ));
        assert!(matches!(
            outcome(&[ok(), extension("WRONGTYPE")], false),
            Outcome::Refused(reason) if reason.contains("WRONGTYPE")
        ));
        assert!(matches!(
            outcome(&[server(ServerErrorKind::NoScript)], true),
            Outcome::Retry {
                missing_script: true,
                ..
            }
        ));
        for kind in [
            ServerErrorKind::BusyLoading,
            ServerErrorKind::TryAgain,
            ServerErrorKind::ClusterDown,
            ServerErrorKind::ReadOnly,
        ] {
            assert!(matches!(
                outcome(&[server(kind)], false),
                Outcome::Retry {
                    missing_script: false,
                    ..
                }
            ));
        }
        assert!(matches!(
            outcome(&[extension("OOM")], false),
            Outcome::Retry { .. }
        ));
        assert!(matches!(
            outcome(&[server(ServerErrorKind::ResponseError)], false),
            Outcome::Refused(_)
        ));
    }
}
