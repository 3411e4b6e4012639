//! Scheduled compaction (`OPTIMIZE`): many small files of a partition become one.
//!
//! A slow stream with a short `batch.timeout` commits small files; readers pay for every
//! one of them. Compaction reads a partition's files below `target_size`, rewrites their
//! rows into files of about that size, and commits "remove the old, add the new" as one
//! `OPTIMIZE` transaction (`dataChange: false`, so streaming readers skip it). Rows are
//! not changed, only regrouped; the old files stay on disk for readers of older versions
//! until a vacuum deletes them.
//!
//! deltalake's own optimize needs its DataFusion feature (several times the compile cost
//! of the rest of weir); this one needs only the Parquet reader and the table writer.

use std::collections::BTreeMap;

use deltalake::DeltaTable;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, Add};
use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use deltalake::protocol::DeltaOperation;
use deltalake::writer::{DeltaWriter, RecordBatchWriter, WriteMode};
use indexmap::IndexMap;
use object_store::ObjectStoreExt as _;

/// What one compaction did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Compacted {
    pub files_removed: usize,
    pub files_added: usize,
}

/// One partition's small files, grouped into bins of about `target_size` bytes.
struct Bin {
    partition: IndexMap<String, delta_kernel::expressions::Scalar>,
    files: Vec<deltalake::kernel::Remove>,
    paths: Vec<deltalake::Path>,
    size: u64,
}

/// Rewrites the small files of every partition; commits one `OPTIMIZE` if anything was
/// rewritten and returns the table's new state.
pub async fn compact(table: &mut DeltaTable, target_size: u64) -> anyhow::Result<Compacted> {
    let bins = plan(table, target_size)?;
    if bins.is_empty() {
        return Ok(Compacted::default());
    }
    let store = table.object_store();
    let mut actions = Vec::new();
    let mut compacted = Compacted::default();
    for bin in bins {
        let mut writer = RecordBatchWriter::for_table(table)?.with_target_file_size(target_size);
        for path in &bin.paths {
            let bytes = store.get(path).await?.bytes().await?;
            let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)?.build()?;
            for batch in reader {
                // Merge mode fills columns added after this file was written with nulls.
                writer
                    .write_partition(batch?, &bin.partition, WriteMode::MergeSchema)
                    .await?;
            }
        }
        let adds: Vec<Add> = writer.flush().await?;
        compacted.files_added += adds.len();
        compacted.files_removed += bin.files.len();
        actions.extend(adds.into_iter().map(|add| {
            Action::Add(Add {
                data_change: false,
                ..add
            })
        }));
        actions.extend(bin.files.into_iter().map(Action::Remove));
    }
    let finalized = CommitBuilder::from(CommitProperties::default())
        .with_actions(actions)
        .build(
            Some(table.snapshot()?),
            table.log_store(),
            DeltaOperation::Optimize {
                predicate: None,
                target_size: target_size as i64,
            },
        )
        .await?;
    table.state = Some(finalized.snapshot());
    Ok(compacted)
}

/// Groups the files smaller than `target_size` by partition into bins worth rewriting
/// (two files or more).
fn plan(table: &DeltaTable, target_size: u64) -> anyhow::Result<Vec<Bin>> {
    let snapshot = table.snapshot()?;
    let now = jiff::Timestamp::now().as_millisecond();
    let mut partitions: BTreeMap<Vec<(String, Option<String>)>, Vec<Bin>> = BTreeMap::new();
    for file in snapshot.log_data().iter() {
        let size = u64::try_from(file.size()).unwrap_or(0);
        if size >= target_size || file.deletion_vector_descriptor().is_some() {
            continue;
        }
        let mut key: Vec<(String, Option<String>)> =
            file.partition_values_map().into_iter().collect();
        key.sort();
        let partition: IndexMap<_, _> = file
            .partition_values()
            .map(|values| {
                values
                    .fields()
                    .iter()
                    .map(|field| field.name().clone())
                    .zip(values.values().iter().cloned())
                    .collect()
            })
            .unwrap_or_default();
        let bins = partitions.entry(key).or_default();
        let open = bins.last_mut().filter(|bin| bin.size + size <= target_size);
        let bin = match open {
            Some(bin) => bin,
            None => {
                bins.push(Bin {
                    partition,
                    files: Vec::new(),
                    paths: Vec::new(),
                    size: 0,
                });
                bins.last_mut()
                    .ok_or_else(|| anyhow::anyhow!("a bin was just pushed"))?
            }
        };
        let mut remove = file.remove_action(false);
        remove.deletion_timestamp = Some(now);
        bin.files.push(remove);
        bin.paths.push(file.object_store_path());
        bin.size += size;
    }
    Ok(partitions
        .into_values()
        .flatten()
        .filter(|bin| bin.files.len() >= 2)
        .collect())
}
