//! Reading a Delta table back as a user would, independently of weir: the `deltalake`
//! crate opens its log (with the `az://` handlers registered, so Azurite tables read the
//! same way as local ones), and each live file is fetched through the table's object store
//! and decoded with the Parquet reader.

use std::collections::{BTreeMap, HashMap};

use deltalake::arrow::array::AsArray;
use deltalake::arrow::datatypes::Float64Type;
use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use deltalake::{DeltaTableError, ObjectStoreError};
use object_store::ObjectStoreExt as _;

/// How often each value of the numeric column `id` occurs in the table at `url`; empty
/// while the table does not exist. Panics on any other failure (the table must be
/// readable once it exists).
pub async fn ids(
    url: &url::Url,
    storage_options: &HashMap<String, String>,
) -> BTreeMap<u64, usize> {
    register_handlers();
    let table = match deltalake::open_table_with_storage_options(
        url.clone(),
        storage_options.clone(),
    )
    .await
    {
        Ok(table) => table,
        Err(DeltaTableError::NotATable(_)) => return BTreeMap::new(),
        Err(DeltaTableError::ObjectStore {
            source: ObjectStoreError::NotFound { .. },
        }) => return BTreeMap::new(),
        Err(err) => panic!("cannot open the Delta table at {url}: {err}"),
    };
    let store = table.object_store();
    let files: Vec<_> = table
        .snapshot()
        .unwrap_or_else(|err| panic!("no snapshot of {url}: {err}"))
        .log_data()
        .iter()
        .map(|file| file.object_store_path())
        .collect();
    let mut ids = BTreeMap::new();
    for path in files {
        let read = async { store.get(&path).await?.bytes().await };
        let bytes = read
            .await
            .unwrap_or_else(|err| panic!("cannot read {path} of {url}: {err}"));
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .and_then(|builder| builder.build())
            .unwrap_or_else(|err| panic!("{path} of {url} is not Parquet: {err}"));
        for batch in reader {
            let batch = batch.unwrap_or_else(|err| panic!("cannot decode {path}: {err}"));
            let column = batch.column_by_name("id").expect("an id column");
            for id in column.as_primitive::<Float64Type>().iter().flatten() {
                *ids.entry(id as u64).or_default() += 1;
            }
        }
    }
    ids
}

/// Teaches this process's deltalake the `az://` scheme (weir does the same for itself).
fn register_handlers() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| deltalake::azure::register_handlers(None));
}

/// Every row of the table at `url` as column name to value (numbers, text, timestamps as
/// epoch microseconds, booleans; partition columns from the log as text; nulls left
/// out); empty while the table does not exist.
pub async fn rows(
    url: &url::Url,
    storage_options: &HashMap<String, String>,
) -> Vec<BTreeMap<String, serde_json::Value>> {
    use deltalake::arrow::array::Array;
    use deltalake::arrow::datatypes::{DataType, Int64Type, TimestampMicrosecondType};
    use serde_json::Value;
    register_handlers();
    let table = match deltalake::open_table_with_storage_options(
        url.clone(),
        storage_options.clone(),
    )
    .await
    {
        Ok(table) => table,
        Err(DeltaTableError::NotATable(_)) => return Vec::new(),
        Err(DeltaTableError::ObjectStore {
            source: ObjectStoreError::NotFound { .. },
        }) => return Vec::new(),
        Err(err) => panic!("cannot open the Delta table at {url}: {err}"),
    };
    let store = table.object_store();
    let files: Vec<_> = table
        .snapshot()
        .unwrap_or_else(|err| panic!("no snapshot of {url}: {err}"))
        .log_data()
        .iter()
        .map(|file| (file.object_store_path(), file.partition_values_map()))
        .collect();
    let mut rows = Vec::new();
    for (path, partition) in files {
        let bytes = async { store.get(&path).await?.bytes().await }
            .await
            .unwrap_or_else(|err| panic!("cannot read {path} of {url}: {err}"));
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .and_then(|builder| builder.build())
            .unwrap_or_else(|err| panic!("{path} of {url} is not Parquet: {err}"));
        for batch in reader {
            let batch = batch.unwrap_or_else(|err| panic!("cannot decode {path}: {err}"));
            for row in 0..batch.num_rows() {
                let mut values: BTreeMap<String, Value> = partition
                    .iter()
                    .filter_map(|(k, v)| Some((k.clone(), Value::from(v.clone()?))))
                    .collect();
                for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
                    if column.is_null(row) {
                        continue;
                    }
                    let value = match column.data_type() {
                        DataType::Float64 => {
                            Value::from(column.as_primitive::<Float64Type>().value(row))
                        }
                        DataType::Int64 => {
                            Value::from(column.as_primitive::<Int64Type>().value(row))
                        }
                        DataType::Boolean => Value::from(column.as_boolean().value(row)),
                        DataType::Utf8 => Value::from(column.as_string::<i32>().value(row)),
                        DataType::Timestamp(_, _) => Value::from(
                            column.as_primitive::<TimestampMicrosecondType>().value(row),
                        ),
                        other => panic!("unexpected column type {other} of {}", field.name()),
                    };
                    values.insert(field.name().clone(), value);
                }
                rows.push(values);
            }
        }
    }
    rows
}
