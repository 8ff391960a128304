//! `single_file` as a source: a JSON-lines (or raw text) file read from start to end on one
//! subtask, at full speed, then the source finishes.
//!
//! Options: `path`, `format` (`json`, `raw_string`), `json.unstructured` (the whole line in a
//! `value` column), `bad_data` (`fail`: the pipeline fails naming the file and line; `drop`:
//! the row is skipped and counted), `wait_for_control` (Arroyo's test-only pacing; accepted,
//! only `false` is supported), `event_time_field`.
//!
//! Decoding is vectorized: the file is read in large chunks and decoded by arrow-json into
//! batches; only when a chunk has a bad line is it decoded again line by line to find it.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, RecordBatch, StringArray, TimestampNanosecondArray,
};
use datafusion::arrow::compute::{cast, concat_batches, max};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::json::ReaderBuilder;
use datafusion::arrow::json::reader::Decoder;
use tokio::io::{AsyncRead, AsyncReadExt};
use tracing::{info, warn};

use super::debezium;
use super::{ConnectorError, EventTimeSpec, Options};
use crate::task::{
    RestoredState, Source, SourceContext, SourceEnd, SourceFactory, TaskError, TaskInfo, TaskState,
    timestamp_type, with_timestamp, with_updating,
};

/// Bytes read from the file at a time.
const CHUNK: usize = 4 << 20;
/// Rows per batch.
pub(super) const BATCH_ROWS: usize = 8192;
/// How far the default watermark trails the newest event time.
const DEFAULT_DELAY: i64 = 1_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineFormat {
    /// One JSON object per line, decoded into the table's columns.
    Json,
    /// The whole line, as text, in the table's single column.
    Raw,
    /// Debezium change events `{"before", "after", "op"}`: an updating source.
    Debezium,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadData {
    Fail,
    Drop,
}

#[derive(Debug, Clone)]
pub struct FileSourceConfig {
    path: String,
    format: LineFormat,
    bad_data: BadData,
}

/// Takes `bad_data`: `fail` (the default) or `drop`.
pub(super) fn take_bad_data(options: &mut Options) -> Result<BadData, ConnectorError> {
    match options.take("bad_data").as_deref() {
        None | Some("fail") => Ok(BadData::Fail),
        Some("drop") => Ok(BadData::Drop),
        Some(other) => Err(ConnectorError::InvalidOption {
            option: "bad_data".into(),
            value: other.into(),
            reason: "expected 'fail' or 'drop'".into(),
        }),
    }
}

impl FileSourceConfig {
    /// A file of lines at `path` (which names the file in messages).
    pub(super) fn new(path: String, format: LineFormat, bad_data: BadData) -> Self {
        FileSourceConfig {
            path,
            format,
            bad_data,
        }
    }

    /// True when the source emits retractions (Debezium changes).
    pub fn updating(&self) -> bool {
        self.format == LineFormat::Debezium
    }

    pub fn from_options(options: &mut Options, schema: &SchemaRef) -> Result<Self, ConnectorError> {
        let path = options.require("single_file", "path")?;
        let unstructured = options
            .take_parsed::<bool>("json.unstructured")?
            .unwrap_or(false);
        let format = match options.take("format").as_deref() {
            None | Some("json") if unstructured => LineFormat::Raw,
            None | Some("json") => LineFormat::Json,
            Some("raw_string") => LineFormat::Raw,
            Some("debezium_json") => LineFormat::Debezium,
            Some(other) => {
                return Err(ConnectorError::InvalidOption {
                    option: "format".into(),
                    value: other.into(),
                    reason: "a single_file source reads 'json', 'debezium_json' or 'raw_string'"
                        .into(),
                });
            }
        };
        if format == LineFormat::Raw
            && (schema.fields().len() != 1 || schema.field(0).data_type() != &DataType::Utf8)
        {
            return Err(ConnectorError::Usage(
                "a raw_string or json.unstructured table has exactly one text column (value TEXT or value JSON)".into(),
            ));
        }
        let bad_data = take_bad_data(options)?;
        if options.take_parsed::<bool>("wait_for_control")? == Some(true) {
            return Err(ConnectorError::InvalidOption {
                option: "wait_for_control".into(),
                value: "true".into(),
                reason: "only 'false' is supported: the file is read at full speed".into(),
            });
        }
        Ok(FileSourceConfig {
            path,
            format,
            bad_data,
        })
    }
}

/// Virtual columns: index in the table schema and expression over the stored columns.
type Generated = Vec<(usize, Arc<dyn datafusion::physical_expr::PhysicalExpr>)>;

pub struct FileSourceFactory {
    config: FileSourceConfig,
    schema: SchemaRef,
    /// The columns stored in the file: the schema without the virtual columns.
    stored: SchemaRef,
    generated: Generated,
    event_time: EventTimeSpec,
    projection: Vec<usize>,
    out_schema: SchemaRef,
}

impl FileSourceFactory {
    pub fn new(
        config: FileSourceConfig,
        schema: SchemaRef,
        event_time: EventTimeSpec,
        generated: Generated,
        projection: Option<Vec<usize>>,
    ) -> Self {
        let projection = projection.unwrap_or_else(|| (0..schema.fields().len()).collect());
        let visible = schema
            .project(&projection)
            .expect("projection within the table");
        let stored: Vec<usize> = (0..schema.fields().len())
            .filter(|i| !generated.iter().any(|(g, _)| g == i))
            .collect();
        FileSourceFactory {
            out_schema: if config.updating() {
                with_updating(&visible)
            } else {
                with_timestamp(&visible)
            },
            stored: Arc::new(schema.project(&stored).expect("stored columns")),
            generated,
            config,
            schema,
            event_time,
            projection,
        }
    }
}

impl FileSourceFactory {
    /// A reader of the file at `path` (a `filesystem` source makes one per file).
    pub(super) fn reader(&self, info: &TaskInfo, path: String) -> FileSource {
        FileSource {
            node: info.node.clone(),
            subtask: info.subtask,
            config: FileSourceConfig {
                path,
                ..self.config.clone()
            },
            schema: self.schema.clone(),
            stored: self.stored.clone(),
            generated: self.generated.clone(),
            event_time: self.event_time.clone(),
            projection: self.projection.clone(),
            out_schema: self.out_schema.clone(),
            dropped: 0,
            position: FilePosition::default(),
        }
    }
}

impl SourceFactory for FileSourceFactory {
    fn create(&self, info: &TaskInfo) -> Result<Box<dyn Source>, TaskError> {
        Ok(Box::new(self.reader(info, self.config.path.clone())))
    }
}

/// Reads one file of lines, or takes batches of its stored columns, and emits them with their
/// event time and watermark.
pub(super) struct FileSource {
    node: String,
    subtask: usize,
    config: FileSourceConfig,
    schema: SchemaRef,
    stored: SchemaRef,
    generated: Generated,
    event_time: EventTimeSpec,
    projection: Vec<usize>,
    out_schema: SchemaRef,
    dropped: u64,
    /// How far the file has been read: what a checkpoint records.
    position: FilePosition,
}

/// How far a file has been read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(super) struct FilePosition {
    /// Bytes of complete lines emitted.
    pub offset: u64,
    /// Lines emitted (for the line numbers of errors).
    pub lines: u64,
    /// Read to the end.
    pub done: bool,
}

/// The state table of a file source.
const POSITION: &str = "position";

/// Test hook: `ARROYO_TEST_FILE_PACE=<lines>:<millis>` makes file sources emit at most
/// `lines` lines per step and pause `millis` between steps, so tests can stop a run part-way
/// through a small file. Not for production use.
fn pace() -> Option<(usize, std::time::Duration)> {
    let text = std::env::var("ARROYO_TEST_FILE_PACE").ok()?;
    let (lines, millis) = text.split_once(':')?;
    Some((
        lines.trim().parse().ok().filter(|n| *n > 0)?,
        std::time::Duration::from_millis(millis.trim().parse().ok()?),
    ))
}

fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or_default()
}

impl FileSource {
    /// The columns stored in the file (the table's less its virtual columns).
    pub(super) fn stored_schema(&self) -> &SchemaRef {
        &self.stored
    }

    fn fail(&self, message: String) -> TaskError {
        TaskError::Connector {
            node: self.node.clone(),
            message,
        }
    }

    fn decoder(&self) -> Result<Decoder, TaskError> {
        let schema = match self.config.format {
            LineFormat::Debezium => debezium::envelope(&self.stored),
            _ => self.stored.clone(),
        };
        ReaderBuilder::new(schema)
            .with_batch_size(BATCH_ROWS)
            .with_strict_mode(false)
            .build_decoder()
            .map_err(|e| self.fail(e.to_string()))
    }

    /// Decodes complete lines; `first_line` is the 1-based number of the first.
    fn decode(&mut self, part: &[u8], first_line: u64) -> Result<Vec<RecordBatch>, TaskError> {
        match self.config.format {
            LineFormat::Raw => {
                let text = String::from_utf8_lossy(part);
                let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
                lines
                    .chunks(BATCH_ROWS)
                    .map(|chunk| {
                        let column: ArrayRef = Arc::new(StringArray::from(chunk.to_vec()));
                        RecordBatch::try_new(self.stored.clone(), vec![column])
                            .map_err(|e| self.fail(e.to_string()))
                    })
                    .collect()
            }
            LineFormat::Json | LineFormat::Debezium => {
                let mut decoder = self.decoder()?;
                let mut batches = Vec::new();
                let mut offset = 0;
                let whole = (|| {
                    while offset < part.len() {
                        let n = decoder.decode(&part[offset..])?;
                        offset += n;
                        if (n == 0 || decoder.len() >= BATCH_ROWS)
                            && let Some(b) = decoder.flush()?
                        {
                            batches.push(b);
                        }
                    }
                    if let Some(b) = decoder.flush()? {
                        batches.push(b);
                    }
                    Ok::<_, datafusion::arrow::error::ArrowError>(())
                })();
                match whole {
                    Ok(()) => Ok(batches),
                    Err(_) => self.decode_lines(part, first_line),
                }
            }
        }
    }

    /// The slow path: decodes line by line to find (and drop, or fail on) the bad ones.
    fn decode_lines(
        &mut self,
        part: &[u8],
        first_line: u64,
    ) -> Result<Vec<RecordBatch>, TaskError> {
        let mut good = Vec::new();
        for (i, line) in part.split(|b| *b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let mut decoder = self.decoder()?;
            let row = decoder
                .decode(line)
                .and_then(|_| decoder.decode(b"\n"))
                .and_then(|_| decoder.flush());
            match row {
                Ok(Some(b)) => good.push(b),
                Ok(None) => {}
                Err(e) => {
                    let line_no = first_line + i as u64;
                    match self.config.bad_data {
                        BadData::Fail => {
                            return Err(self.fail(format!(
                                "bad data in {} at line {line_no}: {e}",
                                self.config.path
                            )));
                        }
                        BadData::Drop => {
                            self.dropped += 1;
                            warn!(file = %self.config.path, line = line_no, error = %e, "dropped a bad line");
                        }
                    }
                }
            }
        }
        if good.is_empty() {
            return Ok(vec![]);
        }
        let all = concat_batches(&good[0].schema(), &good).map_err(|e| self.fail(e.to_string()))?;
        Ok(vec![all])
    }

    /// Computes the virtual columns: the stored columns become the table's.
    fn with_generated(&self, stored: RecordBatch) -> Result<RecordBatch, TaskError> {
        if self.generated.is_empty() {
            return Ok(stored);
        }
        let rows = stored.num_rows();
        let mut stored_columns = stored.columns().iter();
        let mut columns = Vec::with_capacity(self.schema.fields().len());
        for (i, field) in self.schema.fields().iter().enumerate() {
            match self.generated.iter().find(|(g, _)| *g == i) {
                Some((_, expr)) => {
                    let value = expr
                        .evaluate(&stored)
                        .and_then(|v| v.into_array(rows))
                        .map_err(|e| {
                            self.fail(format!("computing column '{}': {e}", field.name()))
                        })?;
                    columns.push(
                        cast(&value, field.data_type()).map_err(|e| self.fail(e.to_string()))?,
                    );
                }
                None => columns.push(stored_columns.next().expect("a stored column").clone()),
            }
        }
        RecordBatch::try_new(self.schema.clone(), columns).map_err(|e| self.fail(e.to_string()))
    }

    /// The event time of each row of a (full) batch; nulls when the column has them.
    fn event_times(&self, batch: &RecordBatch) -> Result<TimestampNanosecondArray, TaskError> {
        match self.event_time.field {
            Some(i) => {
                let column = cast(batch.column(i), &timestamp_type())
                    .map_err(|e| self.fail(e.to_string()))?;
                Ok(column
                    .as_any()
                    .downcast_ref::<TimestampNanosecondArray>()
                    .expect("cast to a nanosecond timestamp")
                    .clone())
            }
            None => Ok(TimestampNanosecondArray::from(vec![
                now_nanos();
                batch.num_rows()
            ])),
        }
    }

    /// Adds the event-time column (and the retraction flag of a Debezium source) and projects;
    /// returns the batch and its watermark.
    fn finish_batch(
        &mut self,
        stored: RecordBatch,
        mut retract: Option<BooleanArray>,
    ) -> Result<Option<(RecordBatch, Option<i64>)>, TaskError> {
        let mut batch = self.with_generated(stored)?;
        let mut times = self.event_times(&batch)?;
        if times.null_count() > 0 {
            let field = self
                .schema
                .field(self.event_time.field.unwrap_or_default())
                .name();
            if self.config.bad_data == BadData::Fail {
                return Err(self.fail(format!(
                    "bad data in {}: a row has no event time (column '{field}' is null)",
                    self.config.path
                )));
            }
            let keep = datafusion::arrow::compute::is_not_null(&times)
                .map_err(|e| self.fail(e.to_string()))?;
            self.dropped += (batch.num_rows() - keep.true_count()) as u64;
            batch = datafusion::arrow::compute::filter_record_batch(&batch, &keep)
                .map_err(|e| self.fail(e.to_string()))?;
            if let Some(r) = &retract {
                let kept = datafusion::arrow::compute::filter(r, &keep)
                    .map_err(|e| self.fail(e.to_string()))?;
                retract = kept.as_any().downcast_ref::<BooleanArray>().cloned();
            }
            if batch.num_rows() == 0 {
                return Ok(None);
            }
            times = self.event_times(&batch)?;
        }
        let rows = batch.num_rows();
        let watermark = match &self.event_time.watermark {
            None => max(&times).map(|t| t - DEFAULT_DELAY),
            Some(expr) => {
                let value = expr
                    .evaluate(&batch)
                    .and_then(|v| v.into_array(rows))
                    .map_err(|e| self.fail(format!("evaluating the watermark: {e}")))?;
                let value =
                    cast(&value, &timestamp_type()).map_err(|e| self.fail(e.to_string()))?;
                max(value
                    .as_any()
                    .downcast_ref::<TimestampNanosecondArray>()
                    .expect("cast to a nanosecond timestamp"))
            }
        };
        let mut columns: Vec<ArrayRef> = self
            .projection
            .iter()
            .map(|&i| batch.column(i).clone())
            .collect();
        if let Some(r) = retract {
            columns.push(Arc::new(r));
        }
        columns.push(Arc::new(times));
        let out = RecordBatch::try_new(self.out_schema.clone(), columns)
            .map_err(|e| self.fail(e.to_string()))?;
        Ok(Some((out, watermark)))
    }

    async fn emit(
        &mut self,
        ctx: &mut SourceContext,
        part: &[u8],
        first_line: u64,
    ) -> Result<(), TaskError> {
        for batch in self.decode(part, first_line)? {
            let (batch, retract) = match self.config.format {
                LineFormat::Debezium => {
                    let (b, r) = debezium::changes(&batch, &self.stored)
                        .map_err(|e| self.fail(format!("reading Debezium changes: {e}")))?;
                    (b, Some(r))
                }
                _ => (batch, None),
            };
            if let Some((batch, watermark)) = self.finish_batch(batch, retract)? {
                ctx.collect(batch).await?;
                if let Some(w) = watermark {
                    ctx.watermark(w).await?;
                }
            }
        }
        Ok(())
    }

    /// Emits a batch of the stored columns decoded elsewhere (a Parquet file's).
    pub(super) async fn emit_stored(
        &mut self,
        ctx: &mut SourceContext,
        batch: RecordBatch,
    ) -> Result<(), TaskError> {
        if let Some((batch, watermark)) = self.finish_batch(batch, None)? {
            ctx.collect(batch).await?;
            if let Some(w) = watermark {
                ctx.watermark(w).await?;
            }
        }
        Ok(())
    }

    /// How far the file has been read.
    pub(super) fn position(&self) -> FilePosition {
        self.position
    }

    /// Continues a file from `position` (the reader must start at its offset).
    pub(super) fn resume_at(&mut self, position: FilePosition) {
        self.position = position;
    }

    /// Reads lines from `reader` (positioned at [`FileSource::position`]) to its end and emits
    /// them, sending due checkpoint barriers between steps with the state `snapshot` makes.
    pub(super) async fn read_lines<R, S>(
        &mut self,
        ctx: &mut SourceContext,
        mut reader: R,
        snapshot: S,
    ) -> Result<SourceEnd, TaskError>
    where
        R: AsyncRead + Unpin + Send,
        S: Fn(&FileSource) -> Result<TaskState, TaskError> + Send + Sync,
    {
        let path = self.config.path.clone();
        let pace = pace();
        let step_lines = pace.map_or(usize::MAX, |(lines, _)| lines);
        // Read but not yet emitted: complete lines first, then a partial one.
        let mut pending: Vec<u8> = Vec::with_capacity(CHUNK * 2);
        let mut eof = false;
        loop {
            if ctx.should_stop() {
                return Ok(SourceEnd::Stopped);
            }
            if let Some(end) = ctx.checkpoint_if_due(|| snapshot(self)).await? {
                return Ok(end);
            }
            // The complete lines to emit now: all of them, or up to `step_lines` when paced.
            let (mut take, mut lines) = if pace.is_none() {
                // The hot path: one reverse search, and a count the compiler vectorizes.
                let take = pending
                    .iter()
                    .rposition(|b| *b == b'\n')
                    .map_or(0, |i| i + 1);
                let lines = pending[..take].iter().filter(|b| **b == b'\n').count();
                (take, lines)
            } else {
                let mut take = 0;
                let mut lines = 0;
                for (i, b) in pending.iter().enumerate() {
                    if *b == b'\n' {
                        lines += 1;
                        take = i + 1;
                        if lines == step_lines {
                            break;
                        }
                    }
                }
                (take, lines)
            };
            if take == 0 && eof && !pending.is_empty() {
                // A last line without a newline.
                take = pending.len();
                lines = 1;
            }
            if take > 0 {
                let rest = pending.split_off(take);
                let complete = std::mem::replace(&mut pending, rest);
                self.emit(ctx, &complete, self.position.lines + 1).await?;
                self.position.offset += take as u64;
                self.position.lines += lines as u64;
                if let Some((_, pause)) = pace {
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = ctx.stopped() => {}
                    }
                }
                continue;
            }
            if eof {
                break;
            }
            let start = pending.len();
            pending.resize(start + CHUNK, 0);
            let n = reader
                .read(&mut pending[start..])
                .await
                .map_err(|e| self.fail(format!("reading '{path}': {e}")))?;
            pending.truncate(start + n);
            eof = n == 0;
        }
        self.position.done = true;
        if self.dropped > 0 {
            warn!(file = %path, dropped = self.dropped, "bad_data = 'drop': rows dropped");
        }
        info!(file = %path, lines = self.position.lines, "file read to the end");
        Ok(SourceEnd::Finished)
    }
}

#[async_trait]
impl Source for FileSource {
    async fn run(&mut self, ctx: &mut SourceContext) -> Result<SourceEnd, TaskError> {
        if self.subtask != 0 || self.position.done {
            // One reader per file: the other subtasks have nothing to do.
            return Ok(SourceEnd::Finished);
        }
        let path = self.config.path.clone();
        let mut file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| self.fail(format!("cannot open '{path}': {e}")))?;
        if self.position.offset > 0 {
            use tokio::io::AsyncSeekExt;
            file.seek(std::io::SeekFrom::Start(self.position.offset))
                .await
                .map_err(|e| self.fail(format!("seeking in '{path}': {e}")))?;
        }
        self.read_lines(ctx, file, |s: &FileSource| s.snapshot())
            .await
    }

    fn snapshot(&self) -> Result<TaskState, TaskError> {
        let mut state = TaskState::new();
        if self.subtask == 0 {
            state.put_json(POSITION, &self.position)?;
        }
        Ok(state)
    }

    /// The one reader of the file is subtask 0, at any parallelism.
    fn restore(&mut self, state: &RestoredState) -> Result<(), TaskError> {
        if self.subtask == 0
            && let Some(position) = state
                .json::<FilePosition>(POSITION)?
                .into_iter()
                .flatten()
                .next()
        {
            self.position = position;
        }
        Ok(())
    }
}
