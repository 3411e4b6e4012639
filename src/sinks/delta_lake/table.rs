//! One Delta table and the open write window into it.
//!
//! Rows are streamed into Parquet files as they arrive (`RecordBatchWriter` encodes and
//! uploads incrementally); nothing is visible to readers until [`TableWriter::commit`]
//! adds those files to the Delta log in one transaction. The commit carries an application
//! transaction (`txn`, see [`super::ledger`]: the buffer position the commit covers, or a
//! count of commits), so a commit whose outcome was lost (a timeout after the log entry was
//! written) is recognised on retry instead of being written twice, and so are records a
//! disk buffer hands out again after a crash.
//!
//! In a batch run (`weir run --batch`) the table gets one commit for the whole run: each
//! "commit" only finishes the window's files, and [`TableWriter::finish_batch`] adds all of
//! them at the end under a transaction keyed by the run's range. A rerun of the same range
//! finds that transaction in the log and writes nothing (see [`TableWriter::batch_done`]).

use std::collections::HashMap;

use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, Add, Transaction};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::table::config::TableProperty;
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError};
use url::Url;

use super::columns::Columns;
use super::compact::{Compacted, compact};
use super::dead_letters::DeadLetters;
use super::ledger::{Ledger, Sorted};
use crate::buffers::{Chunk, Position};
use crate::config::Sensitive;
use crate::event::{Event, Unsettled};
use crate::sinks::retry::WriteError;

/// What to open and how to create it.
#[derive(Clone, Debug)]
pub struct TableSpec {
    pub url: Url,
    /// Shown as `***`: it holds the object store's credentials.
    pub storage_options: Sensitive<HashMap<String, String>>,
    pub partition_columns: Vec<String>,
    pub checkpoint_interval: u64,
    /// Names this sink's transactions: `<app_id>@<instance id>` (see [`super::ledger`]).
    pub writer: String,
    /// A batch run: the application transaction its one commit carries, keyed by the
    /// range it covers (`<app_id>:batch:<since>..<until>`, no instance: a rerun anywhere
    /// must find it).
    pub batch: Option<String>,
}

/// A table plus the rows written to it since the last commit.
pub struct TableWriter {
    spec: TableSpec,
    /// The table, once it exists (it is created with the first rows' columns).
    table: Option<DeltaTable>,
    writer: Option<RecordBatchWriter>,
    /// Field columns the table has in its log (the writer may know more after evolving).
    committed_fields: usize,
    /// Which transaction the next commit carries, and what the log holds.
    ledger: Ledger,
    /// Rows written since the last commit.
    rows: usize,
    /// The deliveries of those rows: settled (acknowledged) when the commit lands, failed
    /// if the window is abandoned or the writer dropped before.
    deliveries: Unsettled,
    /// The dead letters of the window's chunks, sent once it committed (see
    /// [`super::dead_letters`]).
    dead_letters: DeadLetters,
    /// Files finished for the open window but not yet in the log, with their size.
    staged: Option<(Vec<Add>, usize)>,
    /// Windows given up so far (see [`TableWriter::abandons`]).
    abandons: u64,
    /// A batch run's finished files, added by its one commit at the end.
    batch_files: Vec<Add>,
}

impl TableWriter {
    /// Opens the table at `spec.url` if it exists (without creating it), returning the
    /// columns it has.
    pub async fn open(spec: TableSpec, columns: &mut Columns) -> Result<Self, WriteError> {
        let transient = |err: anyhow::Error| {
            WriteError::Transient(err.context(format!(
                "cannot open the table at {}",
                crate::redact::url(spec.url.as_str())
            )))
        };
        // A local directory without a log is a table yet to be created: say so without
        // asking deltalake, which logs a spurious error when it probes an empty directory.
        let mut absent = false;
        if spec.url.scheme() == "file"
            && let Ok(path) = spec.url.to_file_path()
        {
            tokio::fs::create_dir_all(&path)
                .await
                .map_err(|err| transient(err.into()))?;
            absent = !tokio::fs::try_exists(path.join("_delta_log"))
                .await
                .unwrap_or(false);
        }
        let mut table = DeltaTableBuilder::from_url(spec.url.clone())
            .and_then(|builder| {
                builder
                    .with_storage_options(spec.storage_options.expose().clone())
                    .build()
            })
            .map_err(|err| WriteError::Permanent(err.into()))?;
        let table = match absent {
            true => None,
            false => match table.load().await {
                Ok(()) => Some(table),
                Err(DeltaTableError::NotATable(_)) => None,
                Err(err) => return Err(transient(err.into())),
            },
        };
        let mut this = Self {
            ledger: Ledger::new(spec.writer.clone()),
            spec,
            table: None,
            writer: None,
            committed_fields: 0,
            rows: 0,
            deliveries: Unsettled::default(),
            dead_letters: DeadLetters::default(),
            staged: None,
            abandons: 0,
            batch_files: Vec::new(),
        };
        if let Some(table) = table {
            // A table that does not match the configuration will not start matching.
            this.adopt(table, columns)
                .await
                .map_err(WriteError::Permanent)?;
        }
        Ok(this)
    }

    /// Takes an existing table: its columns, its partitioning, and where our `txn`
    /// versions stand.
    async fn adopt(&mut self, table: DeltaTable, columns: &mut Columns) -> anyhow::Result<()> {
        let snapshot = table.snapshot()?;
        let existing = snapshot.metadata().partition_columns();
        if existing != self.spec.partition_columns {
            anyhow::bail!(
                "the table at {} is partitioned by {:?}, but `partition_by` asks for {:?}",
                crate::redact::url(self.spec.url.as_str()),
                existing,
                self.spec.partition_columns
            );
        }
        self.ledger
            .set_landed(logged_version(&table, self.ledger.app_id()).await?);
        let writer = RecordBatchWriter::for_table(&table)?;
        self.committed_fields = columns.adopt_table(&writer.arrow_schema())?;
        self.writer = Some(writer);
        self.table = Some(table);
        Ok(())
    }

    /// Takes up the transactions of chunks at `position` (the first chunk of a disk
    /// buffer names its incarnation): commits the open window if it belongs to others,
    /// then reads what the log holds for the new app id.
    pub async fn follow(&mut self, position: Option<&Position>) -> anyhow::Result<()> {
        if self.ledger.follows(position) {
            return Ok(());
        }
        self.commit().await?;
        self.ledger.switch(position);
        if let Some(table) = &self.table {
            self.ledger
                .set_landed(logged_version(table, self.ledger.app_id()).await?);
        }
        Ok(())
    }

    /// Takes out of `chunk` the records the table already has: those in the open window are
    /// held until its commit; those committed are returned, for their dead letters to be
    /// determined again before they are dropped (acknowledged).
    pub fn sort(&mut self, chunk: &mut Chunk) -> Vec<Event> {
        let Sorted {
            committed,
            in_window,
        } = self.ledger.sort(chunk);
        self.deliveries.extend(Unsettled::of(&in_window));
        committed
    }

    /// Makes sure the table exists and has every column of `columns`; columns added since
    /// the last commit are committed first (after the rows written so far).
    pub async fn ensure_columns(&mut self, columns: &mut Columns) -> anyhow::Result<()> {
        match &self.table {
            None => {
                // `build` without `load`: probing a table that does not exist yet only
                // makes deltalake log an error.
                let table = DeltaTableBuilder::from_url(self.spec.url.clone())?
                    .with_storage_options(self.spec.storage_options.expose().clone())
                    .build()?
                    .create()
                    .with_columns(columns.delta_fields())
                    .with_partition_columns(self.spec.partition_columns.clone())
                    .with_configuration_property(
                        TableProperty::CheckpointInterval,
                        Some(self.spec.checkpoint_interval.to_string()),
                    )
                    .await?;
                self.adopt(table, columns).await
            }
            Some(_) if columns.field_count() > self.committed_fields => {
                // The writer cannot widen a partitioned table's schema mid-window: commit
                // what it has, add the columns, and start a new window.
                self.commit().await?;
                let added = columns.delta_fields_after(self.committed_fields);
                // A copy: if adding fails (the target is down), the table stays open and
                // the retry adds them again, instead of trying to create the table.
                let table = self
                    .table
                    .clone()
                    .ok_or_else(|| anyhow::anyhow!("table vanished while adding columns"))?;
                let table = table.add_columns().with_fields(added).await?;
                self.adopt(table, columns).await
            }
            Some(_) => Ok(()),
        }
    }

    /// Streams `batch` into the open window; `deliveries` are held until the commit, and
    /// the chunk's `dead_letters` are sent after it. `end`: the buffer position after the
    /// chunk the rows came from (a disk buffer's).
    pub async fn write(
        &mut self,
        batch: deltalake::arrow::record_batch::RecordBatch,
        deliveries: Unsettled,
        dead_letters: Vec<Event>,
        end: Option<u64>,
    ) -> Result<(), DeltaTableError> {
        self.deliveries.extend(deliveries);
        self.dead_letters.hold(dead_letters);
        let writer = self
            .writer
            .as_mut()
            .ok_or_else(|| DeltaTableError::Generic("the table is not open".into()))?;
        let rows = batch.num_rows();
        writer.write(batch).await?;
        self.rows += rows;
        self.ledger.wrote(end);
        Ok(())
    }

    /// Rows waiting for a commit.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Encoded bytes waiting for a commit.
    pub fn bytes(&self) -> usize {
        self.writer
            .as_ref()
            .map_or(0, RecordBatchWriter::buffer_len)
    }

    /// Commits the open window with the ledger's `txn`: finishes its Parquet files,
    /// then adds them to the log in one transaction. A retry after an unclear failure first
    /// asks the log whether that version already landed; files finished by an attempt that
    /// failed are kept and committed by the next one.
    pub async fn commit(&mut self) -> anyhow::Result<Committed> {
        if self.rows == 0 {
            return Ok(Committed::default());
        }
        if self.spec.batch.is_some() {
            return self.finish_files().await;
        }
        let (Some(table), Some(writer)) = (self.table.as_mut(), self.writer.as_mut()) else {
            anyhow::bail!("the table is not open");
        };
        // Files staged by an earlier attempt: that attempt failed, perhaps after its log
        // entry was written and before the log could be asked.
        let retry = self.staged.is_some();
        if self.staged.is_none() {
            let bytes = writer.buffer_len();
            match writer.flush().await {
                Ok(adds) => self.staged = Some((adds, bytes)),
                Err(err) => {
                    // deltalake discards a window whose files it could not write: a retry
                    // would commit it empty and acknowledge rows that are nowhere. Hand
                    // them back instead (a disk buffer delivers them again).
                    let rows = self.rows;
                    self.abandon()?;
                    return Err(anyhow::Error::new(err).context(format!(
                        "cannot write the files of {rows} rows; they go back to be delivered again"
                    )));
                }
            }
        }
        let Some((adds, bytes)) = self.staged.clone() else {
            anyhow::bail!("no staged files");
        };
        crate::fault::crash_point("delta_lake.before_commit");
        let version = self.ledger.next_version()?;
        let app_id = self.ledger.app_id().to_owned();
        let landed_before = match retry {
            true => {
                table.update_state().await?;
                logged_version(table, &app_id).await? >= Some(version)
            }
            false => false,
        };
        if !landed_before {
            let partition_by =
                Some(self.spec.partition_columns.clone()).filter(|columns| !columns.is_empty());
            append_once(table, &app_id, version, adds, partition_by).await?;
        }
        self.ledger.set_landed(Some(version));
        // The rows are in the log; their sources (or buffer) have not heard so yet.
        crate::fault::crash_point("delta_lake.after_commit");
        let rows = self.rows;
        self.rows = 0;
        self.staged = None;
        // Acknowledges the committed rows upstream.
        std::mem::take(&mut self.deliveries).settle();
        self.dead_letters.committed();
        Ok(Committed { rows, bytes })
    }

    /// A batch run's "commit": finishes the window's files for the run's one commit. Their
    /// rows are settled now (a run that fails before its commit leaves nothing in the log,
    /// and its rerun reads the range again).
    async fn finish_files(&mut self) -> anyhow::Result<Committed> {
        let Some(writer) = self.writer.as_mut() else {
            anyhow::bail!("the table is not open");
        };
        let bytes = writer.buffer_len();
        match writer.flush().await {
            Ok(adds) => self.batch_files.extend(adds),
            Err(err) => {
                let rows = self.rows;
                self.abandon()?;
                return Err(anyhow::Error::new(err).context(format!(
                    "cannot write the files of {rows} rows; they go back to be delivered again"
                )));
            }
        }
        let rows = std::mem::take(&mut self.rows);
        std::mem::take(&mut self.deliveries).settle();
        self.dead_letters.committed();
        Ok(Committed { rows, bytes })
    }

    /// Whether an earlier run already committed this batch run's range.
    pub async fn batch_done(&mut self) -> anyhow::Result<bool> {
        let (Some(app_id), Some(table)) = (&self.spec.batch, &self.table) else {
            return Ok(false);
        };
        Ok(logged_version(table, app_id).await?.is_some())
    }

    /// A batch run's one commit: every file it finished, under its range's transaction;
    /// returns the files added. Safe to retry: an attempt whose outcome was unclear is
    /// found in the log.
    pub async fn finish_batch(&mut self) -> anyhow::Result<usize> {
        self.commit().await?;
        let Some(app_id) = self.spec.batch.clone() else {
            return Ok(0);
        };
        let Some(table) = self.table.as_mut() else {
            // Nothing was ever written: the table was not even created.
            return Ok(0);
        };
        table.update_state().await?;
        if logged_version(table, &app_id).await?.is_some() {
            return Ok(0);
        }
        let files = self.batch_files.len();
        let partition_by =
            Some(self.spec.partition_columns.clone()).filter(|columns| !columns.is_empty());
        append_once(table, &app_id, 1, self.batch_files.clone(), partition_by).await?;
        self.batch_files.clear();
        Ok(files)
    }

    /// Dead letters whose window has committed: the sink sends them to `errors`.
    pub fn take_dead_letters(&mut self) -> Vec<Event> {
        self.dead_letters.take_ready()
    }

    /// Dead letters waiting for the open window's commit.
    pub fn dead_letters_held(&self) -> usize {
        self.dead_letters.held()
    }

    /// Deletes data files that no table version younger than `retention` refers to (the
    /// files of a crashed window included); returns how many.
    pub async fn vacuum(&mut self, retention: std::time::Duration) -> anyhow::Result<usize> {
        let Some(table) = &self.table else {
            return Ok(0);
        };
        let (table, metrics) = table
            .clone()
            .vacuum()
            .with_retention_period(chrono::Duration::from_std(retention)?)
            // Full: also files that never made it into the log (a crashed window's).
            .with_mode(deltalake::operations::vacuum::VacuumMode::Full)
            // The retention is the user's explicit choice, shorter than Delta's default
            // of 7 days or not.
            .with_enforce_retention_duration(false)
            .await?;
        self.table = Some(table);
        Ok(metrics.files_deleted.len())
    }

    /// Rewrites small files into files of about `target_size` bytes (see [`compact`]).
    pub async fn compact(&mut self, target_size: u64) -> anyhow::Result<Compacted> {
        match self.table.as_mut() {
            Some(table) => compact(table, target_size).await,
            None => Ok(Compacted::default()),
        }
    }

    /// Gives up on the open window after a write error: the writer has discarded its
    /// buffered rows, so their sources must deliver them again.
    pub fn abandon(&mut self) -> anyhow::Result<()> {
        std::mem::take(&mut self.deliveries).fail();
        self.dead_letters.abandoned();
        self.rows = 0;
        self.staged = None;
        self.ledger.abandoned();
        self.abandons += 1;
        if let Some(table) = &self.table {
            self.writer = Some(RecordBatchWriter::for_table(table)?);
        }
        Ok(())
    }

    /// How many windows were given up so far. A chunk the sink held while one was (its
    /// commit of the rows before failed) must go back too: written after them, it would
    /// land before records that come again, and a buffer position would then skip those.
    pub fn abandons(&self) -> u64 {
        self.abandons
    }
}

/// The `txn` version the table's log holds for `app_id`.
async fn logged_version(table: &DeltaTable, app_id: &str) -> anyhow::Result<Option<i64>> {
    Ok(table
        .snapshot()?
        .transaction_version(table.log_store().as_ref(), app_id)
        .await?)
}

/// Appends `adds` in one commit under `app_id`'s `txn` `version` (what makes a retried
/// commit, or a rerun, land once). The log may hold the commit even though the commit
/// answered an error: that counts as landed.
async fn append_once(
    table: &mut DeltaTable,
    app_id: &str,
    version: i64,
    adds: Vec<Add>,
    partition_by: Option<Vec<String>>,
) -> anyhow::Result<()> {
    let properties = CommitProperties::default()
        .with_application_transaction(Transaction::new(app_id, version))
        .with_create_checkpoint(true);
    let outcome = CommitBuilder::from(properties)
        .with_actions(adds.into_iter().map(Action::Add).collect())
        .build(
            Some(table.snapshot()?),
            table.log_store(),
            DeltaOperation::Write {
                mode: SaveMode::Append,
                partition_by,
                predicate: None,
            },
        )
        .await;
    match outcome {
        Ok(finalized) => table.state = Some(finalized.snapshot()),
        Err(err) => {
            table.update_state().await?;
            if logged_version(table, app_id).await? < Some(version) {
                return Err(err.into());
            }
        }
    }
    Ok(())
}

/// What one commit wrote.
#[derive(Clone, Copy, Debug, Default)]
pub struct Committed {
    pub rows: usize,
    pub bytes: usize,
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::event::{Delivery, DeliveryStatus};

    #[tokio::test]
    async fn rows_dropped_before_their_commit_fail_their_deliveries() {
        let dir = tempfile::tempdir().unwrap();
        let spec = TableSpec {
            url: Url::from_directory_path(dir.path()).unwrap(),
            storage_options: Default::default(),
            partition_columns: Vec::new(),
            checkpoint_interval: 10,
            writer: "test".into(),
            batch: None,
        };
        let mut columns = Columns::new(Vec::new(), Default::default(), 500);
        let mut table = TableWriter::open(spec, &mut columns).await.ok().unwrap();
        let (delivery, outcome) = Delivery::new();
        let mut event = crate::event::Event::new(
            None,
            [("v".to_owned(), serde_json::json!(1.0))]
                .into_iter()
                .collect(),
            Arc::new(crate::event::EventMeta::received_by("t".into())),
        );
        event.attach(&delivery);
        drop(delivery);
        let encoded = columns.encode(vec![event], true).unwrap();
        table.ensure_columns(&mut columns).await.unwrap();
        let deliveries = Unsettled::of(&encoded.accepted);
        drop(encoded.accepted);
        table
            .write(encoded.batch, deliveries, Vec::new(), None)
            .await
            .unwrap();
        drop(table);
        assert_eq!(outcome.await.unwrap(), DeliveryStatus::Failed);
    }
}
