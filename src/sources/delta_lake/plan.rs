//! Which data files a read needs: the table's live files at the version asked for, minus
//! those that cannot hold a wanted row.
//!
//! A file is skipped when a partition column named in `partition_filters` has another value
//! in it, or when the `time` column's statistics (min/max, which the writer records) put
//! all its rows outside `[since, until)`. A file without statistics is read. Planned files
//! are ordered by their earliest event time, so windows downstream see readings in about
//! the order they happened.

use std::collections::{BTreeMap, HashMap};

use delta_kernel::expressions::Scalar;
use deltalake::kernel::DataType;
use deltalake::logstore::ObjectStoreRef;
use deltalake::{DeltaTableBuilder, Path};
use jiff::Timestamp;
use url::Url;

use super::DeltaLakeSourceConfig;
use crate::config::BatchRange;

/// The column that holds event time.
pub const TIME: &str = "time";

/// What a read wants.
pub struct Wanted {
    pub range: BatchRange,
    /// Partition column to the values wanted.
    pub partitions: BTreeMap<String, Vec<String>>,
}

/// The type a partition value is restored as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartitionType {
    String,
    Long,
    Double,
    Boolean,
}

/// One data file to read.
#[derive(Clone, Debug)]
pub struct PlannedFile {
    pub path: Path,
    pub size: u64,
    /// Its partition values (the columns restored as fields), as the log writes them.
    pub partition: Vec<(String, Option<String>)>,
    /// Its earliest and latest event time (microseconds), from its statistics.
    pub min_time: Option<i64>,
    pub max_time: Option<i64>,
}

/// The files to read, and what the rest of the read needs to know of the table.
pub struct Plan {
    pub store: ObjectStoreRef,
    pub version: u64,
    pub files: Vec<PlannedFile>,
    pub skipped: usize,
    /// Rows in the planned files (from their statistics; progress only).
    pub rows: u64,
    /// Partition columns restored as fields, with their types (`date`/`hour`, which the
    /// sink derives from event time, are not).
    pub partition_columns: Vec<(String, PartitionType)>,
}

impl Plan {
    /// Opens the table (at `version` or `timestamp`, if set) and plans the read.
    pub async fn make(
        url: &Url,
        config: &DeltaLakeSourceConfig,
        wanted: &Wanted,
    ) -> anyhow::Result<Self> {
        crate::lake::register_object_stores();
        let options: HashMap<String, String> = config
            .storage_options
            .iter()
            .map(|(k, v)| (k.clone(), v.expose().clone()))
            .collect();
        let mut builder = DeltaTableBuilder::from_url(url.clone())?.with_storage_options(options);
        if let Some(version) = config.version {
            builder = builder.with_version(version);
        }
        if let Some(at) = config.timestamp {
            let at = chrono::DateTime::from_timestamp_micros(at.as_microsecond())
                .ok_or_else(|| anyhow::anyhow!("`timestamp` {at} is out of range"))?;
            builder = builder.with_timestamp(at);
        }
        let table = builder.load().await?;
        let snapshot = table.snapshot()?;
        if let Some(mode) = snapshot
            .metadata()
            .configuration()
            .get("delta.columnMapping.mode")
            .filter(|mode| mode.as_str() != "none")
        {
            anyhow::bail!(
                "the table uses column mapping (`delta.columnMapping.mode: {mode}`), which the delta_lake source cannot read; expected a table written without it (as the delta_lake sink writes)"
            );
        }
        let schema = snapshot.schema();
        if schema.field(TIME).is_none() {
            anyhow::bail!(
                "the table has no `{TIME}` column; expected a table of readings with their event time (as the delta_lake sink writes)"
            );
        }
        let table_partitions = snapshot.metadata().partition_columns().to_vec();
        for name in wanted.partitions.keys() {
            if !table_partitions.contains(name) {
                anyhow::bail!(
                    "`partition_filters` names `{name}`, which is not a partition column of the table (it has {table_partitions:?})"
                );
            }
        }
        let partition_columns = table_partitions
            .iter()
            .filter(|name| !matches!(name.as_str(), "date" | "hour"))
            .map(|name| {
                let kind = match schema.field(name).map(|f| f.data_type()) {
                    Some(t) if *t == DataType::LONG || *t == DataType::INTEGER => {
                        PartitionType::Long
                    }
                    Some(t) if *t == DataType::DOUBLE || *t == DataType::FLOAT => {
                        PartitionType::Double
                    }
                    Some(t) if *t == DataType::BOOLEAN => PartitionType::Boolean,
                    _ => PartitionType::String,
                };
                (name.clone(), kind)
            })
            .collect();
        let since = wanted.range.since.map(Timestamp::as_microsecond);
        let until = wanted.range.until.map(Timestamp::as_microsecond);
        let mut files = Vec::new();
        let mut skipped = 0;
        let mut rows = 0u64;
        for file in snapshot.log_data().iter() {
            let values = file.partition_values_map();
            let partition_wanted = wanted.partitions.iter().all(|(name, allowed)| {
                values
                    .get(name)
                    .and_then(Option::as_deref)
                    .is_some_and(|value| allowed.iter().any(|a| a == value))
            });
            let min_time = file.min_values().as_ref().and_then(time_of);
            let max_time = file.max_values().as_ref().and_then(time_of);
            let before = matches!((max_time, since), (Some(max), Some(since)) if max < since);
            let after = matches!((min_time, until), (Some(min), Some(until)) if min >= until);
            if !partition_wanted || before || after {
                skipped += 1;
                continue;
            }
            if file.deletion_vector_descriptor().is_some() {
                anyhow::bail!(
                    "the data file `{}` has a deletion vector (rows deleted by a merge or delete), which the delta_lake source does not apply; expected a table without deletion vectors (`delta.enableDeletionVectors: false`, or purge them first)",
                    file.path()
                );
            }
            rows += file.num_records().unwrap_or(0) as u64;
            let mut partition: Vec<(String, Option<String>)> = values.into_iter().collect();
            partition.sort();
            files.push(PlannedFile {
                path: file.object_store_path(),
                size: u64::try_from(file.size()).unwrap_or(0),
                partition,
                min_time,
                max_time,
            });
        }
        files.sort_by(|a, b| {
            (a.min_time.is_none(), a.min_time, a.path.as_ref()).cmp(&(
                b.min_time.is_none(),
                b.min_time,
                b.path.as_ref(),
            ))
        });
        Ok(Self {
            store: table.object_store(),
            version: snapshot.version(),
            files,
            skipped,
            rows,
            partition_columns,
        })
    }
}

/// The `time` column's value in a file's min or max statistics, in microseconds.
fn time_of(stats: &Scalar) -> Option<i64> {
    let Scalar::Struct(values) = stats else {
        return None;
    };
    values
        .fields()
        .iter()
        .zip(values.values())
        .find(|(field, _)| field.name() == TIME)
        .and_then(|(_, value)| match value {
            Scalar::Timestamp(micros) | Scalar::TimestampNtz(micros) => Some(*micros),
            _ => None,
        })
}
