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
//! 4. So a file appears under its final name only once complete: an object store never shows
//!    an unfinished upload, and a local file is staged as `<name>#<n>` (which listings skip)
//!    and renamed. A local file is then fsynced, and its directory.
//!
//! Updating results (retractions) cannot be written: neither format can express them.

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
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{GetResultPayload, MultipartUpload, ObjectMeta, ObjectStore, ObjectStoreExt};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{info, warn};

use super::file::{self, BadData, FileSource, FileSourceConfig, FileSourceFactory, LineFormat};
use super::{
    ConnectorError, ConnectorTable, EventTimeSpec, Options, Source, SourceContext, SourceEnd,
    SourceFactory, parse_duration,
};
use crate::dataflow::{Collector, DataflowError};
use crate::operator::{Operator, OperatorFactory, TaskInfo};

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

/// Which kind of object store a location is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Local,
    S3,
    Gcs,
    Azure,
}

/// Where a table's files are: a store and a directory (prefix) in it.
#[derive(Debug, Clone)]
pub struct Location {
    scheme: Scheme,
    /// `scheme://bucket` for an object store; empty for a local path.
    base: String,
    /// The directory inside the store.
    prefix: Path,
    /// `storage.*` options, without the `storage.` (checked against the store's keys).
    storage: Vec<(String, String)>,
}

fn invalid(option: &str, value: &str, reason: impl Into<String>) -> ConnectorError {
    ConnectorError::InvalidOption {
        option: option.into(),
        value: value.into(),
        reason: reason.into(),
    }
}

/// `path` made absolute (against the working directory) and free of `.` and `..`.
fn absolute_local(path: &str) -> std::path::PathBuf {
    use std::path::Component;
    let given = std::path::Path::new(path);
    let joined = if given.is_absolute() {
        given.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(given)
    };
    let mut out = std::path::PathBuf::from("/");
    for c in joined.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

impl Location {
    /// Parses `path` (a local path, `file://`, `s3://`, `s3a://`, `gs://`, `az://`, `azure://`,
    /// `adl://`, `abfs://`, `abfss://`) and checks the storage options against its store.
    pub fn parse(path: &str, storage: Vec<(String, String)>) -> Result<Location, ConnectorError> {
        let bad = |reason: String| invalid("path", path, reason);
        let (scheme, base, key) = match path.split_once("://") {
            None => (Scheme::Local, String::new(), None),
            Some((s, rest)) => {
                let scheme = match s.to_ascii_lowercase().as_str() {
                    "file" => Scheme::Local,
                    "s3" | "s3a" => Scheme::S3,
                    "gs" => Scheme::Gcs,
                    "az" | "azure" | "adl" | "abfs" | "abfss" => Scheme::Azure,
                    other => {
                        return Err(bad(format!(
                            "unsupported scheme '{other}': use a local path or a file://, s3://, gs:// or az:// URL"
                        )));
                    }
                };
                if scheme == Scheme::Local {
                    if !rest.starts_with('/') {
                        return Err(bad("a file:// URL needs an absolute path".into()));
                    }
                    (scheme, String::new(), Some(rest.to_string()))
                } else {
                    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
                    if bucket.is_empty() {
                        return Err(bad("the URL names no bucket or container".into()));
                    }
                    (scheme, format!("{s}://{bucket}"), Some(key.to_string()))
                }
            }
        };
        let prefix = match (scheme, key) {
            (Scheme::Local, key) => {
                let local = absolute_local(key.as_deref().unwrap_or(path));
                Path::from_absolute_path(&local).map_err(|e| bad(e.to_string()))?
            }
            (_, key) => Path::parse(key.unwrap_or_default().trim_matches('/'))
                .map_err(|e| bad(e.to_string()))?,
        };
        for (key, value) in &storage {
            let option = format!("storage.{key}");
            let known = match scheme {
                Scheme::Local => Err("a local path takes no storage options".to_string()),
                Scheme::S3 => key
                    .parse::<AmazonS3ConfigKey>()
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                Scheme::Gcs => key
                    .parse::<GoogleConfigKey>()
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                Scheme::Azure => key
                    .parse::<AzureConfigKey>()
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
            };
            known.map_err(|reason| invalid(&option, value, reason))?;
        }
        let location = Location {
            scheme,
            base,
            prefix,
            storage,
        };
        // Building a store reads the environment but does no I/O: its errors (no region, no
        // account) are the table's.
        location.store().map_err(bad)?;
        Ok(location)
    }

    /// Builds the store: from the environment, then the `storage.*` options.
    pub fn store(&self) -> Result<Arc<dyn ObjectStore>, String> {
        let failed =
            |e: object_store::Error| format!("cannot set up the store of {}: {e}", self.base);
        Ok(match self.scheme {
            Scheme::Local => Arc::new(LocalFileSystem::new()),
            Scheme::S3 => {
                let mut b = AmazonS3Builder::from_env().with_url(&self.base);
                for (k, v) in &self.storage {
                    b = b.with_config(k.parse().map_err(failed)?, v);
                }
                Arc::new(b.build().map_err(failed)?)
            }
            Scheme::Gcs => {
                let mut b = GoogleCloudStorageBuilder::from_env().with_url(&self.base);
                for (k, v) in &self.storage {
                    b = b.with_config(k.parse().map_err(failed)?, v);
                }
                Arc::new(b.build().map_err(failed)?)
            }
            Scheme::Azure => {
                let mut b = MicrosoftAzureBuilder::from_env().with_url(&self.base);
                for (k, v) in &self.storage {
                    b = b.with_config(k.parse().map_err(failed)?, v);
                }
                Arc::new(b.build().map_err(failed)?)
            }
        })
    }

    /// The directory (prefix) inside the store.
    pub fn prefix(&self) -> &Path {
        &self.prefix
    }

    /// How an object of this store is named in messages: a local path, or a URL.
    pub fn display(&self, object: &Path) -> String {
        match self.scheme {
            Scheme::Local => format!("/{object}"),
            _ => format!("{}/{object}", self.base),
        }
    }

    fn is_local(&self) -> bool {
        self.scheme == Scheme::Local
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
    let location = Location::parse(&path, storage)?;
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
            config.location.display(&config.location.prefix),
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
    fn create(&self, info: &TaskInfo) -> Result<Box<dyn Source>, DataflowError> {
        Ok(Box::new(FileSystemSource {
            config: self.config.clone(),
            rows: self.rows.clone(),
            info: info.clone(),
        }))
    }
}

struct FileSystemSource {
    config: FileSystemSourceConfig,
    rows: Arc<FileSourceFactory>,
    info: TaskInfo,
}

/// True when no part of `object` below `prefix` is hidden (starts with `.` or `_`).
fn visible(prefix: &Path, object: &Path) -> bool {
    match object.prefix_match(prefix) {
        Some(mut parts) => !parts.any(|p| p.as_ref().starts_with(['.', '_'])),
        None => false,
    }
}

impl FileSystemSource {
    fn fail(&self, message: String) -> DataflowError {
        DataflowError::Connector {
            node: self.info.node.clone(),
            message,
        }
    }

    /// Every file to read, sorted by path.
    async fn list(&self, store: &Arc<dyn ObjectStore>) -> Result<Vec<ObjectMeta>, DataflowError> {
        let prefix = &self.config.location.prefix;
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

    /// Reads one JSON-lines file; false when a stop cut it short.
    async fn read_json(
        &self,
        ctx: &mut SourceContext,
        store: &Arc<dyn ObjectStore>,
        meta: &ObjectMeta,
        rows: &mut FileSource,
        shown: &str,
    ) -> Result<bool, DataflowError> {
        let got = store
            .get(&meta.location)
            .await
            .map_err(|e| self.fail(format!("cannot open {shown}: {e}")))?;
        match got.payload {
            GetResultPayload::File(f, _) => {
                rows.read_lines(ctx, tokio::fs::File::from_std(f)).await
            }
            GetResultPayload::Stream(s) => {
                let reader = tokio_util::io::StreamReader::new(s.map_err(std::io::Error::from));
                rows.read_lines(ctx, reader).await
            }
        }
    }

    /// Reads one Parquet file; false when a stop cut it short.
    async fn read_parquet(
        &self,
        ctx: &mut SourceContext,
        store: &Arc<dyn ObjectStore>,
        meta: &ObjectMeta,
        rows: &mut FileSource,
        shown: &str,
    ) -> Result<bool, DataflowError> {
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
                        Ok(true)
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
        let mut batches = builder
            .with_batch_size(file::BATCH_ROWS)
            .with_projection(mask)
            .build()
            .map_err(|e| self.fail(format!("reading {shown}: {e}")))?;
        while let Some(batch) = batches.next().await {
            if ctx.should_stop() {
                return Ok(false);
            }
            let batch = batch.map_err(|e| self.fail(format!("reading {shown}: {e}")))?;
            let batch = align(&batch, &stored).map_err(|e| self.fail(format!("{shown}: {e}")))?;
            rows.emit_stored(ctx, batch).await?;
        }
        Ok(true)
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
    async fn run(&mut self, ctx: &mut SourceContext) -> Result<SourceEnd, DataflowError> {
        let store = self.config.location.store().map_err(|e| self.fail(e))?;
        let files = self.list(&store).await?;
        let total = files.len();
        let (me, parallelism) = (self.info.subtask, self.info.parallelism.max(1));
        if total == 0 && me == 0 {
            warn!(
                path = %self.config.location.display(&self.config.location.prefix),
                "no files to read"
            );
        }
        let mine: Vec<ObjectMeta> = files
            .into_iter()
            .enumerate()
            .filter(|(i, _)| i % parallelism == me)
            .map(|(_, f)| f)
            .collect();
        info!(node = %self.info.node, subtask = me, files = mine.len(), of = total, "reading files");
        for meta in &mine {
            if ctx.should_stop() {
                return Ok(SourceEnd::Stopped);
            }
            let shown = self.config.location.display(&meta.location);
            let mut rows = self.rows.reader(&self.info, shown.clone());
            let read = match self.config.format {
                FileFormat::Json => self.read_json(ctx, &store, meta, &mut rows, &shown).await?,
                FileFormat::Parquet => {
                    self.read_parquet(ctx, &store, meta, &mut rows, &shown)
                        .await?
                }
            };
            if !read {
                return Ok(SourceEnd::Stopped);
            }
        }
        Ok(SourceEnd::Finished)
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
    fn create(&self, info: &TaskInfo) -> Result<Box<dyn Operator>, DataflowError> {
        let fail = |message: String| DataflowError::Connector {
            node: info.node.clone(),
            message: format!("{}: {message}", self.table),
        };
        let store = self.config.location.store().map_err(fail)?;
        let state = SinkState {
            node: info.node.clone(),
            store,
            local: self.config.location.is_local().then(LocalFileSystem::new),
            config: self.config.clone(),
            subtask: info.subtask,
            next_index: 0,
            open: None,
            written: 0,
        };
        Ok(Box::new(FileSystemSink {
            node: info.node.clone(),
            tick: self.config.tick(),
            state: Arc::new(Mutex::new(state)),
            timer: None,
            failure: Arc::new(StdMutex::new(None)),
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
    location: Path,
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

    /// Writes the rest and makes the file appear under its name; returns its size.
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

/// What one sink subtask writes with, shared with its timer.
struct SinkState {
    node: String,
    store: Arc<dyn ObjectStore>,
    /// Set for a local path: closed files are fsynced through it.
    local: Option<LocalFileSystem>,
    config: Arc<FileSystemSinkConfig>,
    subtask: usize,
    next_index: u64,
    open: Option<OpenFile>,
    /// Files closed so far.
    written: u64,
}

impl SinkState {
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
        let location = self
            .config
            .location
            .prefix
            .clone()
            .join(self.file_name().as_str());
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
        file.upload_parts(&self.store, config.part_size, config.max_parts)
            .await?;
        let full = file.parts + 1 >= config.max_parts
            || config.file_size.is_some_and(|limit| file.size() >= limit);
        if full {
            self.close().await?;
        }
        Ok(())
    }

    /// Closes the open file, if any: it appears under its final name.
    async fn close(&mut self) -> Result<(), String> {
        let Some(mut file) = self.open.take() else {
            return Ok(());
        };
        let shown = self.config.location.display(&file.location);
        let size = file
            .finish(&self.store)
            .await
            .map_err(|e| format!("writing {shown}: {e}"))?;
        if let Some(local) = &self.local {
            let path = local
                .path_to_filesystem(&file.location)
                .map_err(|e| e.to_string())?;
            tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                std::fs::File::open(&path)?.sync_all()?;
                if let Some(dir) = path.parent() {
                    std::fs::File::open(dir)?.sync_all()?;
                }
                Ok(())
            })
            .await
            .map_err(|e| format!("syncing {shown}: {e}"))?
            .map_err(|e| format!("syncing {shown}: {e}"))?;
        }
        self.written += 1;
        info!(node = %self.node, file = %shown, bytes = size, "file written");
        Ok(())
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
}

impl Drop for FileSystemSink {
    fn drop(&mut self) {
        if let Some(t) = &self.timer {
            t.abort();
        }
    }
}

impl FileSystemSink {
    fn fail(&self, message: String) -> DataflowError {
        DataflowError::Connector {
            node: self.node.clone(),
            message,
        }
    }

    fn check_timer(&self) -> Result<(), DataflowError> {
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
}

#[async_trait]
impl Operator for FileSystemSink {
    async fn process_batch(
        &mut self,
        batch: RecordBatch,
        _input: usize,
        _out: &mut Collector,
    ) -> Result<(), DataflowError> {
        self.check_timer()?;
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.start_timer();
        // The hidden event-time column is never written.
        let visible: Vec<usize> = (0..batch.num_columns().saturating_sub(1)).collect();
        let batch = batch
            .project(&visible)
            .map_err(|e| self.fail(e.to_string()))?;
        let result = self.state.lock().await.write(&batch).await;
        result.map_err(|e| self.fail(e))
    }

    async fn on_close(&mut self, _out: &mut Collector) -> Result<(), DataflowError> {
        let state = self.state.clone();
        // Holding the lock, the timer is not closing a file: aborting it loses nothing.
        let mut state = state.lock().await;
        if let Some(t) = self.timer.take() {
            t.abort();
        }
        self.check_timer()?;
        state.close().await.map_err(|e| self.fail(e))?;
        info!(node = %self.node, subtask = state.subtask, files = state.written, "sink closed");
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
    fn paths_and_urls_resolve_to_stores() {
        let local = Location::parse("/var/data/in/", vec![]).unwrap();
        assert_eq!(local.scheme, Scheme::Local);
        assert_eq!(local.prefix.as_ref(), "var/data/in");
        assert_eq!(
            local.display(&local.prefix.clone().join("a.json")),
            "/var/data/in/a.json"
        );
        let url = Location::parse("file:///var/data/../in", vec![]).unwrap();
        assert_eq!((url.scheme, url.prefix.as_ref()), (Scheme::Local, "var/in"));
        let relative = Location::parse("out/files", vec![]).unwrap();
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            relative.display(&relative.prefix),
            cwd.join("out/files").to_str().unwrap()
        );

        let s3 = Location::parse(
            "s3://bucket/some/prefix/",
            vec![
                ("aws_region".into(), "eu-west-1".into()),
                ("aws_endpoint".into(), "http://127.0.0.1:9000".into()),
                ("aws_allow_http".into(), "true".into()),
            ],
        )
        .unwrap();
        assert_eq!((s3.scheme, s3.base.as_str()), (Scheme::S3, "s3://bucket"));
        assert_eq!(s3.prefix.as_ref(), "some/prefix");
        assert_eq!(
            s3.display(&s3.prefix.clone().join("x.parquet")),
            "s3://bucket/some/prefix/x.parquet"
        );
        assert!(s3.store().unwrap().to_string().contains("bucket"));
        let root = Location::parse("s3a://bucket", vec![]).unwrap();
        assert_eq!((root.scheme, root.prefix.as_ref()), (Scheme::S3, ""));

        let gs = Location::parse("gs://bucket/p", vec![]).unwrap();
        assert_eq!((gs.scheme, gs.prefix.as_ref()), (Scheme::Gcs, "p"));
        let az = Location::parse(
            "az://container/p/q",
            vec![("azure_storage_account_name".into(), "acct".into())],
        )
        .unwrap();
        assert_eq!((az.scheme, az.prefix.as_ref()), (Scheme::Azure, "p/q"));
        assert!(Location::parse("http://host/x", vec![]).is_err());
    }

    #[test]
    fn hidden_files_are_skipped() {
        let prefix = Path::from("data/in");
        assert!(visible(&prefix, &Path::from("data/in/a.json")));
        assert!(visible(&prefix, &Path::from("data/in/sub/b.json")));
        assert!(!visible(&prefix, &Path::from("data/in/.a.json")));
        assert!(!visible(&prefix, &Path::from("data/in/_staging/a.json")));
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
        use datafusion::arrow::array::Int64Array;
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, false),
            Field::new("s", DataType::Utf8, true),
        ]));
        let n: Vec<i64> = (from..from + n).collect();
        let s: Vec<String> = n.iter().map(|i| format!("row number {i}")).collect();
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
        SinkState {
            node: "sink:test".into(),
            store: config.location.store().unwrap(),
            local: Some(LocalFileSystem::new()),
            config: Arc::new(config),
            subtask: 1,
            next_index: 0,
            open: None,
            written: 0,
        }
    }

    fn names(dir: &std::path::Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
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
        sink.close().await.unwrap();
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
        sink.close().await.unwrap();
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
        };
        sink.start_timer();
        sink.state.lock().await.write(&rows(0, 3)).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while names(dir.path()) != ["00000-001.json"] {
            assert!(Instant::now() < deadline, "the idle file was never closed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(sink.state.lock().await.open.is_none());
        sink.check_timer().unwrap();
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
}
