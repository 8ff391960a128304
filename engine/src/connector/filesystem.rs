//! `filesystem`: a directory of files on a local disk or in an object store (`file://`,
//! `s3://`, `gs://`, `az://`), read as a bounded source or written as a sink of part files.
//! Every access goes through `object_store`; nothing here blocks the runtime.
//!
//! Options of both sides: `type` (`source` | `sink`, required), `path` (a local directory, or
//! a URL prefix; required), `format` (`json` lines | `parquet`, required), `storage.<key>`
//! (object-store settings such as `storage.aws_region`, over those read from the usual
//! `AWS_*`, `GOOGLE_*` and `AZURE_*` environment, `AWS_ENDPOINT` and `AWS_ALLOW_HTTP` included).
//!
//! The source lists every file under `path` (recursively; names starting with `.` or `_` are
//! skipped, as are object stores' in-progress uploads), keeps those whose path in the store
//! matches `source.regex_pattern`, sorts them by name, and subtask `i` of `p` reads files
//! `i, i + p, ...`; then it finishes. JSON lines are decoded as `single_file` decodes them
//! (`bad_data`, event time, virtual columns); Parquet columns are matched by name and cast to
//! the declared types. `source.compression` only accepts `none`.
//!
//! At a checkpoint a source subtask records (table `files`, one JSON document) the files it
//! read to the end and, for a file read part of the way, how far: the byte offset and line
//! count of the complete lines emitted (JSON), or the rows read (Parquet; checkpoints are
//! taken between batches). A restore, at any parallelism, unions what every old subtask
//! recorded: the files done are skipped, and a partly read file resumes (a ranged get from
//! the offset; Parquet rows skipped) on whichever subtask now reads it.
//!
//! The sink protocol, per subtask:
//!
//! 1. The first rows open a file `<path>/[<filename.prefix>-]<name>.<suffix>`, the name made by
//!    `filename.strategy` (`uuid_v7` by default, `uuid`, `ulid`, or `serial`:
//!    `<file index:05>-<subtask:03>`); rows are encoded into memory (JSON lines, or a Parquet
//!    writer whose row groups are cut at `parquet.row_group_size`). The event time is dropped.
//! 2. Once `multipart.target_part_size` bytes are buffered, a multipart upload starts and the
//!    buffer goes up in parts of exactly that size.
//! 3. The file is closed when it reaches `rolling_policy.file_size`, `multipart.max_parts`, or
//!    has been open `rolling_policy.interval` or idle `rolling_policy.inactivity_interval`
//!    (a timer checks the last two while no input comes), and at the end of input. A file that
//!    never started an upload is written with one put; otherwise the rest goes up as its last
//!    part and the upload is completed.
//!    A file is written under a staged name, `<path>/.staging/<token>/<name>` (hidden from
//!    the filesystem source and other readers; `<token>` names the subtask's staging
//!    directory), and a local one is fsynced with its directories. It does not appear yet.
//! 4. At a checkpoint barrier the open file is closed too, and the (staged, final) names of
//!    every file closed and not yet committed go into the subtask's state (table `files`,
//!    with the token and, for serial names, the next file index). When the checkpoint
//!    completes (its MANIFEST is written), they are committed: renamed to their final names
//!    (copy then delete in an object store; a local rename, then the directory fsynced).
//!    A commit is idempotent: a staged file gone while its final name exists was committed.
//! 5. A restore commits the files its checkpoint lists (the checkpoint completed; the crash
//!    may have come before or during their commit), then deletes what else is in the
//!    staging directories of the old subtasks it took over (subtask `i` of the old run goes
//!    to `i % parallelism`): files written after the checkpoint, which never appear. The
//!    token of the same subtask is inherited and serial names go on from the highest index
//!    recorded, so a rerun never overwrites a file a checkpoint committed. A fresh subtask
//!    draws a new token: writers of other pipelines under the same path are left alone.
//! 6. At the end of input (no checkpoint follows) the files are committed at once. So a file
//!    appears under its final name only once complete and, with checkpoints, only once the
//!    checkpoint holding its rows completed; without checkpoints, files appear at the end.
//!
//! Updating results (retractions) cannot be written: neither format can express them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, StringArray, new_null_array};
use datafusion::arrow::compute::{CastOptions, cast_with_options, regexp_is_match_scalar};
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::parquet::arrow::arrow_reader::ArrowReaderOptions;
// Deprecated in parquet 59.2 for a hand-written `AsyncFileReader`, which needs the `bytes`
// crate; this one still works and keeps the dependencies as they are.
#[allow(deprecated)]
use datafusion::parquet::arrow::async_reader::ParquetObjectReader;
use datafusion::parquet::arrow::{ArrowWriter, ParquetRecordBatchStreamBuilder, ProjectionMask};
use datafusion::parquet::basic::{Compression, GzipLevel, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    GetOptions, GetRange, GetResult, GetResultPayload, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{info, warn};

use super::file::{
    self, BadData, FilePosition, FileSource, FileSourceConfig, FileSourceFactory, LineFormat,
};
use super::{ConnectorError, ConnectorTable, EventTimeSpec, Options, parse_duration};
use crate::storage::{Location, StorageError, durable};
use crate::task::{
    Collector, Message, Operator, OperatorFactory, RestoredState, Source, SourceContext, SourceEnd,
    SourceFactory, TaskError, TaskInfo, TaskState, Watermark,
};

const CONNECTOR: &str = "filesystem";
/// Parts of a multipart upload: Arroyo's defaults.
const DEFAULT_PART_SIZE: u64 = 32 << 20;
const DEFAULT_MAX_PARTS: u64 = 1000;
/// S3's smallest part (all but the last).
const MIN_PART_SIZE: u64 = 5 << 20;
/// Bytes of encoded rows after which a Parquet row group is cut (Arroyo's default).
const DEFAULT_ROW_GROUP_BYTES: u64 = 128 << 20;

/// Arroyo options this connector knows but does not implement: planning refuses them by name
/// rather than as unknown. The value given is accepted when it asks for nothing.
const UNSUPPORTED: &[(&str, Option<&str>)] = &[
    ("partitioning.fields", None),
    ("partitioning.time_pattern", None),
    ("partition_fields", None),
    ("time_partition_pattern", None),
    ("shuffle_by_partition.enabled", Some("false")),
    ("partitioning.shuffle_by_partition.enabled", Some("false")),
    ("rolling_policy.watermark_expiration", Some("false")),
    ("multipart.minimum_multipart_size", None),
];

/// The file format, on both sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// One JSON object per line.
    Json,
    Parquet,
}

impl FileFormat {
    fn suffix(self) -> &'static str {
        match self {
            FileFormat::Json => "json",
            FileFormat::Parquet => "parquet",
        }
    }
}

fn invalid(option: &str, value: &str, reason: impl Into<String>) -> ConnectorError {
    ConnectorError::InvalidOption {
        option: option.into(),
        value: value.into(),
        reason: reason.into(),
    }
}

/// A location's error as the error of the option that gave it.
fn location_error(path: &str, e: StorageError) -> ConnectorError {
    match e {
        StorageError::BadOption { key, value, reason } => {
            invalid(&format!("storage.{key}"), &value, reason)
        }
        StorageError::BadLocation { reason, .. } => invalid("path", path, reason),
        other => invalid("path", path, crate::task::error_chain(&other)),
    }
}

/// Takes the options common to both sides: `path`, `storage.*`, `format`.
fn take_location_and_format(
    options: &mut Options,
) -> Result<(Location, FileFormat), ConnectorError> {
    let path = options.require(CONNECTOR, "path")?;
    let keys: Vec<String> = options
        .unused()
        .filter(|k| k.starts_with("storage."))
        .map(str::to_string)
        .collect();
    let storage = keys
        .iter()
        .map(|k| {
            let value = options.take(k).unwrap_or_default();
            (k["storage.".len()..].to_string(), value)
        })
        .collect();
    let location = Location::parse(&path, storage).map_err(|e| location_error(&path, e))?;
    let format = match options.require(CONNECTOR, "format")?.as_str() {
        "json" => FileFormat::Json,
        "parquet" => FileFormat::Parquet,
        other => {
            return Err(invalid(
                "format",
                other,
                "the filesystem connector reads and writes 'json' or 'parquet'",
            ));
        }
    };
    for (key, harmless) in UNSUPPORTED {
        if let Some(value) = options.take(key)
            && Some(value.trim()) != *harmless
        {
            return Err(invalid(key, &value, "not supported by arroyod"));
        }
    }
    Ok((location, format))
}

/// Takes an option that Arroyo spells two ways (the current name first); giving both is an
/// error.
fn take_either<T>(
    options: &mut Options,
    current: &str,
    legacy: &str,
    take: impl Fn(&mut Options, &str) -> Result<Option<T>, ConnectorError>,
) -> Result<Option<T>, ConnectorError> {
    let a = take(options, current)?;
    let b = take(options, legacy)?;
    match (a, b) {
        (Some(_), Some(_)) => Err(ConnectorError::Usage(format!(
            "give either '{current}' or '{legacy}', not both"
        ))),
        (a, b) => Ok(a.or(b)),
    }
}

/// Parses a data size: a whole number with an optional unit (`b`, `k`/`kb`/`kib`, `m`..., `g`,
/// `t`; powers of 1024), as `'128MB'`.
pub fn parse_data_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a data size such as '128MB'"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        other => return Err(format!("unknown data size unit '{other}' in '{text}'")),
    };
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("'{text}' is too large"))
}

fn take_data_size(options: &mut Options, key: &str) -> Result<Option<u64>, ConnectorError> {
    options
        .take(key)
        .map(|v| parse_data_size(&v).map_err(|reason| invalid(key, &v, reason)))
        .transpose()
}

fn take_positive(options: &mut Options, key: &str) -> Result<Option<u64>, ConnectorError> {
    match options.take_parsed::<u64>(key)? {
        Some(0) => Err(invalid(key, "0", "must be above 0")),
        n => Ok(n),
    }
}

fn take_duration(options: &mut Options, key: &str) -> Result<Option<Duration>, ConnectorError> {
    let d = options
        .take(key)
        .map(|v| {
            parse_duration(&v)
                .map_err(|reason| invalid(key, &v, reason))
                .and_then(|d| {
                    if d.is_zero() {
                        Err(invalid(key, &v, "must be above 0"))
                    } else {
                        Ok(d)
                    }
                })
        })
        .transpose()?;
    Ok(d)
}

fn take_seconds(options: &mut Options, key: &str) -> Result<Option<Duration>, ConnectorError> {
    Ok(take_positive(options, key)?.map(Duration::from_secs))
}

// ---------------------------------------------------------------------------------------------
// Source
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct FileSystemSourceConfig {
    location: Location,
    format: FileFormat,
    bad_data: BadData,
    /// `source.regex_pattern`: only files whose path in the store matches are read.
    regex: Option<String>,
}

impl FileSystemSourceConfig {
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
        if let Some((key, value)) = compression
            && value != "none"
        {
            return Err(invalid(
                &key,
                &value,
                "only uncompressed files ('none') can be read",
            ));
        }
        Ok(FileSystemSourceConfig {
            location,
            format,
            bad_data: file::take_bad_data(options)?,
            regex,
        })
    }
}

pub struct FileSystemSourceFactory {
    config: FileSystemSourceConfig,
    /// Decodes a file's rows as a `single_file` source would: one reader per file.
    rows: Arc<FileSourceFactory>,
}

impl FileSystemSourceFactory {
    pub fn new(
        config: FileSystemSourceConfig,
        schema: SchemaRef,
        event_time: EventTimeSpec,
        generated: Vec<(usize, Arc<dyn datafusion::physical_expr::PhysicalExpr>)>,
        projection: Option<Vec<usize>>,
    ) -> Self {
        let rows = FileSourceConfig::new(
            config.location.display(&config.location.prefix()),
            LineFormat::Json,
            config.bad_data,
        );
        FileSystemSourceFactory {
            rows: Arc::new(FileSourceFactory::new(
                rows, schema, event_time, generated, projection,
            )),
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

struct FileSystemSource {
    config: FileSystemSourceConfig,
    rows: Arc<FileSourceFactory>,
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
    fn fail(&self, message: String) -> TaskError {
        TaskError::Connector {
            node: self.info.node.clone(),
            message,
        }
    }

    /// The subtask's state: its progress, with `current` (the file being read and how far)
    /// over it.
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
            .map_err(|e| self.fail(format!("cannot list {shown}: {e}")))?;
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
                .map_err(|e| self.fail(e.to_string()))?;
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
        let mut rows = self.rows.reader(&self.info, shown.to_string());
        let (offset, lines) = match resume {
            Some(Resume::Lines { offset, lines }) => (offset, lines),
            _ => (0, 0),
        };
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
        let GetResult { payload, range, .. } = store
            .get_opts(&meta.location, options)
            .await
            .map_err(|e| self.fail(format!("cannot open {shown} at byte {offset}: {e}")))?;
        let snapshot = |r: &FileSource| {
            let p = r.position();
            self.snapshot_with(Some((
                name,
                Resume::Lines {
                    offset: p.offset,
                    lines: p.lines,
                },
            )))
        };
        let end = match payload {
            GetResultPayload::File(f, _) => {
                // A local file comes open at its start, whatever the range.
                let mut file = tokio::fs::File::from_std(f);
                if range.start > 0 {
                    use tokio::io::AsyncSeekExt;
                    file.seek(std::io::SeekFrom::Start(range.start))
                        .await
                        .map_err(|e| {
                            self.fail(format!("seeking to byte {} of {shown}: {e}", range.start))
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
        let mut rows = self.rows.reader(&self.info, shown.to_string());
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
                let message = format!("bad data in {shown}: not a Parquet file: {e}");
                return match self.config.bad_data {
                    BadData::Fail => Err(self.fail(message)),
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
        let skip_rows = usize::try_from(skip)
            .map_err(|_| self.fail(format!("{shown}: cannot skip {skip} rows")))?;
        let mut batches = builder
            .with_batch_size(file::BATCH_ROWS)
            .with_projection(mask)
            .with_offset(skip_rows)
            .build()
            .map_err(|e| self.fail(format!("reading {shown}: {e}")))?;
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
            let batch = batch.map_err(|e| self.fail(format!("reading {shown}: {e}")))?;
            read += batch.num_rows() as u64;
            let batch = align(&batch, &stored).map_err(|e| self.fail(format!("{shown}: {e}")))?;
            rows.emit_stored(ctx, batch).await?;
        }
        Ok((SourceEnd::Finished, Resume::Rows(read)))
    }
}

/// `batch`'s columns by name, cast to `schema`'s types; a column the file lacks is null.
fn align(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, String> {
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
                format!(
                    "column '{}' ({}) does not convert to {}: {e}",
                    field.name(),
                    c.data_type(),
                    field.data_type()
                )
            }),
            None if field.is_nullable() => Ok(new_null_array(field.data_type(), batch.num_rows())),
            None => Err(format!("the file has no column '{}'", field.name())),
        })
        .collect::<Result<Vec<ArrayRef>, String>>()?;
    RecordBatch::try_new(schema.clone(), columns).map_err(|e| e.to_string())
}

#[async_trait]
impl Source for FileSystemSource {
    async fn run(&mut self, ctx: &mut SourceContext) -> Result<SourceEnd, TaskError> {
        let store = self
            .config
            .location
            .store()
            .map_err(|e| self.fail(crate::task::error_chain(&e)))?;
        let files = self.list(&store).await?;
        let total = files.len();
        let (me, parallelism) = (self.info.subtask, self.info.parallelism.max(1));
        if total == 0 && me == 0 {
            warn!(
                path = %self.config.location.display(&self.config.location.prefix()),
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

// ---------------------------------------------------------------------------------------------
// Sink
// ---------------------------------------------------------------------------------------------

/// How part files are named (`filename.strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameStrategy {
    /// `<file index:05>-<subtask:03>`: the same names on every run.
    Serial,
    Uuid,
    UuidV7,
    Ulid,
}

#[derive(Debug, Clone)]
pub struct FileSystemSinkConfig {
    location: Location,
    format: FileFormat,
    compression: Compression,
    row_group_bytes: u64,
    /// `rolling_policy.file_size`: close a file once it has this many bytes.
    file_size: Option<u64>,
    /// `rolling_policy.interval`: close a file this long after it was opened.
    interval: Option<Duration>,
    /// `rolling_policy.inactivity_interval`: close a file not written for this long.
    inactivity: Option<Duration>,
    part_size: u64,
    max_parts: u64,
    prefix: Option<String>,
    suffix: String,
    strategy: NameStrategy,
}

fn parquet_compression(key: &str, value: &str) -> Result<Compression, ConnectorError> {
    Ok(match value {
        "uncompressed" | "none" => Compression::UNCOMPRESSED,
        "snappy" => Compression::SNAPPY,
        "gzip" => Compression::GZIP(GzipLevel::default()),
        "zstd" => Compression::ZSTD(ZstdLevel::default()),
        "lz4" => Compression::LZ4,
        "lz4_raw" => Compression::LZ4_RAW,
        _ => {
            return Err(invalid(
                key,
                value,
                "expected 'uncompressed', 'snappy', 'gzip', 'zstd', 'lz4' or 'lz4_raw'",
            ));
        }
    })
}

impl FileSystemSinkConfig {
    pub fn from_options(options: &mut Options) -> Result<Self, ConnectorError> {
        let (location, format) = take_location_and_format(options)?;
        let compression = take_either(
            options,
            "parquet.compression",
            "parquet_compression",
            |o, k| {
                o.take(k)
                    .map(|v| parquet_compression(k, v.trim()))
                    .transpose()
            },
        )?;
        let row_group = take_data_size(options, "parquet.row_group_size")?;
        if format != FileFormat::Parquet && (compression.is_some() || row_group.is_some()) {
            return Err(ConnectorError::Usage(
                "parquet.* options need format = 'parquet'".into(),
            ));
        }
        let part_size = take_either(
            options,
            "multipart.target_part_size",
            "target_part_size",
            take_data_size,
        )?;
        if let Some(p) = part_size
            && p < MIN_PART_SIZE
        {
            return Err(invalid(
                "multipart.target_part_size",
                &p.to_string(),
                "must be at least 5MB, the smallest part object stores take",
            ));
        }
        let strategy = match options.take("filename.strategy").as_deref() {
            None | Some("uuid_v7") => NameStrategy::UuidV7,
            Some("serial") => NameStrategy::Serial,
            Some("uuid") => NameStrategy::Uuid,
            Some("ulid") => NameStrategy::Ulid,
            Some(other) => {
                return Err(invalid(
                    "filename.strategy",
                    other,
                    "expected 'serial', 'uuid', 'uuid_v7' or 'ulid'",
                ));
            }
        };
        let prefix = options.take("filename.prefix");
        if let Some(p) = &prefix
            && (p.is_empty() || p.contains('/'))
        {
            return Err(invalid(
                "filename.prefix",
                p,
                "must be a non-empty name without '/'",
            ));
        }
        let suffix = match options.take("filename.suffix") {
            None => format.suffix().to_string(),
            Some(s) => {
                let trimmed = s.trim_start_matches('.');
                if trimmed.is_empty() || trimmed.contains('/') {
                    return Err(invalid(
                        "filename.suffix",
                        &s,
                        "must be a non-empty name without '/'",
                    ));
                }
                trimmed.to_string()
            }
        };
        match options.take("sink.version").as_deref() {
            None | Some("v1") | Some("v2") => {}
            Some(other) => return Err(invalid("sink.version", other, "expected 'v1' or 'v2'")),
        }
        Ok(FileSystemSinkConfig {
            location,
            format,
            compression: compression.unwrap_or(Compression::ZSTD(ZstdLevel::default())),
            row_group_bytes: match row_group {
                Some(0) => return Err(invalid("parquet.row_group_size", "0", "must be above 0")),
                r => r.unwrap_or(DEFAULT_ROW_GROUP_BYTES),
            },
            file_size: take_either(
                options,
                "rolling_policy.file_size",
                "target_file_size",
                |o, k| {
                    if k == "target_file_size" {
                        take_positive(o, k)
                    } else {
                        take_data_size(o, k)
                    }
                },
            )?,
            interval: take_either(
                options,
                "rolling_policy.interval",
                "rollover_seconds",
                |o, k| {
                    if k == "rollover_seconds" {
                        take_seconds(o, k)
                    } else {
                        take_duration(o, k)
                    }
                },
            )?,
            inactivity: take_either(
                options,
                "rolling_policy.inactivity_interval",
                "inactivity_rollover_seconds",
                |o, k| {
                    if k == "inactivity_rollover_seconds" {
                        take_seconds(o, k)
                    } else {
                        take_duration(o, k)
                    }
                },
            )?,
            part_size: part_size.unwrap_or(DEFAULT_PART_SIZE),
            max_parts: take_either(options, "multipart.max_parts", "max_parts", take_positive)?
                .unwrap_or(DEFAULT_MAX_PARTS),
            prefix,
            suffix,
            strategy,
        })
    }

    /// How often the timer looks for files to close on time; None without a time policy.
    fn tick(&self) -> Option<Duration> {
        let shortest = match (self.interval, self.inactivity) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        Some((shortest / 10).clamp(Duration::from_millis(10), Duration::from_secs(1)))
    }
}

pub struct FileSystemSinkFactory {
    table: String,
    config: Arc<FileSystemSinkConfig>,
}

impl FileSystemSinkFactory {
    /// A sink of `table`; `updating` input is refused (neither format has retractions).
    pub fn new(
        table: &ConnectorTable,
        config: &FileSystemSinkConfig,
        updating: bool,
    ) -> Result<Self, ConnectorError> {
        if updating {
            return Err(ConnectorError::Usage(format!(
                "'{}' receives updating results (an aggregate without a window), which the filesystem sink cannot write: neither 'json' nor 'parquet' files can express retractions",
                table.name
            )));
        }
        Ok(FileSystemSinkFactory {
            table: table.name.clone(),
            config: Arc::new(config.clone()),
        })
    }
}

impl OperatorFactory for FileSystemSinkFactory {
    fn create(&self, info: &TaskInfo) -> Result<Box<dyn Operator>, TaskError> {
        let state = SinkState::new(
            info.node.clone(),
            self.config.clone(),
            info.subtask,
            info.parallelism,
        )
        .map_err(|message| TaskError::Connector {
            node: info.node.clone(),
            message: format!("{}: {message}", self.table),
        })?;
        Ok(Box::new(FileSystemSink {
            node: info.node.clone(),
            tick: self.config.tick(),
            state: Arc::new(Mutex::new(state)),
            timer: None,
            failure: Arc::new(StdMutex::new(None)),
            checkpointing: info.checkpointing,
            closed: false,
        }))
    }
}

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
struct OpenFile {
    /// Where it is written: its staged name.
    location: Path,
    /// The name it takes once committed.
    target: Path,
    encoder: Encoder,
    /// Started once a whole part is buffered.
    upload: Option<Box<dyn MultipartUpload>>,
    parts: u64,
    uploaded: u64,
    opened: Instant,
    last_write: Instant,
}

impl OpenFile {
    fn buffer(&mut self) -> &mut Vec<u8> {
        match &mut self.encoder {
            Encoder::Json(buf) => buf,
            Encoder::Parquet { writer, .. } => writer.inner_mut(),
        }
    }

    /// The file's size so far, encoded rows not yet in a row group included.
    fn size(&self) -> u64 {
        self.uploaded
            + match &self.encoder {
                Encoder::Json(buf) => buf.len() as u64,
                Encoder::Parquet { writer, .. } => {
                    (writer.inner().len() + writer.in_progress_size()) as u64
                }
            }
    }

    fn encode(&mut self, batch: &RecordBatch, row_group_bytes: u64) -> Result<(), String> {
        match &mut self.encoder {
            Encoder::Json(buf) => {
                buf.extend_from_slice(&super::sink::encode_json_lines(batch, 0)?);
            }
            Encoder::Parquet { writer, schema } => {
                let batch = RecordBatch::try_new(schema.clone(), batch.columns().to_vec())
                    .map_err(|e| format!("a batch does not fit the file's schema: {e}"))?;
                writer.write(&batch).map_err(|e| e.to_string())?;
                if writer.in_progress_size() as u64 >= row_group_bytes {
                    writer.flush().map_err(|e| e.to_string())?;
                }
            }
        }
        Ok(())
    }

    /// Uploads every whole part buffered, keeping the last part of `max_parts` for the close.
    async fn upload_parts(
        &mut self,
        store: &Arc<dyn ObjectStore>,
        part_size: u64,
        max_parts: u64,
    ) -> Result<(), String> {
        let part_size = part_size as usize;
        while self.buffer().len() >= part_size && self.parts + 1 < max_parts {
            if self.upload.is_none() {
                let upload = store
                    .put_multipart(&self.location)
                    .await
                    .map_err(|e| format!("starting an upload: {e}"))?;
                self.upload = Some(upload);
            }
            let buffer = self.buffer();
            let rest = buffer.split_off(part_size);
            let part = std::mem::replace(buffer, rest);
            let upload = self.upload.as_mut().expect("an upload was started");
            upload
                .put_part(part.into())
                .await
                .map_err(|e| format!("uploading a part: {e}"))?;
            self.parts += 1;
            self.uploaded += part_size as u64;
        }
        Ok(())
    }

    /// Writes the rest and makes the file appear under its (staged) location; returns its
    /// size.
    async fn finish(&mut self, store: &Arc<dyn ObjectStore>) -> Result<u64, String> {
        let rest = match std::mem::replace(&mut self.encoder, Encoder::Json(Vec::new())) {
            Encoder::Json(buf) => buf,
            Encoder::Parquet { writer, .. } => writer.into_inner().map_err(|e| e.to_string())?,
        };
        let size = self.uploaded + rest.len() as u64;
        match self.upload.take() {
            None => {
                store
                    .put(&self.location, rest.into())
                    .await
                    .map_err(|e| e.to_string())?;
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
                    return Err(e.to_string());
                }
            }
        }
        Ok(size)
    }
}

impl Drop for OpenFile {
    fn drop(&mut self) {
        // A run cut short: the parts uploaded so far are abandoned (object stores keep them
        // until aborted). Best effort, as nothing waits for it.
        if let Some(mut upload) = self.upload.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                let _ = upload.abort().await;
            });
        }
    }
}

/// The sink's state table: one [`SinkCheckpoint`] document per subtask.
const SINK_TABLE: &str = "files";
/// The directory under the sink's path where finished files wait for their checkpoint; hidden
/// (a leading `.`) from the filesystem source and from other readers of the directory.
const STAGING_DIR: &str = ".staging";

/// A finished file waiting for its checkpoint to complete, by paths in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StagedFile {
    /// Where it is: under the staging directory.
    staged: String,
    /// The name it is committed under.
    #[serde(rename = "final")]
    target: String,
}

/// A sink subtask's state at a checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct SinkCheckpoint {
    /// Names the subtask's staging directory, `<path>/.staging/<token>`: random on a fresh
    /// start, inherited on a restore, so that a restore clears what a crashed run left there
    /// and nothing of another pipeline writing to the same path.
    token: String,
    /// The index of the next file (in serial names): a rerun from the checkpoint reuses the
    /// names the lost run had used after it, and never one committed before.
    next_index: u64,
    /// Files staged up to this checkpoint and not known to be committed: restoring the
    /// checkpoint commits them.
    pending: Vec<StagedFile>,
}

/// What a restored subtask does before anything else.
#[derive(Debug, Default)]
struct Recovery {
    /// Files of the restored checkpoint to commit.
    commit: Vec<StagedFile>,
    /// Staging directories (tokens) to clear once those are committed: what is left in them
    /// was written after the checkpoint and must never appear.
    clear: Vec<String>,
}

/// What one sink subtask writes with, shared with its timer.
struct SinkState {
    node: String,
    store: Arc<dyn ObjectStore>,
    config: Arc<FileSystemSinkConfig>,
    subtask: usize,
    parallelism: usize,
    /// The name of this subtask's staging directory.
    token: String,
    next_index: u64,
    open: Option<OpenFile>,
    /// Files closed so far.
    written: u64,
    /// Files closed since the last barrier.
    staged: Vec<StagedFile>,
    /// Files closed before a barrier, committed when a checkpoint completes.
    pending: Vec<StagedFile>,
    /// Set by a restore; done by the first call after it.
    recovery: Option<Recovery>,
}

impl SinkState {
    /// The writer of subtask `subtask` of `parallelism`, with a new staging directory.
    fn new(
        node: String,
        config: Arc<FileSystemSinkConfig>,
        subtask: usize,
        parallelism: usize,
    ) -> Result<Self, String> {
        Ok(SinkState {
            node,
            store: config
                .location
                .store()
                .map_err(|e| crate::task::error_chain(&e))?,
            config,
            subtask,
            parallelism: parallelism.max(1),
            token: uuid(true),
            next_index: 0,
            open: None,
            written: 0,
            staged: Vec::new(),
            pending: Vec::new(),
            recovery: None,
        })
    }

    fn display(&self, object: &Path) -> String {
        self.config.location.display(object)
    }

    /// `<path>/.staging/<token>`.
    fn staging_dir(&self, token: &str) -> Path {
        self.config
            .location
            .prefix()
            .clone()
            .join(STAGING_DIR)
            .join(token)
    }

    fn file_name(&self) -> String {
        let base = match self.config.strategy {
            NameStrategy::Serial => format!("{:05}-{:03}", self.next_index, self.subtask),
            NameStrategy::Uuid => uuid(false),
            NameStrategy::UuidV7 => uuid(true),
            NameStrategy::Ulid => ulid(),
        };
        match &self.config.prefix {
            Some(p) => format!("{p}-{base}.{}", self.config.suffix),
            None => format!("{base}.{}", self.config.suffix),
        }
    }

    fn open_file(&mut self, schema: &Schema, now: Instant) -> Result<OpenFile, String> {
        let name = self.file_name();
        let target = self.config.location.prefix().clone().join(name.as_str());
        let location = self.staging_dir(&self.token).join(name.as_str());
        self.next_index += 1;
        let encoder = match self.config.format {
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
                    .set_compression(self.config.compression)
                    .build();
                let writer = ArrowWriter::try_new(Vec::new(), schema.clone(), Some(props))
                    .map_err(|e| e.to_string())?;
                Encoder::Parquet {
                    writer: Box::new(writer),
                    schema,
                }
            }
        };
        Ok(OpenFile {
            location,
            target,
            encoder,
            upload: None,
            parts: 0,
            uploaded: 0,
            opened: now,
            last_write: now,
        })
    }

    fn due_on_time(&self, now: Instant) -> bool {
        self.open.as_ref().is_some_and(|f| {
            self.config
                .interval
                .is_some_and(|d| now.duration_since(f.opened) >= d)
                || self
                    .config
                    .inactivity
                    .is_some_and(|d| now.duration_since(f.last_write) >= d)
        })
    }

    async fn write(&mut self, batch: &RecordBatch) -> Result<(), String> {
        let now = Instant::now();
        if self.due_on_time(now) {
            self.close().await?;
        }
        if self.open.is_none() {
            self.open = Some(self.open_file(&batch.schema(), now)?);
        }
        let config = self.config.clone();
        let file = self.open.as_mut().expect("a file is open");
        file.encode(batch, config.row_group_bytes)?;
        file.last_write = now;
        let shown = config.location.display(&file.location);
        file.upload_parts(&self.store, config.part_size, config.max_parts)
            .await
            .map_err(|e| format!("writing {shown}: {e}"))?;
        let full = file.parts + 1 >= config.max_parts
            || config.file_size.is_some_and(|limit| file.size() >= limit);
        if full {
            self.close().await?;
        }
        Ok(())
    }

    /// Closes the open file, if any: it is finished under its staged name and waits for the
    /// next barrier.
    async fn close(&mut self) -> Result<(), String> {
        let Some(mut file) = self.open.take() else {
            return Ok(());
        };
        let shown = self.display(&file.location);
        let size = file
            .finish(&self.store)
            .await
            .map_err(|e| format!("writing {shown}: {e}"))?;
        // The file, its staging directory, `.staging` and the sink's directory: the last two
        // may just have been made.
        self.sync_local(&file.location, 3).await?;
        self.staged.push(StagedFile {
            staged: file.location.to_string(),
            target: file.target.to_string(),
        });
        self.written += 1;
        info!(node = %self.node, file = %shown, bytes = size, "file staged");
        Ok(())
    }

    /// For a local path: fsyncs `object` and the `dirs` directories above it (its own
    /// first), so that a file and its name survive a crash.
    async fn sync_local(&mut self, object: &Path, dirs: usize) -> Result<(), String> {
        match self.config.location.local_path(object) {
            Some(path) => durable::sync(path, dirs)
                .await
                .map_err(|e| crate::task::error_chain(&e)),
            None => Ok(()),
        }
    }

    /// At a barrier: closes the open file (everything before the barrier is then in staged
    /// files) and returns the state, with every file not committed yet.
    async fn barrier(&mut self) -> Result<SinkCheckpoint, String> {
        self.close().await?;
        self.pending.append(&mut self.staged);
        Ok(SinkCheckpoint {
            token: self.token.clone(),
            next_index: self.next_index,
            pending: self.pending.clone(),
        })
    }

    /// A checkpoint completed: commits the files staged before its barrier.
    ///
    /// Every pending file was staged before a barrier this subtask has passed, and the runtime
    /// delivers the completion of an epoch before the barrier of the next one (the coordinator
    /// triggers one epoch at a time), so all of them belong to the completed checkpoint or an
    /// earlier one.
    async fn commit_pending(&mut self) -> Result<(), String> {
        let files = std::mem::take(&mut self.pending);
        for (i, file) in files.iter().enumerate() {
            if let Err(e) = self.commit(file).await {
                self.pending = files[i..].to_vec();
                return Err(e);
            }
        }
        if !files.is_empty() {
            info!(node = %self.node, subtask = self.subtask, files = files.len(), "files committed");
        }
        Ok(())
    }

    /// Moves a staged file to its final name, where it appears whole. Idempotent: when the
    /// staged file is gone and the final one exists, an earlier commit did it.
    async fn commit(&mut self, file: &StagedFile) -> Result<(), String> {
        let parse = |p: &str| {
            Path::parse(p).map_err(|e| format!("the checkpoint names an invalid path '{p}': {e}"))
        };
        let (staged, target) = (parse(&file.staged)?, parse(&file.target)?);
        let (from, to) = (self.display(&staged), self.display(&target));
        match self.store.rename(&staged, &target).await {
            Ok(()) => {}
            Err(object_store::Error::NotFound { .. }) => match self.store.head(&target).await {
                Ok(_) => {}
                Err(object_store::Error::NotFound { .. }) => {
                    return Err(format!(
                        "cannot commit {to}: neither it nor its staged file {from} exists (were they deleted?)"
                    ));
                }
                Err(e) => return Err(format!("committing {from} as {to}: {e}")),
            },
            Err(e) => return Err(format!("committing {from} as {to}: {e}")),
        }
        // The new name in the sink's directory.
        self.sync_local(&target, 1).await
    }

    /// Takes the state of every old subtask (`docs`, by old subtask): the file index goes on
    /// from the highest, the staging directory of the same subtask is inherited, and the
    /// pending files and staging directories of old subtasks `i` with `i % parallelism ==
    /// subtask` become this subtask's to commit and to clear.
    fn restore(&mut self, docs: Vec<Vec<SinkCheckpoint>>) -> Result<(), String> {
        let mut recovery = Recovery::default();
        for (old, docs) in docs.into_iter().enumerate() {
            for doc in docs {
                if doc.token.is_empty() || doc.token.contains('/') || doc.token.starts_with('.') {
                    return Err(format!(
                        "the checkpoint of the sink at {} names an invalid staging directory '{}'",
                        self.display(&self.config.location.prefix()),
                        doc.token
                    ));
                }
                self.next_index = self.next_index.max(doc.next_index);
                if old == self.subtask {
                    self.token = doc.token.clone();
                }
                if old % self.parallelism == self.subtask {
                    recovery.commit.extend(doc.pending);
                    recovery.clear.push(doc.token);
                }
            }
        }
        self.recovery = Some(recovery);
        Ok(())
    }

    /// After a restore, before anything else: commits the restored checkpoint's files, then
    /// deletes whatever else is in the staging directories this subtask took over.
    async fn recover(&mut self) -> Result<(), String> {
        let Some(recovery) = self.recovery.take() else {
            return Ok(());
        };
        for file in &recovery.commit {
            self.commit(file).await?;
        }
        let mut cleared = 0;
        for token in &recovery.clear {
            let dir = self.staging_dir(token);
            let shown = self.display(&dir);
            let listed: Vec<ObjectMeta> = match self.store.list(Some(&dir)).try_collect().await {
                Ok(l) => l,
                Err(object_store::Error::NotFound { .. }) => Vec::new(),
                Err(e) => return Err(format!("cannot list {shown}: {e}")),
            };
            for meta in listed {
                match self.store.delete(&meta.location).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => cleared += 1,
                    Err(e) => {
                        return Err(format!(
                            "cannot delete {}: {e}",
                            self.display(&meta.location)
                        ));
                    }
                }
            }
            if token != &self.token {
                self.remove_empty_dir(&dir).await;
            }
        }
        info!(
            node = %self.node,
            subtask = self.subtask,
            committed = recovery.commit.len(),
            deleted = cleared,
            "sink recovered its checkpoint"
        );
        Ok(())
    }

    /// The end of input: closes the open file and commits every file (no checkpoint follows).
    async fn finish_all(&mut self) -> Result<(), String> {
        self.close().await?;
        self.pending.append(&mut self.staged);
        self.commit_pending().await?;
        self.tidy().await;
        Ok(())
    }

    /// Removes this subtask's staging directory (and `.staging`) when they are empty.
    async fn tidy(&mut self) {
        let own = self.staging_dir(&self.token);
        self.remove_empty_dir(&own).await;
        if let Some(staging) = own.parent() {
            self.remove_empty_dir(&staging).await;
        }
    }

    /// For a local path, removes directory `dir` if it is empty (object stores have no
    /// directories to remove).
    async fn remove_empty_dir(&mut self, dir: &Path) {
        if let Some(path) = self.config.location.local_path(dir) {
            // Not empty, or already gone: nothing to do either way.
            let _ = tokio::fs::remove_dir(path).await;
        }
    }
}

struct FileSystemSink {
    node: String,
    /// How often the timer runs; None without a time-based rolling policy.
    tick: Option<Duration>,
    state: Arc<Mutex<SinkState>>,
    /// Closes files on time while no input comes; started with the first batch.
    timer: Option<JoinHandle<()>>,
    /// What the timer failed with: the next call fails with it.
    failure: Arc<StdMutex<Option<String>>>,
    /// The run takes checkpoints: files are committed only when one completes.
    checkpointing: bool,
    /// The input ended: the last commit also removes the staging directories.
    closed: bool,
}

impl Drop for FileSystemSink {
    fn drop(&mut self) {
        if let Some(t) = &self.timer {
            t.abort();
        }
    }
}

impl FileSystemSink {
    fn fail(&self, message: String) -> TaskError {
        TaskError::Connector {
            node: self.node.clone(),
            message,
        }
    }

    fn check_timer(&self) -> Result<(), TaskError> {
        match self.failure.lock().expect("not poisoned").take() {
            Some(message) => Err(self.fail(message)),
            None => Ok(()),
        }
    }

    fn start_timer(&mut self) {
        let Some(tick) = self.tick.filter(|_| self.timer.is_none()) else {
            return;
        };
        let state = self.state.clone();
        let failure = self.failure.clone();
        self.timer = Some(tokio::spawn(async move {
            let mut ticker = tokio::time::interval(tick);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let mut state = state.lock().await;
                if state.due_on_time(Instant::now())
                    && let Err(e) = state.close().await
                {
                    *failure.lock().expect("not poisoned") = Some(e);
                    return;
                }
            }
        }));
    }

    /// Finishes a restore (see [`SinkState::recover`]) if one is pending.
    async fn recover(&self) -> Result<(), TaskError> {
        let result = self.state.lock().await.recover().await;
        result.map_err(|e| self.fail(e))
    }
}

#[async_trait]
impl Operator for FileSystemSink {
    async fn process_batch(
        &mut self,
        batch: RecordBatch,
        _input: usize,
        _out: &mut Collector,
    ) -> Result<(), TaskError> {
        self.check_timer()?;
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.recover().await?;
        self.start_timer();
        // The hidden event-time column is never written.
        let visible: Vec<usize> = (0..batch.num_columns().saturating_sub(1)).collect();
        let batch = batch
            .project(&visible)
            .map_err(|e| self.fail(e.to_string()))?;
        let result = self.state.lock().await.write(&batch).await;
        result.map_err(|e| self.fail(e))
    }

    async fn on_watermark(&mut self, watermark: i64, out: &mut Collector) -> Result<(), TaskError> {
        self.recover().await?;
        out.broadcast(Message::Watermark(Watermark::EventTime(watermark)))
            .await
    }

    async fn on_close(&mut self, _out: &mut Collector) -> Result<(), TaskError> {
        let state = self.state.clone();
        // Holding the lock, the timer is not closing a file: aborting it loses nothing.
        let mut state = state.lock().await;
        if let Some(t) = self.timer.take() {
            t.abort();
        }
        self.check_timer()?;
        let checkpointing = self.checkpointing;
        self.closed = true;
        let result = async {
            state.recover().await?;
            if checkpointing {
                // The last epoch records the files; its completion commits them.
                state.barrier().await.map(|_| ())
            } else {
                state.finish_all().await
            }
        }
        .await;
        result.map_err(|e| self.fail(e))?;
        info!(node = %self.node, subtask = state.subtask, files = state.written, "sink closed");
        Ok(())
    }

    /// Closes the open file and records every file not committed yet (see
    /// [`SinkCheckpoint`]).
    async fn snapshot(&mut self) -> Result<TaskState, TaskError> {
        self.check_timer()?;
        let result = {
            let mut state = self.state.lock().await;
            match state.recover().await {
                Ok(()) => state.barrier().await,
                Err(e) => Err(e),
            }
        };
        let checkpoint = result.map_err(|e| self.fail(e))?;
        let mut out = TaskState::new();
        out.put_json(SINK_TABLE, &checkpoint)?;
        Ok(out)
    }

    /// Commits the files of the restored checkpoint: see [`SinkState::restore`].
    fn restore(&mut self, state: &RestoredState) -> Result<(), TaskError> {
        let docs = state.json::<SinkCheckpoint>(SINK_TABLE)?;
        let result = match self.state.try_lock() {
            Ok(mut sink) => sink.restore(docs),
            Err(_) => Err("restored while writing".to_string()),
        };
        result.map_err(|e| self.fail(e))
    }

    async fn on_checkpoint_complete(&mut self, epoch: u64) -> Result<(), TaskError> {
        self.check_timer()?;
        let result = {
            let mut state = self.state.lock().await;
            match state.recover().await {
                Ok(()) => state.commit_pending().await,
                Err(e) => Err(e),
            }
        };
        result.map_err(|e| self.fail(format!("committing checkpoint {epoch}: {e}")))?;
        if self.closed {
            self.state.lock().await.tidy().await;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// File names
// ---------------------------------------------------------------------------------------------

/// 128 bits that differ on every call, across processes too: std's randomly keyed hasher over
/// a counter, the time and the process id (no random-number crate needed for names).
fn random_bits() -> u128 {
    use std::hash::BuildHasher;
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let n = CALLS.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let keys = std::hash::RandomState::new();
    let high = keys.hash_one((n, nanos, std::process::id()));
    let low = keys.hash_one((high, n, nanos));
    (u128::from(high) << 64) | u128::from(low)
}

fn unix_millis() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default()
}

/// A UUID: version 7 (time-ordered: names sort by creation) or version 4 (random).
fn uuid(time_ordered: bool) -> String {
    let mut bits = random_bits();
    let version: u128 = if time_ordered {
        bits = (unix_millis() & 0xFFFF_FFFF_FFFF) << 80 | (bits & ((1u128 << 80) - 1));
        7
    } else {
        4
    };
    bits = (bits & !(0xF << 76)) | (version << 76);
    bits = (bits & !(0b11 << 62)) | (0b10 << 62);
    let hex = format!("{bits:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// A ULID: 48 bits of milliseconds then 80 random bits, in Crockford's base 32.
fn ulid() -> String {
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let bits = (unix_millis() & 0xFFFF_FFFF_FFFF) << 80 | (random_bits() & ((1u128 << 80) - 1));
    (0..26)
        .rev()
        .map(|i| ALPHABET[((bits >> (i * 5)) & 0x1F) as usize] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connector::TableKind;
    use datafusion::arrow::datatypes::DataType;

    fn options(entries: &[(&str, &str)]) -> Options {
        Options::new(
            entries
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn table(entries: &[(&str, &str)]) -> Result<ConnectorTable, ConnectorError> {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, true)]));
        ConnectorTable::new("t", CONNECTOR, Some(schema), &mut options(entries))
    }

    fn error_option(e: ConnectorError) -> String {
        match e {
            ConnectorError::InvalidOption { option, .. }
            | ConnectorError::MissingOption { option, .. }
            | ConnectorError::UnknownOption { option, .. } => option,
            other => panic!("not an option error: {other}"),
        }
    }

    #[test]
    fn type_decides_source_or_sink() {
        let source = table(&[("type", "source"), ("path", "/tmp/x"), ("format", "json")]).unwrap();
        assert_eq!(source.kind, TableKind::Source);
        assert!(matches!(
            source.config,
            crate::connector::ConnectorConfig::FileSystemSource(_)
        ));
        let sink = table(&[("type", "sink"), ("path", "/tmp/x"), ("format", "parquet")]).unwrap();
        assert_eq!(sink.kind, TableKind::Sink);
        let e = table(&[("path", "/tmp/x"), ("format", "json")]).unwrap_err();
        assert_eq!(error_option(e), "type");
        let e = table(&[("type", "both"), ("path", "/tmp/x"), ("format", "json")]).unwrap_err();
        assert_eq!(error_option(e), "type");
    }

    #[test]
    fn option_errors_name_the_option() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("type", "sink"), ("format", "json")], "path"),
            (&[("type", "sink"), ("path", "/x")], "format"),
            (
                &[("type", "sink"), ("path", "/x"), ("format", "csv")],
                "format",
            ),
            (
                &[("type", "sink"), ("path", "ftp://h/x"), ("format", "json")],
                "path",
            ),
            (
                &[("type", "sink"), ("path", "s3:///x"), ("format", "json")],
                "path",
            ),
            (
                &[
                    ("type", "sink"),
                    ("path", "/x"),
                    ("format", "json"),
                    ("rolling_policy.file_size", "lots"),
                ],
                "rolling_policy.file_size",
            ),
            (
                &[
                    ("type", "sink"),
                    ("path", "/x"),
                    ("format", "json"),
                    ("rollover_seconds", "0"),
                ],
                "rollover_seconds",
            ),
            (
                &[
                    ("type", "sink"),
                    ("path", "/x"),
                    ("format", "json"),
                    ("rolling_policy.interval", "soon"),
                ],
                "rolling_policy.interval",
            ),
            (
                &[
                    ("type", "sink"),
                    ("path", "/x"),
                    ("format", "json"),
                    ("multipart.target_part_size", "1MB"),
                ],
                "multipart.target_part_size",
            ),
            (
                &[
                    ("type", "sink"),
                    ("path", "/x"),
                    ("format", "json"),
                    ("filename.strategy", "random"),
                ],
                "filename.strategy",
            ),
            (
                &[
                    ("type", "sink"),
                    ("path", "/x"),
                    ("format", "parquet"),
                    ("parquet.compression", "bz2"),
                ],
                "parquet.compression",
            ),
            (
                &[
                    ("type", "sink"),
                    ("path", "/x"),
                    ("format", "json"),
                    ("partitioning.fields", "n"),
                ],
                "partitioning.fields",
            ),
            (
                &[
                    ("type", "sink"),
                    ("path", "/x"),
                    ("format", "json"),
                    ("storage.aws_region", "eu"),
                ],
                "storage.aws_region",
            ),
            (
                &[
                    ("type", "sink"),
                    ("path", "s3://b/x"),
                    ("format", "json"),
                    ("storage.no_such_key", "1"),
                ],
                "storage.no_such_key",
            ),
            (
                &[
                    ("type", "sink"),
                    ("path", "/x"),
                    ("format", "json"),
                    ("flavour", "sweet"),
                ],
                "flavour",
            ),
            (
                &[
                    ("type", "source"),
                    ("path", "/x"),
                    ("format", "json"),
                    ("source.regex_pattern", "("),
                ],
                "source.regex_pattern",
            ),
            (
                &[
                    ("type", "source"),
                    ("path", "/x"),
                    ("format", "json"),
                    ("source.compression", "gzip"),
                ],
                "source.compression",
            ),
            (
                &[
                    ("type", "source"),
                    ("path", "/x"),
                    ("format", "json"),
                    ("bad_data", "ignore"),
                ],
                "bad_data",
            ),
            (
                &[
                    ("type", "source"),
                    ("path", "/x"),
                    ("format", "json"),
                    ("rollover_seconds", "5"),
                ],
                "rollover_seconds",
            ),
        ];
        for (entries, option) in cases {
            let e = table(entries).expect_err(option);
            assert_eq!(&error_option(e), option, "{entries:?}");
        }
        let e = table(&[
            ("type", "sink"),
            ("path", "/x"),
            ("format", "json"),
            ("rollover_seconds", "5"),
            ("rolling_policy.interval", "5s"),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("either"), "{e}");
    }

    #[test]
    fn sink_options_in_both_spellings() {
        let mut o = options(&[
            ("path", "/data/out"),
            ("format", "parquet"),
            ("rolling_policy.file_size", "128MB"),
            ("rolling_policy.inactivity_interval", "30s"),
            ("rollover_seconds", "60"),
            ("max_parts", "10"),
            ("multipart.target_part_size", "8mb"),
            ("filename.prefix", "events"),
            ("filename.suffix", ".pq"),
            ("filename.strategy", "serial"),
            ("parquet.compression", "snappy"),
            ("sink.version", "v2"),
            ("rolling_policy.watermark_expiration", "false"),
        ]);
        let c = FileSystemSinkConfig::from_options(&mut o).unwrap();
        assert_eq!(o.unused().count(), 0);
        assert_eq!(c.file_size, Some(128 << 20));
        assert_eq!(c.inactivity, Some(Duration::from_secs(30)));
        assert_eq!(c.interval, Some(Duration::from_secs(60)));
        assert_eq!((c.max_parts, c.part_size), (10, 8 << 20));
        assert_eq!(
            (c.prefix.as_deref(), c.suffix.as_str()),
            (Some("events"), "pq")
        );
        assert_eq!(c.strategy, NameStrategy::Serial);
        assert_eq!(c.compression, Compression::SNAPPY);
        assert_eq!(c.tick(), Some(Duration::from_secs(1)));
        let c = FileSystemSinkConfig::from_options(&mut options(&[
            ("path", "/data/out"),
            ("format", "json"),
        ]))
        .unwrap();
        assert_eq!(
            (c.suffix.as_str(), c.strategy),
            ("json", NameStrategy::UuidV7)
        );
        assert_eq!(
            (c.part_size, c.max_parts),
            (DEFAULT_PART_SIZE, DEFAULT_MAX_PARTS)
        );
        assert_eq!(c.tick(), None);
    }

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
    fn data_sizes_parse() {
        assert_eq!(parse_data_size("100"), Ok(100));
        assert_eq!(parse_data_size("5MB"), Ok(5 << 20));
        assert_eq!(parse_data_size("2 gib"), Ok(2 << 30));
        assert_eq!(parse_data_size("1k"), Ok(1024));
        assert!(parse_data_size("1.5MB").is_err());
        assert!(parse_data_size("5 parsecs").is_err());
    }

    #[test]
    fn file_names_are_unique_and_well_formed() {
        let a = uuid(true);
        let b = uuid(true);
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "7");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"), "{a}");
        assert_eq!(&uuid(false)[14..15], "4");
        let u = ulid();
        assert_eq!(u.len(), 26);
        assert_ne!(u, ulid());
    }

    fn rows(from: i64, n: i64) -> RecordBatch {
        rows_with(from, n, |i| format!("row number {i}"))
    }

    /// Rows `from..from + n` of columns `n` and `s = text(n)`.
    fn rows_with(from: i64, n: i64, text: impl Fn(i64) -> String) -> RecordBatch {
        use datafusion::arrow::array::Int64Array;
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, false),
            Field::new("s", DataType::Utf8, true),
        ]));
        let n: Vec<i64> = (from..from + n).collect();
        let s: Vec<String> = n.iter().map(|i| text(*i)).collect();
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(n)),
                Arc::new(StringArray::from(s)),
            ],
        )
        .unwrap()
    }

    /// A sink subtask writing serially named files under `dir` in parts of 1 KiB, at most 3
    /// parts a file.
    fn small_parts_sink(dir: &std::path::Path, format: &str) -> SinkState {
        let mut config = FileSystemSinkConfig::from_options(&mut options(&[
            ("path", dir.to_str().unwrap()),
            ("format", format),
            ("filename.strategy", "serial"),
            ("rolling_policy.inactivity_interval", "50ms"),
        ]))
        .unwrap();
        config.part_size = 1024;
        config.max_parts = 3;
        config.row_group_bytes = 512;
        SinkState::new("sink:test".into(), Arc::new(config), 1, 2).unwrap()
    }

    /// The visible files in `dir` (not the staging directory).
    fn names(dir: &std::path::Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn json_files_go_up_in_parts_and_roll_at_max_parts() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = small_parts_sink(dir.path(), "json");
        for i in 0..10 {
            sink.write(&rows(i * 50, 50)).await.unwrap();
        }
        sink.finish_all().await.unwrap();
        let names = names(dir.path());
        assert!(names.len() > 2, "{names:?}");
        assert_eq!(names[0], "00000-001.json");
        let mut all = String::new();
        for name in &names {
            assert!(!name.contains('#'), "{name}");
            all.push_str(&std::fs::read_to_string(dir.path().join(name)).unwrap());
        }
        let n: Vec<i64> = all
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["n"]
                    .as_i64()
                    .unwrap()
            })
            .collect();
        assert_eq!(n, (0..500).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn parquet_row_groups_go_up_in_parts_and_read_back() {
        use datafusion::arrow::array::Int64Array;
        use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        let dir = tempfile::tempdir().unwrap();
        let mut sink = small_parts_sink(dir.path(), "parquet");
        for i in 0..20 {
            sink.write(&rows(i * 100, 100)).await.unwrap();
        }
        sink.finish_all().await.unwrap();
        let mut n = Vec::new();
        let names = names(dir.path());
        for name in &names {
            let file = std::fs::File::open(dir.path().join(name)).unwrap();
            let reader = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
            assert!(reader.metadata().num_row_groups() > 1, "{name}");
            for batch in reader.build().unwrap() {
                let batch = batch.unwrap();
                let column = batch
                    .column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap();
                n.extend(column.values().iter().copied());
            }
        }
        assert_eq!(n, (0..2000).collect::<Vec<_>>(), "{names:?}");
    }

    #[tokio::test]
    async fn the_timer_closes_an_idle_file() {
        let dir = tempfile::tempdir().unwrap();
        let state = small_parts_sink(dir.path(), "json");
        let mut sink = FileSystemSink {
            node: "sink:test".into(),
            tick: state.config.tick(),
            state: Arc::new(Mutex::new(state)),
            timer: None,
            failure: Arc::new(StdMutex::new(None)),
            checkpointing: false,
            closed: false,
        };
        sink.start_timer();
        sink.state.lock().await.write(&rows(0, 3)).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while sink.state.lock().await.staged.is_empty() {
            assert!(Instant::now() < deadline, "the idle file was never closed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let token = {
            let state = sink.state.lock().await;
            assert!(state.open.is_none());
            state.token.clone()
        };
        sink.check_timer().unwrap();
        // Closed, the file waits in the staging directory for a checkpoint (or the end).
        let staging = dir.path().join(STAGING_DIR).join(&token);
        assert_eq!(names(&staging), ["00000-001.json"]);
        assert!(names(dir.path()).is_empty());
        sink.state.lock().await.finish_all().await.unwrap();
        assert_eq!(names(dir.path()), ["00000-001.json"]);
        assert!(!dir.path().join(STAGING_DIR).exists());
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
        let out = align(&file, &table).unwrap();
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
        assert!(align(&file, &strict).unwrap_err().contains("'gone'"));
    }

    // -----------------------------------------------------------------------------------------
    // Checkpoints
    // -----------------------------------------------------------------------------------------

    use crate::task::protocol::{Link, Report};
    use crate::task::{Barrier, JobContext, StopMode};
    use datafusion::arrow::array::{Int64Array, TimestampNanosecondArray};
    use tokio::sync::{mpsc, watch};

    fn task(subtask: usize, parallelism: usize) -> TaskInfo {
        TaskInfo {
            node: "test".into(),
            subtask,
            parallelism,
            job: Arc::new(JobContext { preview: None }),
            checkpointing: false,
        }
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
                    super::super::sink::encode_json_lines(batch, 0).unwrap(),
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

    fn restored(states: Vec<TaskState>) -> RestoredState {
        RestoredState {
            parallelism: states.len(),
            subtasks: states,
            watermark: None,
            epoch: 1,
        }
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
            let run = run_source(&factory, task(subtask, 2), None, Some(1)).await;
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
            let run = run_source(&factory, task(subtask, 3), Some(&from_checkpoint), None).await;
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
        let run = run_source(&factory, task(0, 1), Some(&restored(finals)), None).await;
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

    /// `batch` with the hidden event-time column a sink receives.
    fn timed(batch: RecordBatch) -> RecordBatch {
        let mut fields: Vec<Field> = batch
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new(
            crate::TIMESTAMP_FIELD,
            crate::task::timestamp_type(),
            false,
        ));
        let mut columns = batch.columns().to_vec();
        columns.push(Arc::new(TimestampNanosecondArray::from(vec![
            0i64;
            batch
                .num_rows(
                )
        ])));
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
    }

    /// JSON files of about 1 KiB, serially named, under `dir`.
    fn small_files(dir: &std::path::Path) -> Arc<FileSystemSinkConfig> {
        Arc::new(
            FileSystemSinkConfig::from_options(&mut options(&[
                ("path", dir.to_str().unwrap()),
                ("format", "json"),
                ("filename.strategy", "serial"),
                ("rolling_policy.file_size", "1kb"),
            ]))
            .unwrap(),
        )
    }

    fn sink(
        config: &Arc<FileSystemSinkConfig>,
        subtask: usize,
        parallelism: usize,
    ) -> FileSystemSink {
        let state =
            SinkState::new("sink:test".into(), config.clone(), subtask, parallelism).unwrap();
        FileSystemSink {
            node: "sink:test".into(),
            tick: config.tick(),
            state: Arc::new(Mutex::new(state)),
            timer: None,
            failure: Arc::new(StdMutex::new(None)),
            checkpointing: true,
            closed: false,
        }
    }

    /// The `n` of every row in the visible files of `dir`, sorted.
    fn committed(dir: &std::path::Path) -> Vec<i64> {
        let mut n: Vec<i64> = names(dir)
            .iter()
            .flat_map(|name| {
                std::fs::read_to_string(dir.join(name))
                    .unwrap()
                    .lines()
                    .map(|l| {
                        serde_json::from_str::<serde_json::Value>(l).unwrap()["n"]
                            .as_i64()
                            .unwrap()
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        n.sort();
        n
    }

    /// Every file under `dir/.staging`.
    fn staged_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        let mut todo = vec![dir.join(STAGING_DIR)];
        while let Some(d) = todo.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for entry in entries {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    todo.push(path);
                } else {
                    out.push(path);
                }
            }
        }
        out
    }

    #[tokio::test]
    async fn files_appear_when_their_checkpoint_completes() {
        let dir = tempfile::tempdir().unwrap();
        let config = small_files(dir.path());
        let mut s = sink(&config, 0, 1);
        let (mut out, _rx) = Collector::for_test(4);
        // A file rolls after the batch that fills it: several files.
        for i in 0..5 {
            s.process_batch(timed(rows(i * 10, 10)), 0, &mut out)
                .await
                .unwrap();
        }
        let first = s.snapshot().await.unwrap();
        let first = first.json::<SinkCheckpoint>(SINK_TABLE).unwrap();
        assert!(first[0].pending.len() > 1, "{first:?}");
        s.process_batch(timed(rows(50, 50)), 0, &mut out)
            .await
            .unwrap();
        assert!(
            names(dir.path()).is_empty(),
            "visible before the checkpoint completed"
        );
        s.on_checkpoint_complete(1).await.unwrap();
        assert_eq!(committed(dir.path()), (0..50).collect::<Vec<_>>());
        s.snapshot().await.unwrap();
        s.on_checkpoint_complete(2).await.unwrap();
        s.on_checkpoint_complete(2).await.unwrap();
        assert_eq!(committed(dir.path()), (0..100).collect::<Vec<_>>());
        s.on_close(&mut out).await.unwrap();
        let last = s.snapshot().await.unwrap();
        assert!(
            last.json::<SinkCheckpoint>(SINK_TABLE).unwrap()[0]
                .pending
                .is_empty()
        );
        assert_eq!(committed(dir.path()), (0..100).collect::<Vec<_>>());
        assert!(staged_files(dir.path()).is_empty());
    }

    #[tokio::test]
    async fn a_restore_commits_its_checkpoint_and_drops_what_came_after() {
        let dir = tempfile::tempdir().unwrap();
        let config = small_files(dir.path());
        let (mut out, _rx) = Collector::for_test(4);
        // A first run writes rows 0..100, takes a checkpoint, writes more, and crashes
        // before hearing that the checkpoint completed.
        let mut crashed = sink(&config, 0, 1);
        for i in 0..10 {
            crashed
                .process_batch(timed(rows(i * 10, 10)), 0, &mut out)
                .await
                .unwrap();
        }
        let checkpoint = crashed.snapshot().await.unwrap();
        crashed
            .process_batch(timed(rows(1000, 100)), 0, &mut out)
            .await
            .unwrap();
        crashed.state.lock().await.close().await.unwrap();
        drop(crashed);
        assert!(names(dir.path()).is_empty());
        let doc = checkpoint.json::<SinkCheckpoint>(SINK_TABLE).unwrap()[0].clone();
        assert!(staged_files(dir.path()).len() > doc.pending.len());

        // The rerun, at parallelism 2, replays rows 100..200 from the checkpoint.
        let from_checkpoint = restored(vec![checkpoint]);
        let mut a = sink(&config, 0, 2);
        let mut b = sink(&config, 1, 2);
        a.restore(&from_checkpoint).unwrap();
        b.restore(&from_checkpoint).unwrap();
        assert_eq!(a.state.lock().await.token, doc.token);
        assert_ne!(b.state.lock().await.token, doc.token);
        b.process_batch(timed(rows(150, 50)), 0, &mut out)
            .await
            .unwrap();
        // The subtask that took over the old one's state committed its checkpoint first.
        a.on_watermark(1, &mut out).await.unwrap();
        assert_eq!(committed(dir.path()), (0..100).collect::<Vec<_>>());
        a.process_batch(timed(rows(100, 50)), 0, &mut out)
            .await
            .unwrap();
        a.on_close(&mut out).await.unwrap();
        b.on_close(&mut out).await.unwrap();
        // At the end of input the files wait for the last epoch, which commits them.
        assert_eq!(committed(dir.path()), (0..100).collect::<Vec<_>>());
        for s in [&mut a, &mut b] {
            s.snapshot().await.unwrap();
            s.on_checkpoint_complete(2).await.unwrap();
        }
        assert_eq!(committed(dir.path()), (0..200).collect::<Vec<_>>());
        assert!(
            staged_files(dir.path()).is_empty(),
            "{:?}",
            staged_files(dir.path())
        );
        // Serial names go on after those of the checkpoint, on both subtasks.
        for name in names(dir.path()) {
            let index: u64 = name[..5].parse().unwrap();
            let subtask = &name[6..9];
            let before = doc.pending.iter().any(|f| f.target.ends_with(&name));
            assert!(
                before || index >= doc.next_index,
                "{name} reuses an index of the checkpoint"
            );
            assert!(before || subtask == "000" || subtask == "001", "{name}");
        }
    }

    #[tokio::test]
    async fn commits_are_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let config = small_files(dir.path());
        let mut s = SinkState::new("sink:test".into(), config.clone(), 0, 1).unwrap();
        for i in 0..10 {
            s.write(&rows(i * 10, 10)).await.unwrap();
        }
        let checkpoint = s.barrier().await.unwrap();
        assert!(checkpoint.pending.len() > 1);
        s.commit_pending().await.unwrap();
        let once = committed(dir.path());
        assert_eq!(once, (0..100).collect::<Vec<_>>());
        // Again: the staged files are gone and the final ones there.
        for file in &checkpoint.pending {
            s.commit(file).await.unwrap();
        }
        // A restore of the checkpoint whose files were committed before the crash.
        let mut rerun = SinkState::new("sink:test".into(), config.clone(), 0, 1).unwrap();
        rerun.restore(vec![vec![checkpoint.clone()]]).unwrap();
        rerun.recover().await.unwrap();
        assert_eq!(committed(dir.path()), once);
        // A rename that copied but did not delete (an object store's copy then delete).
        let file = &checkpoint.pending[0];
        let name = file.target.rsplit('/').next().unwrap();
        let staged = dir
            .path()
            .join(STAGING_DIR)
            .join(&checkpoint.token)
            .join(name);
        std::fs::create_dir_all(staged.parent().unwrap()).unwrap();
        std::fs::copy(dir.path().join(name), &staged).unwrap();
        s.commit(file).await.unwrap();
        assert!(!staged.exists());
        assert_eq!(committed(dir.path()), once);
        // Both gone: an error naming both.
        std::fs::remove_file(dir.path().join(name)).unwrap();
        let e = s.commit(file).await.unwrap_err();
        assert!(e.contains(name) && e.contains(STAGING_DIR), "{e}");
    }
}
