//! Reading one data file into events: Parquet record batches (the async reader over the
//! table's object store, only the columns wanted), each row an event.

use std::collections::HashSet;
use std::sync::Arc;

use deltalake::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int64Array, StringArray,
    TimestampMicrosecondArray,
};
use deltalake::arrow::compute::cast;
use deltalake::arrow::datatypes::{DataType, Int64Type, TimeUnit, TimestampMicrosecondType};
use deltalake::arrow::record_batch::RecordBatch;
use deltalake::logstore::ObjectStoreRef;
use deltalake::parquet::arrow::ProjectionMask;
use deltalake::parquet::arrow::async_reader::ParquetRecordBatchStreamBuilder;
use futures::StreamExt;
use jiff::Timestamp;
use serde_json::{Number, Value};
use tokio::sync::mpsc;

use super::fetch::TableFile;
use super::plan::{PartitionType, Plan, PlannedFile, TIME};
use crate::config::BatchRange;
use crate::event::{Event, EventBatch, EventMeta, Fields};

/// The sink's own column of arrival time: not a field of the reading.
const RECEIVED_AT: &str = "received_at";
const DEVICE_ID: &str = "device_id";

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
    fn is_field(&self, name: &str) -> bool {
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

    fn wants(&self, time: i64) -> bool {
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
        let constants = self.partition_fields()?;
        let check_rows = !self
            .projection
            .covers(self.file.min_time, self.file.max_time);
        while let Some(batch) = stream.next().await {
            let events = self.events(&batch?, &constants, check_rows)?;
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
        Ok(())
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

    /// One record batch as events.
    fn events(
        &self,
        batch: &RecordBatch,
        constants: &[(String, Value)],
        check_rows: bool,
    ) -> anyhow::Result<Vec<Event>> {
        let time = batch
            .column_by_name(TIME)
            .ok_or_else(|| anyhow::anyhow!("the file has no `{TIME}` column"))?;
        let time = cast(time, &DataType::Timestamp(TimeUnit::Microsecond, None))?;
        let time = time.as_primitive::<TimestampMicrosecondType>();
        let device = match batch.column_by_name(DEVICE_ID) {
            Some(column) => Some(cast(column, &DataType::Utf8)?),
            None => None,
        };
        let device = device.as_ref().map(|d| d.as_string::<i32>());
        let schema = batch.schema();
        let mut columns = Vec::new();
        for (field, array) in schema.fields().iter().zip(batch.columns()) {
            if self.projection.is_field(field.name()) {
                columns.push((field.name().clone(), Column::of(array)?));
            }
        }
        let meta = Arc::new(EventMeta::received_by(Arc::clone(&self.source)));
        let mut events = Vec::with_capacity(batch.num_rows());
        for row in 0..batch.num_rows() {
            if time.is_null(row) {
                continue;
            }
            let micros = time.value(row);
            if check_rows && !self.projection.wants(micros) {
                continue;
            }
            let mut fields = Fields::new();
            for (name, column) in &columns {
                if let Some(value) = column.value(row) {
                    fields.insert(name.clone(), value);
                }
            }
            for (name, value) in constants {
                fields.insert(name.clone(), value.clone());
            }
            let device_id = device
                .filter(|d| d.is_valid(row))
                .map(|d| Arc::from(d.value(row)));
            let mut event = Event::new(device_id, fields, Arc::clone(&meta));
            event.time = Timestamp::from_microsecond(micros)?;
            events.push(event);
        }
        Ok(events)
    }
}

/// One field column, in the shape its values are read from.
enum Column {
    Double(Float64Array),
    Long(Int64Array),
    Boolean(BooleanArray),
    Text(StringArray),
    Time(TimestampMicrosecondArray),
}

impl Column {
    fn of(array: &ArrayRef) -> anyhow::Result<Self> {
        Ok(match array.data_type() {
            DataType::Float64 | DataType::Float32 | DataType::Float16 => {
                Self::Double(cast(array, &DataType::Float64)?.as_primitive().clone())
            }
            DataType::Int64
            | DataType::Int32
            | DataType::Int16
            | DataType::Int8
            | DataType::UInt32
            | DataType::UInt16
            | DataType::UInt8 => Self::Long(
                cast(array, &DataType::Int64)?
                    .as_primitive::<Int64Type>()
                    .clone(),
            ),
            DataType::Boolean => Self::Boolean(array.as_boolean().clone()),
            DataType::Timestamp(_, _) => Self::Time(
                cast(array, &DataType::Timestamp(TimeUnit::Microsecond, None))?
                    .as_primitive()
                    .clone(),
            ),
            // Text, dates, decimals, anything else: as its text.
            _ => Self::Text(cast(array, &DataType::Utf8)?.as_string::<i32>().clone()),
        })
    }

    /// The value at `row`; `None` for a null (the field is absent).
    fn value(&self, row: usize) -> Option<Value> {
        match self {
            Self::Double(a) => a
                .is_valid(row)
                .then(|| Number::from_f64(a.value(row)).map(Value::Number))
                .flatten(),
            Self::Long(a) => a.is_valid(row).then(|| Value::from(a.value(row))),
            Self::Boolean(a) => a.is_valid(row).then(|| Value::Bool(a.value(row))),
            Self::Text(a) => a
                .is_valid(row)
                .then(|| Value::String(a.value(row).to_owned())),
            Self::Time(a) => a
                .is_valid(row)
                .then(|| Timestamp::from_microsecond(a.value(row)).ok())
                .flatten()
                .map(|t| Value::String(t.to_string())),
        }
    }
}
