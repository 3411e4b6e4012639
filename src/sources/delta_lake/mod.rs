//! `delta_lake` (source): reads a Delta Lake table back into the pipeline — the cold path's
//! recompute, backfill and replay (`weir run --batch`).
//!
//! The source lists the table's live data files from its snapshot (at `version` or
//! `timestamp` for time travel; see [`plan`]), skips the files that cannot hold a wanted
//! row (partition values against `partition_filters`, the `time` column's min/max
//! statistics against `since`/`until`), and streams the rest with the Parquet crate's
//! async reader (no query engine; see [`read`]). Each row becomes an event: `device_id`,
//! event time from the `time` column, the other columns as fields, and the partition
//! columns restored from the file's partition values (the `date` and `hour` partitions the
//! sink derives from event time are not fields, nor is `received_at`).
//!
//! Files are read in order of their earliest event time and rows in their stored order, so
//! windows downstream see each device's readings in about the order they were written.
//! The source is bounded: once every planned file is read it ends, and with it the run.
//! Tables with deletion vectors or column mapping are refused with an error that says so.

mod fetch;
mod plan;
mod read;
mod rows;

use std::collections::BTreeMap;
use std::sync::Arc;

use jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{SourceComponent, SourceContext};
use crate::config::{BatchRange, FieldProblem, RedactedUrl, Sensitive};
use crate::telemetry::InternalEvent;
use crate::telemetry::events::EventsReceived;
use crate::topology::ComponentTask;

use plan::{Plan, Wanted};
use read::{FileReader, Projection, Read};

/// Reads a Delta Lake table, once.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeltaLakeSourceConfig {
    /// The table: a local path, `file://…`, `s3://bucket/prefix` or `az://container/prefix`.
    pub uri: RedactedUrl,
    /// Options of the object store (credentials, region, endpoint), as for the sink.
    /// Their values are never shown.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub storage_options: BTreeMap<String, Sensitive>,
    /// Read rows whose event time (`time`) is at or after this instant (RFC 3339);
    /// `weir run --batch --since` overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub since: Option<Timestamp>,
    /// Read rows whose event time is before this instant (RFC 3339); `weir run --batch
    /// --until` overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub until: Option<Timestamp>,
    /// Read only files whose partition column has one of these values, e.g.
    /// `{ site: [plant-1, plant-2] }` or `{ date: "2026-12-06" }`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub partition_filters: BTreeMap<String, OneOrMany>,
    /// Read the table as of this version (time travel); default: the latest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Read the table as it was at this instant (RFC 3339; time travel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub timestamp: Option<Timestamp>,
    /// The columns to read as fields (and partition columns to restore); default: all.
    /// `device_id` and `time` are always read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<Vec<String>>,
    /// Rows per batch sent downstream.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Files read at once (each decoded on its own task, handed on in order).
    #[serde(default = "default_read_ahead")]
    pub read_ahead: usize,
}

/// One value or a list of them.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn values(&self) -> Vec<String> {
        match self {
            Self::One(value) => vec![value.clone()],
            Self::Many(values) => values.clone(),
        }
    }
}

fn default_batch_size() -> usize {
    8192
}

fn default_read_ahead() -> usize {
    2
}

impl DeltaLakeSourceConfig {
    /// The event-time range this source reads, the batch run's ends taking precedence.
    fn range(&self, run: Option<&BatchRange>) -> BatchRange {
        BatchRange {
            since: run.and_then(|r| r.since).or(self.since),
            until: run.and_then(|r| r.until).or(self.until),
        }
    }
}

impl SourceComponent for DeltaLakeSourceConfig {
    fn check(&self) -> Vec<FieldProblem> {
        let mut problems = Vec::new();
        if let Some(message) = crate::lake::check_uri(&self.uri) {
            problems.push(FieldProblem::at(["uri"], message));
        }
        if let (Some(since), Some(until)) = (self.since, self.until)
            && since >= until
        {
            problems.push(FieldProblem::at(
                ["until"],
                format!("expected an instant after `since` ({since})"),
            ));
        }
        if self.version.is_some() && self.timestamp.is_some() {
            problems.push(FieldProblem::at(
                ["timestamp"],
                "expected `version` or `timestamp`, not both",
            ));
        }
        if self.batch_size == 0 {
            problems.push(FieldProblem::at(
                ["batch_size"],
                "expected at least one row",
            ));
        }
        if self.read_ahead == 0 {
            problems.push(FieldProblem::at(
                ["read_ahead"],
                "expected at least one file",
            ));
        }
        for (name, values) in &self.partition_filters {
            if values.values().is_empty() {
                problems.push(FieldProblem::at(
                    ["partition_filters", name.as_str()],
                    "expected at least one value",
                ));
            }
        }
        problems
    }

    fn bounded(&self) -> Option<BatchRange> {
        Some(self.range(None))
    }

    fn build(&self, cx: SourceContext) -> anyhow::Result<ComponentTask> {
        let url = crate::lake::table_url(&self.uri).map_err(anyhow::Error::msg)?;
        let config = self.clone();
        Ok(Box::pin(async move { run(config, url, cx).await }))
    }
}

async fn run(
    config: DeltaLakeSourceConfig,
    url: url::Url,
    cx: SourceContext,
) -> anyhow::Result<()> {
    let range = config.range(cx.run.batch());
    let wanted = Wanted {
        range: range.clone(),
        partitions: config
            .partition_filters
            .iter()
            .map(|(name, values)| (name.clone(), values.values()))
            .collect(),
    };
    let plan = Plan::make(&url, &config, &wanted).await.map_err(|err| {
        err.context(format!(
            "{}: cannot plan the read of {}",
            cx.id,
            crate::redact::url(url.as_str())
        ))
    })?;
    cx.telemetry
        .source_files("skipped")
        .inc_by(plan.skipped as u64);
    cx.telemetry
        .source_planned_rows()
        .set(i64::try_from(plan.rows).unwrap_or(i64::MAX));
    tracing::info!(
        component_id = %cx.id,
        version = plan.version,
        files = plan.files.len(),
        skipped = plan.skipped,
        rows = plan.rows,
        "reading the table"
    );
    let projection = Arc::new(Projection::new(&plan, config.columns.as_deref(), range));
    let files_read = cx.telemetry.source_files("read");
    let source: Arc<str> = cx.id.as_arc();
    // Up to `read_ahead` files decode at once, each into its own channel; they are handed
    // on in plan order.
    let (order_tx, mut order_rx) =
        mpsc::channel::<(String, mpsc::Receiver<anyhow::Result<Read>>)>(config.read_ahead);
    let store = plan.store.clone();
    let files = plan.files;
    let batch_size = config.batch_size;
    let builders = read::builders();
    let producer = tokio::spawn(async move {
        for file in files {
            let (tx, rx) = mpsc::channel(2);
            let path = file.path.to_string();
            let reader = FileReader {
                store: store.clone(),
                file,
                projection: Arc::clone(&projection),
                batch_size,
                source: Arc::clone(&source),
                builders,
            };
            tokio::spawn(reader.run(tx));
            if order_tx.send((path, rx)).await.is_err() {
                break;
            }
        }
    });
    let outcome = async {
        while let Some((path, mut file)) = order_rx.recv().await {
            let context = || {
                format!(
                    "{}: reading `{path}` of {}",
                    cx.id,
                    crate::redact::url(url.as_str())
                )
            };
            loop {
                let batch = match file.recv().await {
                    Some(Ok(Read::Batch(batch))) => batch,
                    Some(Ok(Read::Done)) => break,
                    Some(Err(err)) => return Err(err.context(context())),
                    None => anyhow::bail!("{}: its reader stopped before the end", context()),
                };
                EventsReceived {
                    count: batch.len(),
                    bytes: 0,
                }
                .emit(&cx.telemetry);
                tokio::select! {
                    biased;
                    () = cx.shutdown.cancelled() => return Ok(()),
                    () = cx.out.send(batch) => {}
                }
            }
            files_read.inc();
            if cx.shutdown.is_cancelled() {
                return Ok(());
            }
        }
        Ok(())
    }
    .await;
    producer.abort();
    if outcome.is_ok() && !cx.shutdown.is_cancelled() {
        tracing::info!(component_id = %cx.id, "read every planned file");
    }
    outcome
}
