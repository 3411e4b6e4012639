//! Reading one data file into events: Parquet record batches (the async reader over the
//! table's object store, only the columns wanted), each row an event.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use deltalake::logstore::ObjectStoreRef;
use deltalake::parquet::arrow::ProjectionMask;
use deltalake::parquet::arrow::async_reader::ParquetRecordBatchStreamBuilder;
use futures::StreamExt;
use jiff::Timestamp;
use serde_json::{Number, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::fetch::TableFile;
use super::plan::{PartitionType, Plan, PlannedFile, TIME};
use super::rows::RowBuilder;
use crate::config::BatchRange;
use crate::event::{Event, EventBatch};

/// The sink's own column of arrival time: not a field of the reading.
const RECEIVED_AT: &str = "received_at";
pub const DEVICE_ID: &str = "device_id";

/// Which columns become fields, and which rows are wanted.
pub struct Projection {
    /// Field columns to read; `None`: all.
    columns: Option<HashSet<String>>,
    /// Partition columns to restore as fields.
    partitions: Vec<(String, PartitionType)>,
    /// Every partition column of the table (not in the data files, or not as fields).
    all_partitions: HashSet<String>,
    since: Option<i64>,
    until: Option<i64>,
}

impl Projection {
    pub fn new(plan: &Plan, columns: Option<&[String]>, range: BatchRange) -> Self {
        let columns: Option<HashSet<String>> = columns.map(|c| c.iter().cloned().collect());
        let partitions = plan
            .partition_columns
            .iter()
            .filter(|(name, _)| columns.as_ref().is_none_or(|c| c.contains(name)))
            .cloned()
            .collect();
        let mut all_partitions: HashSet<String> = plan
            .partition_columns
            .iter()
            .map(|(n, _)| n.clone())
            .collect();
        all_partitions.extend(["date".to_owned(), "hour".to_owned()]);
        Self {
            columns,
            partitions,
            all_partitions,
            since: range.since.map(Timestamp::as_microsecond),
            until: range.until.map(Timestamp::as_microsecond),
        }
    }

    /// Whether the file column `name` is read at all.
    fn reads(&self, name: &str) -> bool {
        name == DEVICE_ID || name == TIME || self.is_field(name)
    }

    /// Whether the file column `name` becomes a field.
    pub fn is_field(&self, name: &str) -> bool {
        !matches!(name, DEVICE_ID | TIME | RECEIVED_AT)
            && !self.all_partitions.contains(name)
            && self.columns.as_ref().is_none_or(|c| c.contains(name))
    }

    /// Whether every row of a file with these time bounds is in the range.
    fn covers(&self, min: Option<i64>, max: Option<i64>) -> bool {
        let from = match self.since {
            None => true,
            Some(since) => min.is_some_and(|min| min >= since),
        };
        let to = match self.until {
            None => true,
            Some(until) => max.is_some_and(|max| max < until),
        };
        from && to
    }

    pub fn wants(&self, time: i64) -> bool {
        self.since.is_none_or(|since| time >= since) && self.until.is_none_or(|until| time < until)
    }
}

/// What a file's reader hands on.
pub enum Read {
    Batch(EventBatch),
    /// The whole file was read.
    Done,
}

/// Reads one file on its own task.
pub struct FileReader {
    pub store: ObjectStoreRef,
    pub file: PlannedFile,
    pub projection: Arc<Projection>,
    pub batch_size: usize,
    pub source: Arc<str>,
    /// Record batches whose events are built at once (see [`builders`]).
    pub builders: usize,
}

/// How many record batches of one file have their events built at once: one per core,
/// so a read uses every core while its memory stays bounded (`builders` batches of
/// `batch_size` rows per file being read).
pub fn builders() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 8))
}

impl FileReader {
    /// Sends the file's events to `tx`, then `Done` (or the error that stopped it).
    pub async fn run(self, tx: mpsc::Sender<anyhow::Result<Read>>) {
        let last = match self.read(&tx).await {
            Ok(()) => Ok(Read::Done),
            Err(err) => Err(err),
        };
        let _ = tx.send(last).await;
    }

    async fn read(&self, tx: &mpsc::Sender<anyhow::Result<Read>>) -> anyhow::Result<()> {
        let reader = TableFile {
            store: self.store.clone(),
            path: self.file.path.clone(),
            size: self.file.size,
        };
        let builder = ParquetRecordBatchStreamBuilder::new(reader).await?;
        let roots: Vec<usize> = builder
            .schema()
            .fields()
            .iter()
            .enumerate()
            .filter(|(_, field)| self.projection.reads(field.name()))
            .map(|(n, _)| n)
            .collect();
        let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
        let mut stream = builder
            .with_projection(mask)
            .with_batch_size(self.batch_size)
            .build()?;
        let rows = Arc::new(RowBuilder {
            projection: Arc::clone(&self.projection),
            constants: self.partition_fields()?,
            check_rows: !self
                .projection
                .covers(self.file.min_time, self.file.max_time),
            source: Arc::clone(&self.source),
        });
        // Decoding stays on this task; building events (most of the work) runs on the
        // blocking pool, up to `builders` batches at once, handed on in order.
        let mut building: VecDeque<JoinHandle<anyhow::Result<Vec<Event>>>> = VecDeque::new();
        let mut decoded_all = false;
        loop {
            while !decoded_all && building.len() < self.builders {
                match stream.next().await {
                    Some(batch) => {
                        let batch = batch?;
                        let rows = Arc::clone(&rows);
                        building
                            .push_back(tokio::task::spawn_blocking(move || rows.events(&batch)));
                    }
                    None => decoded_all = true,
                }
            }
            let Some(next) = building.pop_front() else {
                return Ok(());
            };
            let events = next
                .await
                .map_err(|err| anyhow::anyhow!("building events failed: {err}"))??;
            if events.is_empty() {
                continue;
            }
            if tx
                .send(Ok(Read::Batch(EventBatch::new(events))))
                .await
                .is_err()
            {
                // The source stopped reading: nobody wants the rest.
                return Ok(());
            }
        }
    }

    /// The file's partition values restored as fields, typed as the table declares them.
    fn partition_fields(&self) -> anyhow::Result<Vec<(String, Value)>> {
        let mut fields = Vec::new();
        for (name, kind) in &self.projection.partitions {
            let Some(Some(text)) = self
                .file
                .partition
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_deref())
            else {
                continue;
            };
            let bad = || anyhow::anyhow!("partition value `{text}` of `{name}` is not a {kind:?}");
            let value = match kind {
                PartitionType::String => Value::String(text.to_owned()),
                PartitionType::Long => Value::from(text.parse::<i64>().map_err(|_| bad())?),
                PartitionType::Double => Number::from_f64(text.parse::<f64>().map_err(|_| bad())?)
                    .map_or(Value::Null, Value::Number),
                PartitionType::Boolean => Value::Bool(text.parse::<bool>().map_err(|_| bad())?),
            };
            fields.push((name.clone(), value));
        }
        Ok(fields)
    }
}
