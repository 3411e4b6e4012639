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
