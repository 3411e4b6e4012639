//! The Parquet reader's view of one data file in the table's object store: byte ranges
//! fetched on demand, the footer read knowing the file's size from the Delta log (so no
//! request is spent asking for it).

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use deltalake::Path;
use deltalake::logstore::ObjectStoreRef;
use deltalake::parquet::arrow::arrow_reader::ArrowReaderOptions;
use deltalake::parquet::arrow::async_reader::AsyncFileReader;
use deltalake::parquet::errors::{ParquetError, Result};
use deltalake::parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};
use futures::FutureExt;
use futures::future::BoxFuture;
use object_store::ObjectStoreExt as _;

/// Footer bytes fetched in the first request (the footer and the metadata before it,
/// usually): one round trip instead of two on object storage.
const FOOTER_PREFETCH: usize = 64 * 1024;

/// One data file, read through the table's store.
pub struct TableFile {
    pub store: ObjectStoreRef,
    pub path: Path,
    pub size: u64,
}

fn external(err: object_store::Error) -> ParquetError {
    ParquetError::External(Box::new(err))
}

impl AsyncFileReader for TableFile {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, Result<Bytes>> {
        async move {
            self.store
                .get_range(&self.path, range)
                .await
                .map_err(external)
        }
        .boxed()
    }

    fn get_byte_ranges(&mut self, ranges: Vec<Range<u64>>) -> BoxFuture<'_, Result<Vec<Bytes>>> {
        async move {
            self.store
                .get_ranges(&self.path, &ranges)
                .await
                .map_err(external)
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, Result<Arc<ParquetMetaData>>> {
        async move {
            let size = self.size;
            let metadata = ParquetMetaDataReader::new()
                .with_arrow_reader_options(options)
                .with_prefetch_hint(Some(FOOTER_PREFETCH))
                .load_and_finish(self, size)
                .await?;
            Ok(Arc::new(metadata))
        }
        .boxed()
    }
}
