//! `delta_lake`: the cold path. Every event becomes a row of a Delta Lake table, on local
//! disk (`file://`, the default) or object storage (`s3://`, `az://`).
//!
//! Rows are gathered into large files: the sink commits when the open window holds
//! `batch.max_events` rows or `batch.max_bytes` of encoded Parquet, or when its oldest row
//! is `batch.timeout` old.
//!
//! The sink reads through a disk buffer unless configured otherwise: a source's
//! acknowledgement then waits for the buffer's durable append (milliseconds), not for a
//! commit that may be a minute away, and the buffer is trimmed once a commit holds its
//! records. Each commit records the buffer position it covers, so after a crash the sink
//! skips what the table already holds: every record lands exactly once (see [`ledger`]).
//! With `buffer: { type: memory }` events are acknowledged upstream only once the commit
//! that holds them is in the Delta log, and a crash after a commit but before the
//! acknowledgement makes the source send them again. Either way a commit whose outcome was
//! unclear is never written twice. Readings that do not fit the table go to `errors` at
//! least once, after the commit of their chunk's rows, and are never lost to a crash (see
//! [`dead_letters`]). See [`columns`] for how fields become columns and [`table`] for the
//! commit protocol.

mod columns;
mod compact;
mod dead_letters;
mod ledger;
mod schedule;
mod table;

pub use schedule::{BatchConfig, OptimizeConfig, VacuumConfig};

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use url::Url;

use self::columns::{ColumnType, Columns, Derived};
use self::table::{TableSpec, TableWriter};
use super::retry::{Backoff, RetryConfig, WriteError};
use super::{SinkComponent, SinkContext};
use crate::buffers::{Buffer, BufferConfig, BufferType, Chunk};
use crate::config::{self, FieldProblem, RedactedUrl, Resource, Sensitive};
use crate::event::{Event, Unsettled};
use crate::telemetry::events::{BatchCommitted, ComponentError, ErrorType, Stage};
use crate::telemetry::{ComponentTelemetry, InternalEvent};
use crate::topology::ComponentTask;
use crate::topology::channel::Outputs;

/// Appends events to a Delta Lake table.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeltaLakeConfig {
    /// Where the table lives: `file:///var/lib/weir/lake/telemetry`, a local path,
    /// `s3://bucket/prefix` or `az://container/prefix`. Created on the first commit if absent.
    pub uri: RedactedUrl,
    /// Options of the object store (credentials, region, endpoint), e.g. `AWS_REGION`.
    /// Their values are never shown (they may be keys).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub storage_options: BTreeMap<String, Sensitive>,
    /// Partition columns: `date` or `hour` (derived from event time, UTC) or field names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partition_by: Vec<String>,
    /// Declared column types for fields (`string`, `double`, `long`, `boolean`,
    /// `timestamp`); other fields get a type from their first value.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub schema: IndexMap<String, ColumnType>,
    /// Add a nullable column for a field the table does not have yet. Off: such events go
    /// to the `errors` output.
    #[serde(default = "default_true")]
    pub evolve_schema: bool,
    /// The most columns schema evolution may grow the table to, the sink's own columns
    /// (`device_id`, `time`, `received_at`, derived partitions) included. An event whose
    /// new field would go beyond it goes to the `errors` output, so devices sending ever
    /// new field names cannot widen the table without limit.
    #[serde(default = "default_max_columns")]
    pub max_columns: usize,
    #[serde(default)]
    pub batch: BatchConfig,
    /// Write a Delta checkpoint every this many commits (new tables).
    #[serde(default = "default_checkpoint_interval")]
    pub checkpoint_interval: u64,
    /// Names this writer in the table's transaction log (default `weir-<component id>`);
    /// the log records it as `<app_id>@<instance id>` (see `WEIR_INSTANCE_ID`), so two weir
    /// instances writing one table never share one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_id: Option<String>,
    /// Rewrite small files into large ones now and then; default: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optimize: Option<OptimizeConfig>,
    /// Delete unreferenced data files now and then; default: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vacuum: Option<VacuumConfig>,
    /// Where events wait for their commit. Default `{ type: disk }` (in
    /// `data_dir/buffers/<id>/`, at most `max_size`, 1GiB unless set): sources are
    /// acknowledged once an event is durably appended, in milliseconds, and each commit
    /// records the buffer position it covers, so a crash neither loses nor duplicates a
    /// row. `{ type: memory }`: sources wait for the commit (up to `batch.timeout`), and
    /// a crash after a commit but before the acknowledgement duplicates what they resend.
    #[serde(default)]
    pub buffer: BufferConfig,
    #[serde(default)]
    pub retry: RetryConfig,
}

/// The buffer a `delta_lake` sink gets when `buffer:` names no type.
const DEFAULT_BUFFER: BufferType = BufferType::Disk;

fn default_true() -> bool {
    true
}

fn default_max_columns() -> usize {
    500
}

fn default_checkpoint_interval() -> u64 {
    10
}

/// Rows encoded per chunk: large enough for Arrow to be efficient, small enough that a
/// chunk's events are not held long.
const CHUNK_EVENTS: usize = 8192;

/// The open window commits early once it holds this many dead letters (or
/// `batch.max_events`, if fewer): they wait for its commit as whole events in memory, not
/// encoded like rows, so a stream of mostly misfits must not pile them up for a minute.
const MAX_HELD_DEAD_LETTERS: usize = 50_000;

impl DeltaLakeConfig {
    /// The table's URL; a plain path is a local directory.
    fn url(&self) -> Result<Url, String> {
        crate::lake::table_url(&self.uri)
    }

    fn derived(&self) -> Vec<Derived> {
        self.partition_by
            .iter()
            .filter_map(|name| Derived::from_name(name))
            .collect()
    }

    /// Field partitions must exist from the first commit: they are declared as strings
    /// unless `schema` says otherwise.
    fn declared(&self) -> IndexMap<String, ColumnType> {
        let mut declared = self.schema.clone();
        for name in &self.partition_by {
            if Derived::from_name(name).is_none() {
                declared.entry(name.clone()).or_insert(ColumnType::String);
            }
        }
        declared
    }
}

impl SinkComponent for DeltaLakeConfig {
    fn check(&self) -> Vec<FieldProblem> {
        let mut problems = Vec::new();
        if let Some(message) = crate::lake::check_uri(&self.uri) {
            problems.push(FieldProblem::at(["uri"], message));
        }
        let mut seen = std::collections::BTreeSet::new();
        for name in &self.partition_by {
            if !seen.insert(name) {
                problems.push(FieldProblem::at(
                    ["partition_by"],
                    format!("`{name}` is listed twice"),
                ));
            }
            if matches!(name.as_str(), "device_id" | "time" | "received_at") {
                problems.push(FieldProblem::at(
                    ["partition_by"],
                    format!(
                        "`{name}` has one value per device or per reading; expected `date`, `hour` or a low-cardinality field"
                    ),
                ));
            }
        }
        for name in self.schema.keys() {
            if matches!(name.as_str(), "device_id" | "time" | "received_at")
                || Derived::from_name(name).is_some()
            {
                problems.push(FieldProblem::at(
                    ["schema", name.as_str()],
                    "this column is filled by the sink itself; expected a field name",
                ));
            }
        }
        if self.batch.max_events == 0 {
            problems.push(FieldProblem::at(
                ["batch", "max_events"],
                "expected at least one event",
            ));
        }
        let initial = Columns::column_count(self.derived().len(), self.declared().len());
        if self.max_columns < initial {
            problems.push(FieldProblem::at(
                ["max_columns"],
                format!(
                    "expected at least {initial}: the sink's own, partition and declared columns"
                ),
            ));
        }
        if self.checkpoint_interval == 0 {
            problems.push(FieldProblem::at(
                ["checkpoint_interval"],
                "expected at least one commit",
            ));
        }
        problems.extend(self.buffer.check(DEFAULT_BUFFER));
        problems.extend(self.retry.check());
        problems
    }

    fn commit_delay(&self) -> Option<std::time::Duration> {
        Some(self.batch.timeout.get())
    }

    fn resources(&self) -> Vec<Resource> {
        // A local table is held like a file: one writer per process, and a reload starts
        // the new instance only after the old one committed and stopped.
        match self.url() {
            Ok(url) if url.scheme() == "file" => url
                .to_file_path()
                .map(|path| vec![Resource::File(path)])
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    fn disk_buffer(&self) -> bool {
        self.buffer.is_disk(DEFAULT_BUFFER)
    }

    fn build(&self, cx: SinkContext) -> anyhow::Result<ComponentTask> {
        let url = self.url().map_err(|message| anyhow::anyhow!(message))?;
        let config = self.clone();
        let buffer_dir = cx.buffer_dir();
        let instance = cx.instance_id.get()?;
        let SinkContext {
            id,
            input,
            out,
            telemetry,
            run: cx_run,
            ..
        } = cx;
        let app_id = config
            .app_id
            .clone()
            .unwrap_or_else(|| format!("weir-{id}"));
        let columns = Columns::new(config.derived(), config.declared(), config.max_columns);
        let spec = TableSpec {
            url,
            storage_options: config
                .storage_options
                .iter()
                .map(|(k, v)| (k.clone(), v.expose().clone()))
                .collect::<HashMap<_, _>>()
                .into(),
            partition_columns: columns.partition_columns(
                &config
                    .partition_by
                    .iter()
                    .filter(|name| Derived::from_name(name).is_none())
                    .cloned()
                    .collect::<Vec<_>>(),
            ),
            checkpoint_interval: config.checkpoint_interval,
            writer: format!("{app_id}@{instance}"),
            batch: cx_run
                .batch()
                .map(|range| format!("{app_id}:batch:{}", range.key())),
        };
        let buffer = Buffer::new(
            input,
            config.buffer,
            DEFAULT_BUFFER,
            telemetry.clone(),
            buffer_dir,
        );
        let sink = DeltaSink {
            component: Arc::from(id.as_str()),
            config,
            columns,
            out,
            telemetry,
        };
        Ok(Box::pin(sink.run(spec, buffer)))
    }
}

/// The running sink.
struct DeltaSink {
    component: Arc<str>,
    config: DeltaLakeConfig,
    columns: Columns,
    out: Outputs,
    telemetry: ComponentTelemetry,
}

impl DeltaSink {
    async fn run(mut self, spec: TableSpec, mut buffer: Buffer) -> anyhow::Result<()> {
        crate::lake::register_object_stores();
        let mut table = {
            let mut backoff = Backoff::new(&self.config.retry, &self.telemetry);
            loop {
                match TableWriter::open(spec.clone(), &mut self.columns).await {
                    Ok(table) => break table,
                    Err(WriteError::Permanent(err)) => return Err(err),
                    Err(WriteError::Transient(err)) => backoff.wait(&err).await,
                }
            }
        };
        if self.finished_before(&mut table).await? {
            return drain(buffer).await;
        }
        let timeout = self.config.batch.timeout.get();
        let mut window_started: Option<Instant> = None;
        let mut next_vacuum = self.config.vacuum.map(|v| after(v.interval));
        let mut next_optimize = self.config.optimize.map(|o| after(o.interval));
        loop {
            let deadline = window_started.map(|t| tokio::time::Instant::from_std(t + timeout));
            let events = tokio::select! {
                events = buffer.next(CHUNK_EVENTS) => events,
                () = sleep_until(deadline) => {
                    self.commit(&mut table, &mut window_started).await;
                    continue;
                }
                () = sleep_until(next_vacuum) => {
                    self.vacuum(&mut table).await;
                    next_vacuum = self.config.vacuum.map(|v| after(v.interval));
                    continue;
                }
                () = sleep_until(next_optimize) => {
                    self.optimize(&mut table).await;
                    next_optimize = self.config.optimize.map(|o| after(o.interval));
                    continue;
                }
            };
            let Some(chunk) = events else { break };
            self.take(&mut table, chunk).await;
            // Opening the table to a new buffer incarnation or adding columns commits the
            // window: its dead letters may go.
            self.send_dead_letters(&mut table).await;
            if table.rows() > 0 && window_started.is_none() {
                window_started = Some(Instant::now());
            }
            let max_events = self.config.batch.max_events;
            if table.rows() >= max_events
                || table.bytes() as u64 >= self.config.batch.max_bytes.get()
                || table.dead_letters_held() >= max_events.min(MAX_HELD_DEAD_LETTERS)
            {
                self.commit(&mut table, &mut window_started).await;
            }
        }
        self.commit(&mut table, &mut window_started).await;
        self.finish_batch(&mut table).await
    }

    /// A batch run whose range an earlier run committed: says so (its input is then
    /// drained and dropped, not written twice).
    async fn finished_before(&self, table: &mut TableWriter) -> anyhow::Result<bool> {
        let done = table.batch_done().await?;
        if done {
            tracing::warn!(
                component_id = %self.component,
                "an earlier batch run committed this range to the table already; this run writes nothing to it"
            );
        }
        Ok(done)
    }

    /// A batch run's one commit, retried a few times: a run that cannot commit fails (and
    /// exits non-zero) rather than wait forever.
    async fn finish_batch(&self, table: &mut TableWriter) -> anyhow::Result<()> {
        const ATTEMPTS: usize = 5;
        let mut backoff = Backoff::new(&self.config.retry, &self.telemetry);
        for attempt in 1.. {
            match table.finish_batch().await {
                Ok(0) => break,
                Ok(files) => {
                    tracing::info!(component_id = %self.component, files, "committed the batch run");
                    break;
                }
                Err(err) if attempt >= ATTEMPTS => {
                    return Err(err.context(format!(
                        "{}: the batch run's commit failed {ATTEMPTS} times",
                        self.component
                    )));
                }
                Err(err) => backoff.wait(&err).await,
            }
        }
        Ok(())
    }

    /// Takes one chunk from the buffer: drops what the table already holds (records a
    /// disk buffer hands out again after a crash), and writes the rest.
    async fn take(&mut self, table: &mut TableWriter, mut chunk: Chunk) {
        let abandons = table.abandons();
        let mut backoff = Backoff::new(&self.config.retry, &self.telemetry);
        while let Err(err) = table.follow(chunk.position.as_ref()).await {
            backoff.wait(&err).await;
        }
        if table.abandons() != abandons {
            // The rows before this chunk come again: so must it, after them.
            Unsettled::of(&chunk.events).fail();
            return;
        }
        let before = chunk.events.len();
        let committed = table.sort(&mut chunk);
        let held = before - chunk.events.len();
        if held > 0 {
            tracing::info!(
                component_id = %self.component,
                records = held,
                "skipped buffer records the table already holds"
            );
        }
        // Their dead letters may not have reached `errors` (the crash came first, or they
        // failed there): determined again, and sent again.
        let misfits = self.columns.misfits(committed, self.config.evolve_schema);
        let misfits = dead_letters::mark(&self.component, misfits);
        self.send(misfits).await;
        if !chunk.events.is_empty() {
            let end = chunk.end_seq();
            self.write(table, chunk.events, end, abandons).await;
        }
    }

    /// Encodes one chunk (which ends at buffer position `end`) and streams its rows into the
    /// window with its misfits, which go to `errors` after the window's commit; unless the
    /// table gave up a window since it had `abandons` (see [`TableWriter::abandons`]).
    async fn write(
        &mut self,
        table: &mut TableWriter,
        events: Vec<Event>,
        end: Option<u64>,
        abandons: u64,
    ) {
        let encoded = match self.columns.encode(events, self.config.evolve_schema) {
            Ok(encoded) => encoded,
            Err(err) => {
                // Building Arrow arrays from checked values does not fail; if it ever does,
                // say so loudly (`encode` has failed the chunk's deliveries).
                ComponentError {
                    error_type: ErrorType::Encode,
                    stage: Stage::Processing,
                    message: &format!("cannot encode events: {err:#}"),
                    count: 1,
                }
                .emit(&self.telemetry);
                return;
            }
        };
        let misfits = dead_letters::mark(&self.component, encoded.rejected);
        if encoded.accepted.is_empty() {
            // No row of the chunk waits for a commit that could be given up.
            self.send(misfits).await;
            return;
        }
        // Held from here until the writer holds them: failed if the sink stops meanwhile.
        let deliveries = Unsettled::of(&encoded.accepted);
        let rows = encoded.accepted.len();
        // The rows are encoded; the events themselves are no longer needed.
        drop(encoded.accepted);
        let mut backoff = Backoff::new(&self.config.retry, &self.telemetry);
        while let Err(err) = table.ensure_columns(&mut self.columns).await {
            backoff.wait(&err).await;
        }
        if table.abandons() != abandons {
            // Adding columns committed the rows before and that failed: they come again,
            // and this chunk after them (its misfits with it, not sent).
            deliveries.fail();
            Unsettled::of(&misfits).fail();
            return;
        }
        if let Err(err) = table.write(encoded.batch, deliveries, misfits, end).await {
            ComponentError {
                error_type: ErrorType::Io,
                stage: Stage::Sending,
                message: &format!(
                    "cannot write {rows} rows: {err}; the open window is abandoned and its sources will deliver it again"
                ),
                count: rows,
            }
            .emit(&self.telemetry);
            if let Err(err) = table.abandon() {
                tracing::error!(component_id = %self.component, "cannot reopen the table writer: {err:#}");
            }
        }
    }

    /// Commits the open window, retrying until it lands.
    async fn commit(&self, table: &mut TableWriter, window_started: &mut Option<Instant>) {
        let started = Instant::now();
        let mut backoff = Backoff::new(&self.config.retry, &self.telemetry);
        let committed = loop {
            match table.commit().await {
                Ok(committed) => break committed,
                Err(err) => backoff.wait(&err).await,
            }
        };
        *window_started = None;
        self.send_dead_letters(table).await;
        if committed.rows > 0 {
            BatchCommitted {
                events: committed.rows,
                bytes: committed.bytes,
                duration: started.elapsed(),
            }
            .emit(&self.telemetry);
            self.telemetry
                .sent_events("default")
                .inc_by(committed.rows as u64);
        }
    }

    /// One scheduled compaction; a failure is reported and waits for the next one.
    async fn optimize(&self, table: &mut TableWriter) {
        let Some(optimize) = self.config.optimize else {
            return;
        };
        match table.compact(optimize.target_size.get()).await {
            Ok(done) => tracing::info!(
                component_id = %self.component,
                files_removed = done.files_removed,
                files_added = done.files_added,
                "compacted the table"
            ),
            Err(err) => ComponentError {
                error_type: ErrorType::Io,
                stage: Stage::Sending,
                message: &format!("compaction failed: {err:#}; trying again at the next interval"),
                count: 1,
            }
            .emit(&self.telemetry),
        }
    }

    /// One scheduled vacuum; a failure is reported and waits for the next one.
    async fn vacuum(&self, table: &mut TableWriter) {
        let Some(vacuum) = self.config.vacuum else {
            return;
        };
        match table.vacuum(vacuum.retention.get()).await {
            Ok(deleted) => {
                tracing::info!(component_id = %self.component, deleted, "vacuumed the table")
            }
            Err(err) => ComponentError {
                error_type: ErrorType::Io,
                stage: Stage::Sending,
                message: &format!("vacuum failed: {err:#}; trying again at the next interval"),
                count: 1,
            }
            .emit(&self.telemetry),
        }
    }

    /// Sends the dead letters whose window has committed.
    async fn send_dead_letters(&self, table: &mut TableWriter) {
        self.send(table.take_dead_letters()).await;
    }

    /// Sends dead letters to `errors`.
    async fn send(&self, dead_letters: Vec<Event>) {
        // From a memory buffer they fail their requests when `errors` leads nowhere.
        let from_disk = self.config.buffer.is_disk(DEFAULT_BUFFER);
        dead_letters::send(&self.out, &self.telemetry, dead_letters, from_disk).await;
    }
}

/// Reads the input to its end, dropping it: what it holds is in the table already.
async fn drain(mut buffer: Buffer) -> anyhow::Result<()> {
    while buffer.next(CHUNK_EVENTS).await.is_some() {}
    Ok(())
}

fn after(interval: config::Duration) -> tokio::time::Instant {
    tokio::time::Instant::now() + interval.get()
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
