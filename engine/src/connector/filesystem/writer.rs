//! One part file being written: rows encoded into memory (JSON lines, or Parquet row groups
//! cut at `parquet.row_group_size`), then uploaded.
//!
//! 1. Rows are encoded into a buffer; the hidden event-time column is never written.
//! 2. Once `multipart.target_part_size` bytes are buffered, a multipart upload starts and the
//!    buffer goes up in parts of exactly that size (the last of `multipart.max_parts` is kept
//!    for the close).
//! 3. At the close, a file that never started an upload is written with one put; otherwise
//!    the rest goes up as its last part and the upload is completed (or aborted on failure).
//!
//! A file dropped with an upload under way (a run cut short) has it aborted by a task on the
//! run's background tracker, since object stores keep the parts of an upload until then.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::Compression;
use datafusion::parquet::file::properties::WriterProperties;
use object_store::path::Path;
use object_store::{MultipartUpload, ObjectStore, ObjectStoreExt};
use tokio::time::Instant;

use super::FileFormat;
use crate::connector::RunError;
use crate::storage::StorageError;
use crate::task::Background;

/// Encoded rows of the open file not yet uploaded.
enum Encoder {
    Json(Vec<u8>),
    /// Flushed row groups accumulate in the writer's Vec, which is drained as parts go up
    /// (the writer counts offsets itself).
    Parquet {
        writer: Box<ArrowWriter<Vec<u8>>>,
        schema: SchemaRef,
    },
}

/// A file being written.
pub(super) struct OpenFile {
    /// Where it is written: its staged name.
    pub location: Path,
    /// Its staged name as messages show it.
    pub shown: String,
    /// The name it takes once committed.
    pub target: Path,
    encoder: Encoder,
    /// Started once a whole part is buffered.
    upload: Option<Box<dyn MultipartUpload>>,
    pub parts: u64,
    uploaded: u64,
    pub opened: Instant,
    pub last_write: Instant,
    /// Where the abort of an upload left behind runs.
    background: Background,
}

impl OpenFile {
    /// A new file at `location` (its staged name), to be committed as `target`, for batches of
    /// `schema`.
    pub fn new(
        (location, shown): (Path, String),
        target: Path,
        format: FileFormat,
        compression: Compression,
        schema: &Schema,
        background: Background,
    ) -> Result<OpenFile, RunError> {
        let encoder = match format {
            FileFormat::Json => Encoder::Json(Vec::new()),
            FileFormat::Parquet => {
                // Every column nullable, no metadata: batches of the same columns from any
                // upstream fit.
                let fields: Vec<Field> = schema
                    .fields()
                    .iter()
                    .map(|f| Field::new(f.name(), f.data_type().clone(), true))
                    .collect();
                let schema = Arc::new(Schema::new(fields));
                let props = WriterProperties::builder()
                    .set_compression(compression)
                    .build();
                let writer = ArrowWriter::try_new(Vec::new(), schema.clone(), Some(props))
                    .map_err(|source| RunError::ParquetWrite {
                        path: shown.clone(),
                        source,
                    })?;
                Encoder::Parquet {
                    writer: Box::new(writer),
                    schema,
                }
            }
        };
        let now = Instant::now();
        Ok(OpenFile {
            location,
            shown,
            target,
            encoder,
            upload: None,
            parts: 0,
            uploaded: 0,
            opened: now,
            last_write: now,
            background,
        })
    }

    fn buffer(&mut self) -> &mut Vec<u8> {
        match &mut self.encoder {
            Encoder::Json(buf) => buf,
            Encoder::Parquet { writer, .. } => writer.inner_mut(),
        }
    }

    /// The file's size so far, encoded rows not yet in a row group included.
    pub fn size(&self) -> u64 {
        self.uploaded
            + match &self.encoder {
                Encoder::Json(buf) => buf.len() as u64,
                Encoder::Parquet { writer, .. } => {
                    (writer.inner().len() + writer.in_progress_size()) as u64
                }
            }
    }

    /// Encodes `batch` (visible columns only); a Parquet row group is cut once
    /// `row_group_bytes` are in progress.
    pub fn encode(&mut self, batch: &RecordBatch, row_group_bytes: u64) -> Result<(), RunError> {
        let failed = |source| RunError::ParquetWrite {
            path: self.shown.clone(),
            source,
        };
        match &mut self.encoder {
            Encoder::Json(buf) => {
                buf.extend_from_slice(&crate::connector::sink::encode_json_lines(batch, 0)?);
            }
            Encoder::Parquet { writer, schema } => {
                let batch = RecordBatch::try_new(schema.clone(), batch.columns().to_vec())
                    .map_err(RunError::Encode)?;
                writer.write(&batch).map_err(failed)?;
                if writer.in_progress_size() as u64 >= row_group_bytes {
                    writer.flush().map_err(failed)?;
                }
            }
        }
        Ok(())
    }

    /// Uploads every whole part buffered, keeping the last part of `max_parts` for the close.
    pub async fn upload_parts(
        &mut self,
        store: &Arc<dyn ObjectStore>,
        part_size: u64,
        max_parts: u64,
    ) -> Result<(), RunError> {
        let part_size = part_size as usize;
        while self.buffer().len() >= part_size && self.parts + 1 < max_parts {
            if self.upload.is_none() {
                let upload = store
                    .put_multipart(&self.location)
                    .await
                    .map_err(StorageError::store("starting an upload of", &self.shown))?;
                self.upload = Some(upload);
            }
            let buffer = self.buffer();
            let rest = buffer.split_off(part_size);
            let part = std::mem::replace(buffer, rest);
            let upload = self.upload.as_mut().expect("an upload was started");
            upload
                .put_part(part.into())
                .await
                .map_err(StorageError::store("uploading a part of", &self.shown))?;
            self.parts += 1;
            self.uploaded += part_size as u64;
        }
        Ok(())
    }

    /// Writes the rest and makes the file appear under its (staged) location; returns its
    /// size.
    pub async fn finish(&mut self, store: &Arc<dyn ObjectStore>) -> Result<u64, RunError> {
        let rest = match std::mem::replace(&mut self.encoder, Encoder::Json(Vec::new())) {
            Encoder::Json(buf) => buf,
            Encoder::Parquet { writer, .. } => {
                writer
                    .into_inner()
                    .map_err(|source| RunError::ParquetWrite {
                        path: self.shown.clone(),
                        source,
                    })?
            }
        };
        let size = self.uploaded + rest.len() as u64;
        match self.upload.take() {
            None => {
                store
                    .put(&self.location, rest.into())
                    .await
                    .map_err(StorageError::store("writing", &self.shown))?;
            }
            Some(mut upload) => {
                let done = async {
                    if !rest.is_empty() {
                        upload.put_part(rest.into()).await?;
                    }
                    upload.complete().await
                }
                .await;
                if let Err(e) = done {
                    let _ = upload.abort().await;
                    return Err(
                        StorageError::store("completing the upload of", &self.shown)(e).into(),
                    );
                }
            }
        }
        Ok(size)
    }
}

impl Drop for OpenFile {
    fn drop(&mut self) {
        // A run cut short: the parts uploaded so far are abandoned (object stores keep them
        // until aborted). The run waits for the abort before it ends.
        if let Some(mut upload) = self.upload.take() {
            let span = tracing::info_span!("abort_upload", file = %self.location);
            self.background.spawn(span, async move {
                let _ = upload.abort().await;
            });
        }
    }
}
