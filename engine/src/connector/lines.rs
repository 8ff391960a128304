//! The reader both file sources (`single_file` and `filesystem`) share: lines of JSON, raw
//! text or Debezium changes in; batches of the table's columns with their event time, and the
//! watermark, out.
//!
//! Options it stands for: `format` (`json`, `raw_string`, `debezium_json`),
//! `json.unstructured`, `bad_data` (`fail`: the pipeline fails naming the file and line;
//! `drop`: the row is skipped and counted), `event_time_field` and `WATERMARK FOR` (through
//! [`EventTimeSpec`]), and virtual columns (computed from the stored ones).
//!
//! Decoding is vectorized: the file is read in large chunks and decoded by arrow-json into
//! batches; only when a chunk has a bad line is it decoded again line by line to find it. A
//! reader keeps its [`FilePosition`] (bytes and lines of the complete lines emitted), which is
//! what a checkpoint records and where a restore resumes.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, RecordBatch, StringArray, TimestampNanosecondArray,
};
use datafusion::arrow::compute::{cast, concat_batches, max};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::json::ReaderBuilder;
use datafusion::arrow::json::reader::Decoder;
use tokio::io::{AsyncRead, AsyncReadExt};
use tracing::{info, warn};

use super::debezium;
use super::{ConnectorError, EventTimeSpec, Options, RunError, now_nanos};
use crate::storage::StorageError;
use crate::task::{
    NodeCounters, SourceContext, SourceEnd, TaskError, TaskInfo, TaskState, timestamp_type,
    with_timestamp, with_updating,
};

/// Bytes read from the file at a time.
const CHUNK: usize = 4 << 20;
/// Rows per batch.
pub(super) const BATCH_ROWS: usize = 8192;
/// Bad lines `bad_data = 'drop'` warns about one by one; the rest are counted.
const DROP_WARNINGS: u64 = 10;

/// A UTF-8 byte order mark, skipped at the start of a file.
const BOM: &[u8] = b"\xef\xbb\xbf";

/// Where the rows of a batch came from: the lines of `part`, whose first is line
/// `first_line`, the batch starting at its `row_base`-th non-blank line.
struct Origin<'a> {
    part: &'a [u8],
    first_line: u64,
    row_base: usize,
}

impl Origin<'_> {
    /// The line number of row `row` of the batch.
    fn line_of(&self, row: usize) -> Option<u64> {
        let (index, _) = self
            .part
            .split(|b| *b == b'\n')
            .enumerate()
            .filter(|(_, l)| !l.iter().all(u8::is_ascii_whitespace))
            .nth(self.row_base + row)?;
        Some(self.first_line + index as u64)
    }
}

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

/// Virtual columns: index in the table schema and expression over the stored columns.
pub(super) type Generated = Vec<(usize, Arc<dyn datafusion::physical_expr::PhysicalExpr>)>;

/// How the rows of a table's files are decoded and shaped: the same for every file and
/// subtask of a source.
pub(super) struct Rows {
    format: LineFormat,
    bad_data: BadData,
    schema: SchemaRef,
    /// The columns stored in the file: the schema without the virtual columns.
    stored: SchemaRef,
    generated: Generated,
    event_time: EventTimeSpec,
    projection: Vec<usize>,
    out_schema: SchemaRef,
}

impl Rows {
    /// The rows of a table of `schema`, producing the columns at `projection` (all when None)
    /// followed by the hidden columns.
    pub fn new(
        format: LineFormat,
        bad_data: BadData,
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
        Rows {
            out_schema: if format == LineFormat::Debezium {
                with_updating(&visible)
            } else {
                with_timestamp(&visible)
            },
            stored: Arc::new(schema.project(&stored).expect("stored columns")),
            format,
            bad_data,
            generated,
            schema,
            event_time,
            projection,
        }
    }
}

/// Reads one file of lines, or takes batches of its stored columns, and emits them with their
/// event time and watermark.
pub(super) struct LineReader {
    rows: Arc<Rows>,
    /// The node, for messages.
    node: String,
    /// The file, as messages name it.
    path: String,
    dropped: u64,
    /// The node's counters, where dropped rows are counted as they are dropped.
    counters: Arc<NodeCounters>,
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

impl LineReader {
    /// A reader of the file `path` (as messages name it) in the subtask `info`.
    pub fn new(rows: Arc<Rows>, info: &TaskInfo, path: String) -> Self {
        LineReader {
            rows,
            node: info.node.clone(),
            path,
            dropped: 0,
            counters: info.counters.clone(),
            position: FilePosition::default(),
        }
    }
}

impl LineReader {
    /// The columns stored in the file (the table's less its virtual columns).
    pub(super) fn stored_schema(&self) -> &SchemaRef {
        &self.rows.stored
    }

    /// A connector error of this reader's node.
    pub(super) fn fail(&self, e: impl Into<RunError>) -> TaskError {
        TaskError::connector(&self.node, e.into())
    }

    /// Bad data in this reader's file (`line`: where in it, when known).
    fn bad_data(&self, line: Option<u64>, reason: impl ToString) -> TaskError {
        let at = match line {
            Some(n) => format!("{} at line {n}", self.path),
            None => self.path.clone(),
        };
        self.fail(RunError::BadData {
            at,
            reason: reason.to_string(),
        })
    }

    fn decoder(&self) -> Result<Decoder, TaskError> {
        let schema = match self.rows.format {
            LineFormat::Debezium => debezium::envelope(&self.rows.stored),
            _ => self.rows.stored.clone(),
        };
        ReaderBuilder::new(schema)
            .with_batch_size(BATCH_ROWS)
            .with_strict_mode(false)
            .build_decoder()
            .map_err(TaskError::batch(&self.node))
    }

    /// Decodes complete lines; `first_line` is the 1-based number of the first.
    fn decode(&mut self, part: &[u8], first_line: u64) -> Result<Vec<RecordBatch>, TaskError> {
        match self.rows.format {
            LineFormat::Raw => {
                let text = String::from_utf8_lossy(part);
                let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
                self.raw_batches(&lines)
            }
            LineFormat::Json | LineFormat::Debezium => match self.decode_json(part)? {
                Ok(batches) => Ok(batches),
                Err(_) => {
                    let path = self.path.clone();
                    let lines = part
                        .split(|b| *b == b'\n')
                        .enumerate()
                        .filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace))
                        .map(|(i, line)| {
                            (format!("{path} at line {}", first_line + i as u64), line)
                        });
                    self.decode_one_by_one(lines)
                }
            },
        }
    }

    /// Texts as batches of the single text column of a `raw_string` table.
    fn raw_batches<T: AsRef<str>>(&self, texts: &[T]) -> Result<Vec<RecordBatch>, TaskError> {
        texts
            .chunks(BATCH_ROWS)
            .map(|chunk| {
                let column: ArrayRef = Arc::new(StringArray::from_iter_values(
                    chunk.iter().map(AsRef::as_ref),
                ));
                RecordBatch::try_new(self.rows.stored.clone(), vec![column])
                    .map_err(TaskError::batch(&self.node))
            })
            .collect()
    }

    /// The fast path: decodes JSON records in one pass. The inner error: some record is bad.
    fn decode_json(&self, bytes: &[u8]) -> Result<Result<Vec<RecordBatch>, ArrowError>, TaskError> {
        let mut decoder = self.decoder()?;
        let mut batches = Vec::new();
        let mut offset = 0;
        let whole = (|| {
            while offset < bytes.len() {
                let n = decoder.decode(&bytes[offset..])?;
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
            Ok::<_, ArrowError>(())
        })();
        Ok(whole.map(|()| batches))
    }

    /// The slow path: decodes JSON records one by one, each named by where it is, to find
    /// (and drop, or fail on) the bad ones.
    fn decode_one_by_one<'a>(
        &mut self,
        records: impl Iterator<Item = (String, &'a [u8])>,
    ) -> Result<Vec<RecordBatch>, TaskError> {
        let mut good = Vec::new();
        for (at, record) in records {
            let mut decoder = self.decoder()?;
            let row = decoder
                .decode(record)
                .and_then(|_| decoder.decode(b"\n"))
                .and_then(|_| decoder.flush());
            match row {
                Ok(Some(b)) => good.push(b),
                Ok(None) => {}
                Err(e) => match self.rows.bad_data {
                    BadData::Fail => {
                        return Err(self.fail(RunError::BadData {
                            at,
                            reason: e.to_string(),
                        }));
                    }
                    BadData::Drop => {
                        self.dropped += 1;
                        self.counters.bad(1);
                        if self.dropped <= DROP_WARNINGS {
                            warn!(at = %at, error = %e, "dropped a bad record");
                        }
                        if self.dropped == DROP_WARNINGS {
                            warn!(source = %self.path, "further bad records are dropped without a warning each; their count is logged at the end");
                        }
                    }
                },
            }
        }
        if good.is_empty() {
            return Ok(vec![]);
        }
        let all = concat_batches(&good[0].schema(), &good).map_err(TaskError::batch(&self.node))?;
        Ok(vec![all])
    }

    /// Decodes whole messages (each one record: a JSON object, or a text for `raw_string`).
    /// Bad data is named by the message's number, counted from 1 over the reader's life in
    /// [`FilePosition::lines`].
    fn decode_messages<M: AsRef<[u8]>>(
        &mut self,
        messages: &[M],
    ) -> Result<Vec<RecordBatch>, TaskError> {
        if self.rows.format == LineFormat::Raw {
            let texts: Vec<_> = messages
                .iter()
                .map(|m| String::from_utf8_lossy(m.as_ref()))
                .collect();
            return self.raw_batches(&texts);
        }
        let mut joined = Vec::with_capacity(messages.iter().map(|m| m.as_ref().len() + 1).sum());
        for m in messages {
            joined.extend_from_slice(m.as_ref());
            joined.push(b'\n');
        }
        match self.decode_json(&joined)? {
            Ok(batches) => Ok(batches),
            Err(_) => {
                let (path, first) = (self.path.clone(), self.position.lines + 1);
                let records = messages
                    .iter()
                    .enumerate()
                    .map(|(i, m)| (format!("{path}, message {}", first + i as u64), m.as_ref()));
                self.decode_one_by_one(records)
            }
        }
    }

    /// Computes the virtual columns: the stored columns become the table's.
    fn with_generated(&self, stored: RecordBatch) -> Result<RecordBatch, TaskError> {
        if self.rows.generated.is_empty() {
            return Ok(stored);
        }
        let rows = stored.num_rows();
        let mut stored_columns = stored.columns().iter();
        let mut columns = Vec::with_capacity(self.rows.schema.fields().len());
        for (i, field) in self.rows.schema.fields().iter().enumerate() {
            match self.rows.generated.iter().find(|(g, _)| *g == i) {
                Some((_, expr)) => {
                    let value = expr
                        .evaluate(&stored)
                        .and_then(|v| v.into_array(rows))
                        .map_err(|source| {
                            self.fail(RunError::Expression {
                                what: format!("column '{}'", field.name()),
                                source,
                            })
                        })?;
                    let value = cast(&value, field.data_type()).map_err(|e| {
                        self.bad_data(None, format!("column '{}': {e}", field.name()))
                    })?;
                    columns.push(value);
                }
                None => columns.push(stored_columns.next().expect("a stored column").clone()),
            }
        }
        RecordBatch::try_new(self.rows.schema.clone(), columns)
            .map_err(TaskError::batch(&self.node))
    }

    /// The event time of each row of a (full) batch; nulls when the column has them.
    fn event_times(&self, batch: &RecordBatch) -> Result<TimestampNanosecondArray, TaskError> {
        match self.rows.event_time.field {
            Some(i) => {
                let column = cast(batch.column(i), &timestamp_type()).map_err(|e| {
                    let name = self.rows.schema.field(i).name();
                    self.bad_data(None, format!("event time column '{name}': {e}"))
                })?;
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
        origin: Option<Origin<'_>>,
    ) -> Result<Option<(RecordBatch, Option<i64>)>, TaskError> {
        let mut batch = self.with_generated(stored)?;
        let mut times = self.event_times(&batch)?;
        if times.null_count() > 0 {
            let field = self
                .rows
                .schema
                .field(self.rows.event_time.field.unwrap_or_default())
                .name();
            if self.rows.bad_data == BadData::Fail {
                let first_null = (0..times.len()).find(|i| times.is_null(*i));
                let line = origin.zip(first_null).and_then(|(o, row)| o.line_of(row));
                return Err(self.bad_data(
                    line,
                    format!("a row has no event time (column '{field}' is null)"),
                ));
            }
            let keep = datafusion::arrow::compute::is_not_null(&times)
                .map_err(TaskError::batch(&self.node))?;
            let dropped = (batch.num_rows() - keep.true_count()) as u64;
            self.dropped += dropped;
            self.counters.bad(dropped);
            batch = datafusion::arrow::compute::filter_record_batch(&batch, &keep)
                .map_err(TaskError::batch(&self.node))?;
            if let Some(r) = &retract {
                let kept = datafusion::arrow::compute::filter(r, &keep)
                    .map_err(TaskError::batch(&self.node))?;
                retract = kept.as_any().downcast_ref::<BooleanArray>().cloned();
            }
            if batch.num_rows() == 0 {
                return Ok(None);
            }
            times = self.event_times(&batch)?;
        }
        let rows = batch.num_rows();
        let watermark = match &self.rows.event_time.watermark {
            None => max(&times).map(|t| t - DEFAULT_DELAY),
            Some(expr) => {
                let value = expr
                    .evaluate(&batch)
                    .and_then(|v| v.into_array(rows))
                    .map_err(|source| {
                        self.fail(RunError::Expression {
                            what: "the watermark".into(),
                            source,
                        })
                    })?;
                let value = cast(&value, &timestamp_type())
                    .map_err(|e| self.bad_data(None, format!("the watermark: {e}")))?;
                max(value
                    .as_any()
                    .downcast_ref::<TimestampNanosecondArray>()
                    .expect("cast to a nanosecond timestamp"))
            }
        };
        let mut columns: Vec<ArrayRef> = self
            .rows
            .projection
            .iter()
            .map(|&i| batch.column(i).clone())
            .collect();
        if let Some(r) = retract {
            columns.push(Arc::new(r));
        }
        columns.push(Arc::new(times));
        let out = RecordBatch::try_new(self.rows.out_schema.clone(), columns)
            .map_err(TaskError::batch(&self.node))?;
        Ok(Some((out, watermark)))
    }

    async fn emit(
        &mut self,
        ctx: &mut SourceContext,
        part: &[u8],
        first_line: u64,
    ) -> Result<(), TaskError> {
        let batches = self.decode(part, first_line)?;
        self.emit_batches(ctx, batches, Some((part, first_line)))
            .await
    }

    /// Decodes whole messages (each one record: a JSON object, or a text for `raw_string`)
    /// and emits them. Bad data is named by the message's number (counted from 1 over the
    /// reader's life, in [`FilePosition::lines`]).
    pub(super) async fn emit_messages<M: AsRef<[u8]>>(
        &mut self,
        ctx: &mut SourceContext,
        messages: &[M],
    ) -> Result<(), TaskError> {
        let batches = self.decode_messages(messages)?;
        self.position.lines += messages.len() as u64;
        self.emit_batches(ctx, batches, None).await
    }

    /// The watermark a source whose event time is the arrival time may emit while no data
    /// comes: everything it reads later arrives later. None when the event time is read
    /// from the data.
    pub(super) fn arrival_watermark(&self) -> Option<i64> {
        let spec = &self.rows.event_time;
        (spec.field.is_none() && spec.watermark.is_none()).then(|| now_nanos() - DEFAULT_DELAY)
    }

    /// Emits decoded batches; `lines` is the part they were decoded from and the number of
    /// its first line, when they came from lines (to name the line of a row at fault).
    async fn emit_batches(
        &mut self,
        ctx: &mut SourceContext,
        batches: Vec<RecordBatch>,
        lines: Option<(&[u8], u64)>,
    ) -> Result<(), TaskError> {
        let mut row_base = 0;
        for batch in batches {
            let rows = batch.num_rows();
            let (batch, retract, origin) = match self.rows.format {
                LineFormat::Debezium => {
                    let (b, r) = debezium::changes(&batch, &self.rows.stored)
                        .map_err(|e| self.bad_data(None, format!("Debezium changes: {e}")))?;
                    (b, Some(r), None)
                }
                // Under `fail` every non-blank line is a row, in order.
                _ => (
                    batch,
                    None,
                    lines.map(|(part, first_line)| Origin {
                        part,
                        first_line,
                        row_base,
                    }),
                ),
            };
            row_base += rows;
            if let Some((batch, watermark)) = self.finish_batch(batch, retract, origin)? {
                ctx.collect(batch).await?;
                if let Some(w) = watermark {
                    ctx.watermark(w).await?;
                }
            }
        }
        Ok(())
    }

    /// Emits a batch of the stored columns decoded elsewhere (a Parquet file's).
    pub(super) async fn emit_decoded(
        &mut self,
        ctx: &mut SourceContext,
        batch: RecordBatch,
    ) -> Result<(), TaskError> {
        if let Some((batch, watermark)) = self.finish_batch(batch, None, None)? {
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

    /// Reads lines from `reader` (positioned at [`LineReader::position`]) to its end and emits
    /// them, sending due checkpoint barriers between steps with the state `snapshot` makes.
    pub(super) async fn read_lines<R, S>(
        &mut self,
        ctx: &mut SourceContext,
        mut reader: R,
        snapshot: S,
    ) -> Result<SourceEnd, TaskError>
    where
        R: AsyncRead + Unpin + Send,
        S: Fn(&LineReader) -> Result<TaskState, TaskError> + Send + Sync,
    {
        let path = self.path.clone();
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
                .map_err(|e| self.fail(StorageError::io("reading", &path)(e)))?;
            pending.truncate(start + n);
            eof = n == 0;
            // A byte order mark opens the file, not its first line.
            if self.position.offset == 0 && start == 0 && pending.starts_with(BOM) {
                pending.drain(..BOM.len());
                self.position.offset += BOM.len() as u64;
            }
        }
        self.position.done = true;
        if self.dropped > 0 {
            warn!(file = %path, dropped = self.dropped, "bad_data = 'drop': rows dropped");
        }
        info!(file = %path, lines = self.position.lines, "file read to the end");
        Ok(SourceEnd::Finished)
    }
}
