//! The `filesystem` source: every file under a directory or object-store prefix, read to the
//! end.
//!
//! It lists every file under `path` (recursively; names starting with `.` or `_` are skipped,
//! as are object stores' in-progress uploads), keeps those whose path in the store matches
//! `source.regex_pattern`, sorts them by name, and subtask `i` of `p` reads files `i, i + p,
//! ...`; then it finishes. JSON lines are decoded by the reader `single_file` uses
//! ([`crate::connector::lines`]: `bad_data`, event time, virtual columns); Parquet columns are
//! matched by name and cast to the declared types. JSON files may be compressed
//! (`source.compression`: `gzip`, `zstd`; see [`super::compression`]).
//!
//! At a checkpoint a subtask records (table `files`, one JSON document) the files it read to
//! the end and, for a file read part of the way, how far: the byte offset and line count of
//! the complete lines emitted (JSON), or the rows read (Parquet; checkpoints are taken between
//! batches). A restore, at any parallelism, unions what every old subtask recorded: the files
//! done are skipped, and a partly read file resumes (a ranged get from the offset; Parquet
//! rows skipped) on whichever subtask now reads it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, StringArray, new_null_array};
use datafusion::arrow::compute::{CastOptions, cast_with_options, regexp_is_match_scalar};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::parquet::arrow::arrow_reader::ArrowReaderOptions;
// Deprecated in parquet 59.2 for a hand-written `AsyncFileReader`, which needs the `bytes`
// crate; this one still works and keeps the dependencies as they are.
#[allow(deprecated)]
use datafusion::parquet::arrow::async_reader::ParquetObjectReader;
use datafusion::parquet::arrow::{ParquetRecordBatchStreamBuilder, ProjectionMask};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    GetOptions, GetRange, GetResult, GetResultPayload, ObjectMeta, ObjectStore, ObjectStoreExt,
};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::compression::{self, Compression};
use super::{FileFormat, invalid, take_either, take_location_and_format};
use crate::connector::lines::{
    BATCH_ROWS, BadData, FilePosition, Generated, LineFormat, LineReader, Rows, take_bad_data,
};
use crate::connector::{ConnectorError, EventTimeSpec, Options, RunError};
use crate::storage::{Location, StorageError};
use crate::task::{
    RestoredState, Source, SourceContext, SourceEnd, SourceFactory, TaskError, TaskInfo, TaskState,
};

#[derive(Debug, Clone)]
pub struct FileSystemSourceConfig {
    location: Location,
    format: FileFormat,
    bad_data: BadData,
    /// `source.regex_pattern`: only files whose path in the store matches are read.
    regex: Option<String>,
    /// `source.compression` / `compression_format` of JSON files.
    compression: Compression,
}

impl FileSystemSourceConfig {
    /// Where the files are.
    pub fn location(&self) -> &Location {
        &self.location
    }

    pub fn from_options(options: &mut Options) -> Result<Self, ConnectorError> {
        let (location, format) = take_location_and_format(options)?;
        let regex = take_either(
            options,
            "source.regex_pattern",
            "source.regex-pattern",
            |o, k| Ok(o.take(k)),
        )?;
        if let Some(pattern) = &regex {
            regexp_is_match_scalar(&StringArray::from(vec![""]), pattern, None).map_err(|e| {
                invalid(
                    "source.regex_pattern",
                    pattern,
                    e.to_string().replace("Compute error: ", ""),
                )
            })?;
        }
        let compression = take_either(
            options,
            "source.compression",
            "compression_format",
            |o, k| Ok(o.take(k).map(|v| (k.to_string(), v))),
        )?;
        let compression = match compression {
            None => Compression::None,
            Some((key, value)) => Compression::parse(&key, &value)?,
        };
        if compression != Compression::None && format != FileFormat::Json {
            return Err(ConnectorError::Usage(
                "compressed input ('gzip', 'zstd') is read for format = 'json'; \
                 Parquet files compress their own pages"
                    .into(),
            ));
        }
        Ok(FileSystemSourceConfig {
            location,
            format,
            bad_data: take_bad_data(options)?,
            regex,
            compression,
        })
    }
}

pub struct FileSystemSourceFactory {
    config: FileSystemSourceConfig,
    /// Decodes a file's rows as a `single_file` source would: one reader per file.
    rows: Arc<Rows>,
}

impl FileSystemSourceFactory {
    pub fn new(
        config: FileSystemSourceConfig,
        schema: SchemaRef,
        event_time: EventTimeSpec,
        generated: Generated,
        projection: Option<Vec<usize>>,
    ) -> Self {
        let rows = Rows::new(
            LineFormat::Json,
            config.bad_data,
            schema,
            event_time,
            generated,
            projection,
        );
        FileSystemSourceFactory {
            rows: Arc::new(rows),
            config,
        }
    }
}

impl SourceFactory for FileSystemSourceFactory {
    fn create(&self, info: &TaskInfo) -> Result<Box<dyn Source>, TaskError> {
        Ok(Box::new(FileSystemSource {
            config: self.config.clone(),
            rows: self.rows.clone(),
            info: info.clone(),
            progress: SourceProgress::default(),
        }))
    }
}

/// The source's state table: one [`SourceProgress`] document per subtask.
const SOURCE_TABLE: &str = "files";

/// Where the reading of a partly read file resumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Resume {
    /// A JSON-lines file: the bytes and the lines of the complete lines emitted.
    Lines { offset: u64, lines: u64 },
    /// A Parquet file: the rows read from it (emitted, less those dropped as bad data).
    Rows(u64),
}

impl Resume {
    /// How far it is into the file, to keep the furthest of two.
    fn reached(self) -> u64 {
        match self {
            Resume::Lines { offset, .. } => offset,
            Resume::Rows(n) => n,
        }
    }
}

/// What a source subtask has read, by path of the file in the store: its checkpoint state.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SourceProgress {
    /// Files read to the end.
    done: BTreeSet<String>,
    /// Files read part of the way.
    partial: BTreeMap<String, Resume>,
}

impl SourceProgress {
    /// Adds what another subtask had read: a file done anywhere is done; of two positions in a
    /// file, the further one counts.
    fn merge(&mut self, other: SourceProgress) {
        self.done.extend(other.done);
        for (file, at) in other.partial {
            let slot = self.partial.entry(file).or_insert(at);
            if at.reached() > slot.reached() {
                *slot = at;
            }
        }
        let done = &self.done;
        self.partial.retain(|file, _| !done.contains(file));
    }
}

pub(super) struct FileSystemSource {
    config: FileSystemSourceConfig,
    rows: Arc<Rows>,
    info: TaskInfo,
    /// The files done and the positions in files partly read, as of what was emitted (the
    /// file being read excepted: its reader knows its position).
    progress: SourceProgress,
}

/// True when no part of `object` below `prefix` is hidden (starts with `.` or `_`).
fn visible(prefix: &Path, object: &Path) -> bool {
    match object.prefix_match(prefix) {
        Some(mut parts) => !parts.any(|p| p.as_ref().starts_with(['.', '_'])),
        None => false,
    }
}

impl FileSystemSource {
    fn fail(&self, e: impl Into<RunError>) -> TaskError {
        TaskError::connector(&self.info.node, e.into())
    }

    /// The subtask's state: its progress, with `current` (the file being read and how far)
    /// over it.
    /// The snapshot of a read of the lines of `name` that stopped where `reader` is.
    fn lines_snapshot(&self, name: &str, reader: &LineReader) -> Result<TaskState, TaskError> {
        let p = reader.position();
        self.snapshot_with(Some((
            name,
            Resume::Lines {
                offset: p.offset,
                lines: p.lines,
            },
        )))
    }

    fn snapshot_with(&self, current: Option<(&str, Resume)>) -> Result<TaskState, TaskError> {
        let mut progress = self.progress.clone();
        if let Some((file, at)) = current {
            progress.partial.insert(file.to_string(), at);
        }
        let mut state = TaskState::new();
        state.put_json(SOURCE_TABLE, &progress)?;
        Ok(state)
    }

    /// Every file to read, sorted by path.
    async fn list(&self, store: &Arc<dyn ObjectStore>) -> Result<Vec<ObjectMeta>, TaskError> {
        let prefix = &self.config.location.prefix();
        let shown = self.config.location.display(prefix);
        let mut files: Vec<ObjectMeta> = store
            .list(Some(prefix))
            .try_collect()
            .await
            .map_err(|e| self.fail(StorageError::store("listing", &shown)(e)))?;
        files.retain(|f| visible(prefix, &f.location));
        if files.is_empty() {
            // `path` may name a single file.
            if let Ok(meta) = store.head(prefix).await {
                files.push(meta);
            }
        }
        if let Some(pattern) = &self.config.regex {
            let names = StringArray::from_iter_values(files.iter().map(|f| f.location.as_ref()));
            let keep = regexp_is_match_scalar(&names, pattern, None)
                .map_err(TaskError::batch(&self.info.node))?;
            let mut i = 0;
            files.retain(|_| {
                i += 1;
                keep.value(i - 1)
            });
        }
        files.sort_by(|a, b| a.location.cmp(&b.location));
        Ok(files)
    }

    /// Keeps the progress of the files this subtask reads (`mine`, out of `listed`): another
    /// subtask records the others. Subtask 0 also keeps the files done that are no longer
    /// listed, so that they are not read again should they come back.
    fn keep_mine(&mut self, listed: &BTreeSet<&str>, mine: &BTreeSet<&str>) {
        let first = self.info.subtask == 0;
        self.progress
            .done
            .retain(|f| mine.contains(f.as_str()) || (first && !listed.contains(f.as_str())));
        self.progress
            .partial
            .retain(|f, _| mine.contains(f.as_str()));
    }

    /// Reads one JSON-lines file from `resume` (its start when None); returns how the read
    /// ended and where it got to.
    async fn read_json(
        &self,
        ctx: &mut SourceContext,
        store: &Arc<dyn ObjectStore>,
        meta: &ObjectMeta,
        name: &str,
        resume: Option<Resume>,
        shown: &str,
    ) -> Result<(SourceEnd, Resume), TaskError> {
        let mut rows = LineReader::new(self.rows.clone(), &self.info, shown.to_string());
        let (offset, lines) = match resume {
            Some(Resume::Lines { offset, lines }) => (offset, lines),
            _ => (0, 0),
        };
        let compressed = self.config.compression != Compression::None;
        if compressed {
            return self
                .read_compressed(ctx, store, meta, name, (offset, lines), shown)
                .await;
        }
        if offset > 0 && offset >= meta.size {
            // Every line was emitted before the checkpoint.
            return Ok((SourceEnd::Finished, Resume::Lines { offset, lines }));
        }
        rows.resume_at(FilePosition {
            offset,
            lines,
            done: false,
        });
        let options = GetOptions {
            range: (offset > 0).then_some(GetRange::Offset(offset)),
            ..GetOptions::default()
        };
        let GetResult { payload, range, .. } =
            store.get_opts(&meta.location, options).await.map_err(|e| {
                let at = format!("{shown} at byte {offset}");
                self.fail(StorageError::store("opening", at)(e))
            })?;
        let snapshot = |r: &LineReader| self.lines_snapshot(name, r);
        let end = match payload {
            GetResultPayload::File(f, _) => {
                // A local file comes open at its start, whatever the range.
                let mut file = tokio::fs::File::from_std(f);
                if range.start > 0 {
                    use tokio::io::AsyncSeekExt;
                    file.seek(std::io::SeekFrom::Start(range.start))
                        .await
                        .map_err(|e| {
                            let at = format!("byte {} of {shown}", range.start);
                            self.fail(StorageError::io("seeking to", at)(e))
                        })?;
                }
                rows.read_lines(ctx, file, snapshot).await?
            }
            GetResultPayload::Stream(s) => {
                let reader = tokio_util::io::StreamReader::new(s.map_err(std::io::Error::from));
                rows.read_lines(ctx, reader, snapshot).await?
            }
        };
        let p = rows.position();
        Ok((
            end,
            Resume::Lines {
                offset: p.offset,
                lines: p.lines,
            },
        ))
    }

    /// Reads one compressed JSON-lines file from the decompressed position `(offset, lines)`:
    /// the file is decompressed from its start and the text before the offset skipped.
    async fn read_compressed(
        &self,
        ctx: &mut SourceContext,
        store: &Arc<dyn ObjectStore>,
        meta: &ObjectMeta,
        name: &str,
        (offset, lines): (u64, u64),
        shown: &str,
    ) -> Result<(SourceEnd, Resume), TaskError> {
        use tokio::io::AsyncReadExt;
        let mut rows = LineReader::new(self.rows.clone(), &self.info, shown.to_string());
        rows.resume_at(FilePosition {
            offset,
            lines,
            done: false,
        });
        let payload = store
            .get(&meta.location)
            .await
            .map_err(|e| self.fail(StorageError::store("opening", shown.to_string())(e)))?;
        let bytes = payload.into_stream().map_err(std::io::Error::from);
        let stream = compression::decompressed(bytes, self.config.compression)
            .map_err(|e| self.fail(StorageError::io("decompressing", shown.to_string())(e)))?;
        let mut reader = tokio_util::io::StreamReader::new(stream);
        let skipped = tokio::io::copy(&mut (&mut reader).take(offset), &mut tokio::io::sink())
            .await
            .map_err(|e| self.fail(StorageError::io("decompressing", shown.to_string())(e)))?;
        if skipped < offset {
            return Err(self.fail(RunError::BadCheckpoint(format!(
                "resumes {shown} at byte {offset} of its decompressed text, which has only {skipped}"
            ))));
        }
        let snapshot = |r: &LineReader| self.lines_snapshot(name, r);
        let end = rows.read_lines(ctx, reader, snapshot).await?;
        let p = rows.position();
        Ok((
            end,
            Resume::Lines {
                offset: p.offset,
                lines: p.lines,
            },
        ))
    }

    /// Reads one Parquet file, skipping the rows `resume` says were read; returns how the read
    /// ended and where it got to. Due checkpoints are taken between batches.
    async fn read_parquet(
        &self,
        ctx: &mut SourceContext,
        store: &Arc<dyn ObjectStore>,
        meta: &ObjectMeta,
        name: &str,
        resume: Option<Resume>,
        shown: &str,
    ) -> Result<(SourceEnd, Resume), TaskError> {
        let mut rows = LineReader::new(self.rows.clone(), &self.info, shown.to_string());
        let skip = match resume {
            Some(Resume::Rows(n)) => n,
            _ => 0,
        };
        #[allow(deprecated)]
        let reader = ParquetObjectReader::new(store.clone(), meta.location.clone())
            .with_file_size(meta.size);
        let builder = match ParquetRecordBatchStreamBuilder::new_with_options(
            reader,
            ArrowReaderOptions::new(),
        )
        .await
        {
            Ok(b) => b,
            Err(e) => {
                return match self.config.bad_data {
                    BadData::Fail => Err(self.fail(RunError::BadData {
                        at: shown.to_string(),
                        reason: format!("not a Parquet file: {e}"),
                    })),
                    BadData::Drop => {
                        warn!(file = %shown, error = %e, "bad_data = 'drop': skipped a file");
                        Ok((SourceEnd::Finished, Resume::Rows(0)))
                    }
                };
            }
        };
        let stored = rows.stored_schema().clone();
        let file_schema = builder.schema().clone();
        let wanted: Vec<usize> = stored
            .fields()
            .iter()
            .filter_map(|f| file_schema.index_of(f.name()).ok())
            .collect();
        let mask = ProjectionMask::roots(builder.parquet_schema(), wanted);
        let skip_rows = usize::try_from(skip).map_err(|_| {
            self.fail(RunError::BadCheckpoint(format!(
                "resumes {shown} after {skip} rows, more than this machine can skip"
            )))
        })?;
        let mut batches = builder
            .with_batch_size(BATCH_ROWS)
            .with_projection(mask)
            .with_offset(skip_rows)
            .build()
            .map_err(|source| {
                self.fail(RunError::ParquetRead {
                    path: shown.to_string(),
                    source,
                })
            })?;
        let mut read = skip;
        loop {
            if ctx.should_stop() {
                return Ok((SourceEnd::Stopped, Resume::Rows(read)));
            }
            if let Some(end) = ctx
                .checkpoint_if_due(|| self.snapshot_with(Some((name, Resume::Rows(read)))))
                .await?
            {
                return Ok((end, Resume::Rows(read)));
            }
            let Some(batch) = batches.next().await else {
                break;
            };
            let batch = batch.map_err(|source| {
                self.fail(RunError::ParquetRead {
                    path: shown.to_string(),
                    source,
                })
            })?;
            read += batch.num_rows() as u64;
            let batch = align(&batch, &stored, shown).map_err(|e| self.fail(e))?;
            rows.emit_decoded(ctx, batch).await?;
        }
        Ok((SourceEnd::Finished, Resume::Rows(read)))
    }
}

/// `batch`'s columns by name, cast to `schema`'s types; a column the file lacks is null. A
/// column that does not convert is bad data in `path`.
fn align(batch: &RecordBatch, schema: &SchemaRef, path: &str) -> Result<RecordBatch, RunError> {
    let bad = |reason: String| RunError::BadData {
        at: path.to_string(),
        reason,
    };
    let strict = CastOptions {
        safe: false,
        ..Default::default()
    };
    let columns = schema
        .fields()
        .iter()
        .map(|field| match batch.column_by_name(field.name()) {
            Some(c) if c.data_type() == field.data_type() => Ok(c.clone()),
            Some(c) => cast_with_options(c, field.data_type(), &strict).map_err(|e| {
                bad(format!(
                    "column '{}' ({}) does not convert to {}: {e}",
                    field.name(),
                    c.data_type(),
                    field.data_type()
                ))
            }),
            None if field.is_nullable() => Ok(new_null_array(field.data_type(), batch.num_rows())),
            None => Err(bad(format!("the file has no column '{}'", field.name()))),
        })
        .collect::<Result<Vec<ArrayRef>, RunError>>()?;
    RecordBatch::try_new(schema.clone(), columns).map_err(RunError::Encode)
}

#[async_trait]
impl Source for FileSystemSource {
    async fn run(&mut self, ctx: &mut SourceContext) -> Result<SourceEnd, TaskError> {
        let store = self
            .config
            .location
            .open_store()
            .map_err(|e| self.fail(e))?;
        let files = self.list(&store).await?;
        let total = files.len();
        let (me, parallelism) = (self.info.subtask, self.info.parallelism.max(1));
        if total == 0 && me == 0 {
            warn!(
                path = %self.config.location.display(self.config.location.prefix()),
                "no files to read"
            );
        }
        let names: Vec<String> = files.iter().map(|f| f.location.to_string()).collect();
        let listed: BTreeSet<&str> = names.iter().map(String::as_str).collect();
        let mine: Vec<(&ObjectMeta, &str)> = files
            .iter()
            .zip(names.iter().map(String::as_str))
            .enumerate()
            .filter(|(i, _)| i % parallelism == me)
            .map(|(_, f)| f)
            .collect();
        self.keep_mine(&listed, &mine.iter().map(|(_, n)| *n).collect());
        let left = mine
            .iter()
            .filter(|(_, n)| !self.progress.done.contains(*n))
            .count();
        info!(
            node = %self.info.node,
            subtask = me,
            files = mine.len(),
            of = total,
            left,
            resumed = self.progress.partial.len(),
            "reading files"
        );
        for (meta, name) in mine {
            if self.progress.done.contains(name) {
                continue;
            }
            if ctx.should_stop() {
                return Ok(SourceEnd::Stopped);
            }
            let shown = self.config.location.display(&meta.location);
            // A file under the directory may be a symlink out of what the worker may read.
            self.config
                .location
                .check_object(&meta.location)
                .map_err(|e| self.fail(e))?;
            let resume = self.progress.partial.get(name).copied();
            let (end, at) = match self.config.format {
                FileFormat::Json => {
                    self.read_json(ctx, &store, meta, name, resume, &shown)
                        .await?
                }
                FileFormat::Parquet => {
                    self.read_parquet(ctx, &store, meta, name, resume, &shown)
                        .await?
                }
            };
            if end != SourceEnd::Finished {
                // Stopped part of the way: the final state records how far.
                self.progress.partial.insert(name.to_string(), at);
                return Ok(end);
            }
            self.progress.partial.remove(name);
            self.progress.done.insert(name.to_string());
        }
        Ok(SourceEnd::Finished)
    }

    fn snapshot(&self) -> Result<TaskState, TaskError> {
        self.snapshot_with(None)
    }

    /// Takes what every old subtask had read: the files done anywhere are skipped, and a
    /// partly read file resumes where it was, on whichever subtask now reads it.
    fn restore(&mut self, state: &RestoredState) -> Result<(), TaskError> {
        for docs in state.json::<SourceProgress>(SOURCE_TABLE)? {
            for doc in docs {
                self.progress.merge(doc);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::parquet::arrow::ArrowWriter;
    use tokio::sync::{mpsc, watch};

    use super::super::testing::{options, restored, rows_with};
    use super::*;
    use crate::task::protocol::{Link, Report};
    use crate::task::{Barrier, Collector, Message, StopMode};

    #[test]
    fn hidden_files_are_skipped() {
        let prefix = Path::from("data/in");
        assert!(visible(&prefix, &Path::from("data/in/a.json")));
        assert!(visible(&prefix, &Path::from("data/in/sub/b.json")));
        assert!(!visible(&prefix, &Path::from("data/in/.a.json")));
        assert!(!visible(&prefix, &Path::from("data/in/_staging/a.json")));
        assert!(!visible(
            &prefix,
            &Path::from("data/in/.staging/0190-token/a.json")
        ));
        assert!(!visible(&prefix, &Path::from("data/other/a.json")));
    }

    #[test]
    fn parquet_columns_align_by_name_and_cast() {
        use datafusion::arrow::array::{Int64Array, UInt64Array};
        let file = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("extra", DataType::Utf8, true),
                Field::new("counter", DataType::UInt64, true),
            ])),
            vec![
                Arc::new(StringArray::from(vec!["a", "b"])),
                Arc::new(UInt64Array::from(vec![1, 2])),
            ],
        )
        .unwrap();
        let table = Arc::new(Schema::new(vec![
            Field::new("counter", DataType::Int64, false),
            Field::new("missing", DataType::Utf8, true),
        ]));
        let out = align(&file, &table, "f.parquet").unwrap();
        assert_eq!(
            out.column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .values(),
            &[1, 2]
        );
        assert_eq!(out.column(1).null_count(), 2);
        let strict = Arc::new(Schema::new(vec![Field::new("gone", DataType::Utf8, false)]));
        let err = align(&file, &strict, "f.parquet").unwrap_err().to_string();
        assert!(err.contains("f.parquet") && err.contains("'gone'"), "{err}");
    }

    /// The `n` column of a batch.
    fn n_values(batch: &RecordBatch) -> Vec<i64> {
        batch
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .values()
            .to_vec()
    }

    /// Rows `from..from + n` with a 100-character text each.
    fn wide_rows(from: i64, n: i64) -> RecordBatch {
        rows_with(from, n, |i| format!("{i:0>100}"))
    }

    /// Writes `batch` as file `name` under `dir` in `format`.
    fn write_file(dir: &std::path::Path, name: &str, format: &str, batch: &RecordBatch) {
        let path = dir.join(name);
        match format {
            "json" => {
                std::fs::write(
                    &path,
                    crate::connector::sink::encode_json_lines(batch, 0).unwrap(),
                )
                .unwrap();
            }
            _ => {
                let file = std::fs::File::create(&path).unwrap();
                let mut writer = ArrowWriter::try_new(file, batch.schema(), None).unwrap();
                writer.write(batch).unwrap();
                writer.close().unwrap();
            }
        }
    }

    fn source_factory(dir: &std::path::Path, format: &str) -> FileSystemSourceFactory {
        let config = FileSystemSourceConfig::from_options(&mut options(&[
            ("path", dir.to_str().unwrap()),
            ("format", format),
        ]))
        .unwrap();
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, false),
            Field::new("s", DataType::Utf8, true),
        ]));
        FileSystemSourceFactory::new(config, schema, EventTimeSpec::default(), vec![], None)
    }

    /// What one run of a source subtask did.
    struct SourceRun {
        end: SourceEnd,
        /// The `n` of every row it emitted (before its barrier, for a stop at a checkpoint).
        n: Vec<i64>,
        /// Its state: the one reported at the checkpoint, or the final one.
        state: TaskState,
    }

    /// Runs subtask `info` of the source (restored from `restored`), emitting into a channel
    /// of one batch. With `checkpoint_after`, once that many rows arrived a checkpoint that
    /// stops the run is triggered: the source takes it at its next step.
    async fn run_source(
        factory: &FileSystemSourceFactory,
        info: TaskInfo,
        restored: Option<&RestoredState>,
        checkpoint_after: Option<usize>,
    ) -> SourceRun {
        let mut source = factory.create(&info).unwrap();
        if let Some(r) = restored {
            source.restore(r).unwrap();
        }
        let (out, mut rx) = Collector::for_test(1);
        let (_stop, stop_rx) = watch::channel::<Option<StopMode>>(None);
        let (trigger, trigger_rx) = watch::channel(None);
        let (reports, mut reported) = mpsc::unbounded_channel();
        let (_completed, completed) = watch::channel((0u64, false));
        let link = Link {
            task: (0, info.subtask),
            reports,
            completed,
        };
        let mut ctx = SourceContext::new(info, out, stop_rx, trigger_rx, Some(link), None);
        let running = tokio::spawn(async move {
            let end = source.run(&mut ctx).await.unwrap();
            (end, source.snapshot().unwrap())
        });
        let mut n = Vec::new();
        let mut barrier = false;
        while let Some((_, message)) = rx.recv().await {
            match message {
                Message::Data(batch) => {
                    assert!(!barrier, "a row after the barrier of a stop");
                    n.extend(n_values(&batch));
                    if checkpoint_after.is_some_and(|k| n.len() >= k) {
                        trigger.send_replace(Some(Barrier {
                            epoch: 1,
                            stop: true,
                        }));
                    }
                }
                Message::Barrier(_) => barrier = true,
                _ => {}
            }
        }
        let (end, last) = running.await.unwrap();
        let state = match reported.try_recv() {
            Ok(Report::Snapshot { files, .. }) => {
                let mut state = TaskState::new();
                for (table, bytes) in files.state.encode().unwrap() {
                    state.decode_into(&table, bytes).unwrap();
                }
                // What the source says after stopping is what it reported.
                assert_eq!(
                    state.json::<SourceProgress>(SOURCE_TABLE).unwrap(),
                    last.json::<SourceProgress>(SOURCE_TABLE).unwrap()
                );
                state
            }
            _ => last,
        };
        assert_eq!(barrier, end == SourceEnd::Checkpointed);
        SourceRun { end, n, state }
    }

    /// Five files of `format`, one (the second) large, read at parallelism 2 up to a
    /// checkpoint, then restored at 3 and 1: every row is read exactly once.
    async fn source_resumes_at_another_parallelism(format: &str) {
        let dir = tempfile::tempdir().unwrap();
        let mut expected = Vec::new();
        for (k, name) in ["a", "b", "c", "d", "e"].into_iter().enumerate() {
            let from = k as i64 * 1_000_000;
            // A JSON file of over 4 MiB is read in several steps; a Parquet one in batches.
            let rows = match (format, k) {
                ("json", 1) => 50_000,
                ("json", _) => 10_000,
                _ => 20_000,
            };
            let batch = wide_rows(from, rows);
            write_file(dir.path(), &format!("{name}.{format}"), format, &batch);
            expected.extend(from..from + rows);
        }
        let factory = source_factory(dir.path(), format);

        let mut seen = Vec::new();
        let mut states = Vec::new();
        for subtask in 0..2 {
            let run = run_source(&factory, TaskInfo::for_test(subtask, 2), None, Some(1)).await;
            assert_eq!(run.end, SourceEnd::Checkpointed);
            seen.extend(run.n);
            states.push(run.state);
        }
        // The checkpoint fell inside a file (JSON: at a byte offset short of its end).
        let progress: Vec<SourceProgress> = states
            .iter()
            .flat_map(|s| s.json::<SourceProgress>(SOURCE_TABLE).unwrap())
            .collect();
        let inside = progress
            .iter()
            .flat_map(|p| p.partial.iter())
            .any(|(file, at)| {
                let size = std::fs::metadata(format!("/{file}")).unwrap().len();
                match at {
                    Resume::Lines { offset, .. } => *offset > 0 && *offset < size,
                    Resume::Rows(n) => *n > 0 && *n < 20_000,
                }
            });
        assert!(inside, "{progress:?}");
        assert!(
            seen.len() < expected.len(),
            "the checkpoint came at the end"
        );

        let from_checkpoint = restored(states);
        let mut finals = Vec::new();
        for subtask in 0..3 {
            let run = run_source(
                &factory,
                TaskInfo::for_test(subtask, 3),
                Some(&from_checkpoint),
                None,
            )
            .await;
            assert_eq!(run.end, SourceEnd::Finished);
            seen.extend(run.n);
            finals.push(run.state);
        }
        seen.sort();
        let mut twice = seen.clone();
        twice.dedup();
        assert_eq!(twice.len(), seen.len(), "rows read twice");
        assert_eq!(seen, expected);

        // Restored from its final state, the source has nothing left to read.
        let run = run_source(
            &factory,
            TaskInfo::for_test(0, 1),
            Some(&restored(finals)),
            None,
        )
        .await;
        assert_eq!((run.end, run.n.len()), (SourceEnd::Finished, 0));
        let done = run.state.json::<SourceProgress>(SOURCE_TABLE).unwrap();
        assert_eq!(done[0].done.len(), 5, "{done:?}");
    }

    #[tokio::test]
    async fn json_source_resumes_at_another_parallelism() {
        source_resumes_at_another_parallelism("json").await;
    }

    #[tokio::test]
    async fn parquet_source_resumes_at_another_parallelism() {
        source_resumes_at_another_parallelism("parquet").await;
    }

    #[test]
    fn restored_progress_merges_subtasks() {
        let mut a = SourceProgress::default();
        a.done.insert("x".into());
        a.partial.insert("y".into(), Resume::Rows(5));
        let mut b = SourceProgress::default();
        b.partial.insert("x".into(), Resume::Rows(1));
        b.partial.insert("y".into(), Resume::Rows(9));
        a.merge(b);
        assert_eq!(a.done.iter().collect::<Vec<_>>(), ["x"]);
        assert_eq!(
            a.partial.into_iter().collect::<Vec<_>>(),
            [("y".to_string(), Resume::Rows(9))]
        );
    }
}
