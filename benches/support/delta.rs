//! Reading a local Delta table back with the `deltalake` crate: its live data files (from
//! the log), their rows and sizes (from the Parquet footers), and optionally one integer
//! column of every row, to count duplicates.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use deltalake::arrow::array::{Array as _, AsArray as _};
use deltalake::arrow::datatypes::{DataType, Int64Type};
use deltalake::parquet::arrow::ProjectionMask;
use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// One data file of the table's current version.
pub struct DataFile {
    pub path: PathBuf,
    pub rows: u64,
    pub bytes: u64,
}

/// The data files of the table at `root`, from its log, with their row counts.
pub fn table_files(root: &Path) -> Result<Vec<DataFile>, String> {
    let runtime = tokio::runtime::Runtime::new().map_err(|e| format!("runtime: {e}"))?;
    let uris: Vec<String> = runtime.block_on(async {
        let url = url::Url::from_directory_path(root)
            .map_err(|()| format!("{} is not an absolute path", root.display()))?;
        let table = deltalake::open_table(url)
            .await
            .map_err(|e| format!("cannot open the table {}: {e}", root.display()))?;
        let uris = table
            .get_file_uris()
            .map_err(|e| format!("cannot list the files of {}: {e}", root.display()))?;
        Ok::<_, String>(uris.collect())
    })?;
    uris.iter()
        .map(|uri| {
            let path = local_path(uri);
            let file = std::fs::File::open(&path)
                .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
            let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
            let builder = ParquetRecordBatchReaderBuilder::try_new(file)
                .map_err(|e| format!("{} is not Parquet: {e}", path.display()))?;
            let rows = builder.metadata().file_metadata().num_rows() as u64;
            Ok(DataFile { path, rows, bytes })
        })
        .collect()
}

/// How many distinct values the integer column `column` holds over `files`, and how many
/// rows had none (null or a file without the column).
pub fn distinct_values(files: &[DataFile], column: &str) -> Result<(usize, u64), String> {
    let (values, missing) = column_values(files, column)?;
    Ok((values.into_iter().collect::<HashSet<_>>().len(), missing))
}

/// Every value of the integer column `column` over `files` (one per row that has one), and
/// how many rows had none (null or a file without the column).
pub fn column_values(files: &[DataFile], column: &str) -> Result<(Vec<i64>, u64), String> {
    let mut values_out = Vec::new();
    let mut missing = 0u64;
    for data in files {
        let file = std::fs::File::open(&data.path)
            .map_err(|e| format!("cannot open {}: {e}", data.path.display()))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|e| format!("{} is not Parquet: {e}", data.path.display()))?;
        let mask = ProjectionMask::columns(builder.parquet_schema(), [column]);
        let reader = builder
            .with_projection(mask)
            .build()
            .map_err(|e| format!("cannot read {}: {e}", data.path.display()))?;
        for batch in reader {
            let batch = batch.map_err(|e| format!("cannot read {}: {e}", data.path.display()))?;
            let Some(values) = batch.column_by_name(column) else {
                missing += batch.num_rows() as u64;
                continue;
            };
            let values = deltalake::arrow::compute::cast(values, &DataType::Int64)
                .map_err(|e| format!("{column} in {} is not a number: {e}", data.path.display()))?;
            let values = values.as_primitive::<Int64Type>();
            missing += values.null_count() as u64;
            values_out.extend(values.iter().flatten());
        }
    }
    Ok((values_out, missing))
}

/// A data file's path: deltalake lists local files as plain paths or as `file://` URLs.
fn local_path(uri: &str) -> PathBuf {
    url::Url::parse(uri)
        .ok()
        .and_then(|url| url.to_file_path().ok())
        .unwrap_or_else(|| PathBuf::from(uri))
}
