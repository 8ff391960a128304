//! Sinks: the operators at the end of the dataflow. They drop the hidden event-time column,
//! encode rows as JSON lines and write them to stdout, a file, the default-sink channel, or
//! nowhere (blackhole).
//!
//! Delivery: `single_file` is exactly-once. At each checkpoint it flushes and fsyncs the file
//! and records its length; a restored run truncates the file to that length before writing,
//! so rows written after the checkpoint (and written again by the restored run) appear once.
//! `stdout` and the default sink (the tail buffer, the rows `arroyod run` prints) are
//! at-least-once: rows after the last checkpoint are sent again by a restored run.

use async_trait::async_trait;
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::arrow::json::WriterBuilder;
use datafusion::arrow::json::writer::LineDelimited;
use datafusion::arrow::record_batch::RecordBatch;
use std::fs::File;
use std::io::{BufWriter, Write};
use tokio::sync::mpsc;

use super::{ConnectorConfig, ConnectorError, ConnectorTable, RunError};
use crate::storage::StorageError;
use crate::storage::durable;
use crate::task::{Collector, TaskError};
use crate::task::{Operator, OperatorFactory, TaskInfo};
use crate::task::{RestoredState, TaskState};
use datafusion::error::DataFusionError;

/// Name of the default sink a bare SELECT writes to.
pub const PREVIEW_SINK: &str = "preview";

/// The `format` of the line sinks (`stdout`, `single_file`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineSinkFormat {
    /// One JSON object per row.
    Json,
    /// `{"before", "after", "op"}` per row, which updating results need.
    Debezium,
    /// One column's text per line (Arroyo's `raw_string`).
    RawString,
}

/// How a line sink encodes its rows, with the column a `raw_string` sink writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Json,
    Debezium,
    /// The text of column `.0` (a null is an empty line).
    Raw(usize),
}

impl Encoding {
    /// The encoding of `format` for the columns `input` of sink `table`: a `raw_string` sink
    /// writes its column `value` (Arroyo's rule) or its only column, and it must be text.
    pub fn of(format: LineSinkFormat, table: &str, input: &Schema) -> Result<Self, ConnectorError> {
        Ok(match format {
            LineSinkFormat::Json => Encoding::Json,
            LineSinkFormat::Debezium => Encoding::Debezium,
            LineSinkFormat::RawString => {
                let column = match input.index_of("value") {
                    Ok(i) => i,
                    Err(_) if input.fields().len() == 1 => 0,
                    Err(_) => {
                        return Err(ConnectorError::Usage(format!(
                            "'{table}' has format 'raw_string', which writes one text column: \
                             name it `value` (SELECT ... AS value) or select only one column \
                             (it has {})",
                            input.fields().len()
                        )));
                    }
                };
                let field = input.field(column);
                if !matches!(
                    field.data_type(),
                    DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
                ) {
                    return Err(ConnectorError::Usage(format!(
                        "'{table}' has format 'raw_string', which writes a TEXT column, but `{}` is {}: \
                         cast it (CAST({} AS TEXT))",
                        field.name(),
                        field.data_type(),
                        field.name()
                    )));
                }
                Encoding::Raw(column)
            }
        })
    }
}

pub struct SinkFactory {
    table: String,
    config: ConnectorConfig,
    /// The input carries a retraction flag before the event time.
    updating: bool,
    encoding: Encoding,
}

impl SinkFactory {
    pub fn new(table: &ConnectorTable, updating: bool, encoding: Encoding) -> Self {
        SinkFactory {
            table: table.name.clone(),
            config: table.config.clone(),
            updating,
            encoding,
        }
    }
}

impl OperatorFactory for SinkFactory {
    /// `single_file` truncates its file to the restored checkpoint's length; the others are
    /// at-least-once.
    fn rewinds(&self) -> bool {
        true
    }

    fn create(&self, info: &TaskInfo) -> Result<Box<dyn Operator>, TaskError> {
        let target = match &self.config {
            ConnectorConfig::Stdout { .. } => Target::Stdout,
            ConnectorConfig::Blackhole => Target::Blackhole,
            ConnectorConfig::Preview => match &info.job.preview {
                Some(tx) => Target::Preview(tx.clone()),
                None => Target::Blackhole,
            },
            ConnectorConfig::SingleFile { path, .. } => Target::File(OutputFile {
                path: path.clone(),
                writer: None,
                length: 0,
                restored: None,
            }),
            ConnectorConfig::Impulse(_)
            | ConnectorConfig::Kafka(_)
            | ConnectorConfig::Nexmark(_)
            | ConnectorConfig::FileSource(_)
            | ConnectorConfig::FileSystemSource(_)
            | ConnectorConfig::FileSystemSink(_)
            | ConnectorConfig::Http(_) => {
                return Err(TaskError::setup(&info.node)(DataFusionError::Internal(
                    format!("table '{}' is not a sink", self.table),
                )));
            }
        };
        Ok(Box::new(Sink {
            node: info.node.clone(),
            target,
            hidden: if self.updating { 2 } else { 1 },
            encoding: self.encoding,
        }))
    }
}

enum Target {
    Blackhole,
    Stdout,
    File(OutputFile),
    Preview(mpsc::Sender<Vec<String>>),
}

/// The file of a `single_file` sink, opened at the first write.
struct OutputFile {
    path: String,
    writer: Option<BufWriter<File>>,
    /// Bytes written in all (what a checkpoint records).
    length: u64,
    /// The checkpointed length to continue from (None: a new file).
    restored: Option<u64>,
}

/// The state table of a `single_file` sink.
const LENGTH: &str = "length";

impl OutputFile {
    fn writer(&mut self) -> Result<&mut BufWriter<File>, RunError> {
        if self.writer.is_none() {
            let path = &self.path;
            crate::storage::access::check(std::path::Path::new(path))?;
            let file = match self.restored {
                // The new file's name must survive a crash as its checkpointed length does.
                None => durable::create(std::path::Path::new(path))
                    .map_err(StorageError::io("creating", path))?,
                Some(length) => {
                    let mut file = std::fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(false)
                        .open(path)
                        .map_err(StorageError::io("opening", path))?;
                    let found = file
                        .metadata()
                        .map_err(StorageError::io("opening", path))?
                        .len();
                    if found < length {
                        return Err(RunError::Lost {
                            path: path.clone(),
                            found,
                            expected: length,
                        });
                    }
                    // Rows after the checkpoint are written again by this run.
                    durable::truncate(&mut file, length)
                        .map_err(StorageError::io("truncating to the checkpoint", path))?;
                    file
                }
            };
            self.length = self.restored.unwrap_or(0);
            self.writer = Some(BufWriter::with_capacity(1 << 20, file));
        }
        Ok(self.writer.as_mut().expect("opened above"))
    }

    /// Writes what is buffered and makes it durable; the file's length.
    fn sync(&mut self) -> Result<u64, RunError> {
        let path = self.path.clone();
        durable::flush(self.writer()?).map_err(StorageError::io("flushing", path))?;
        Ok(self.length)
    }
}

struct Sink {
    node: String,
    target: Target,
    /// Hidden columns at the end of each batch: the event time, and for an updating stream the
    /// retraction flag before it.
    hidden: usize,
    encoding: Encoding,
}

impl Sink {
    fn fail(&self, e: impl Into<RunError>) -> TaskError {
        TaskError::connector(&self.node, e.into())
    }
}

/// Encodes the visible columns of `batch` (all but the last `hidden`) as JSON lines. A null
/// is written as `null`, as Arroyo writes it: every row has every column's key.
pub fn encode_json_lines(batch: &RecordBatch, hidden: usize) -> Result<Vec<u8>, RunError> {
    let visible: Vec<usize> = (0..batch.num_columns().saturating_sub(hidden)).collect();
    let batch = batch.project(&visible).map_err(RunError::Encode)?;
    let mut buf = Vec::with_capacity(batch.num_rows() * 64);
    let mut writer = WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, LineDelimited>(&mut buf);
    writer.write(&batch).map_err(RunError::Encode)?;
    writer.finish().map_err(RunError::Encode)?;
    drop(writer);
    Ok(buf)
}

/// The text of column `column` of `batch`, one line a row (a null is an empty line).
pub(super) fn encode_raw(batch: &RecordBatch, column: usize) -> Result<Vec<u8>, RunError> {
    let text = cast(batch.column(column), &DataType::Utf8).map_err(RunError::Encode)?;
    let text = text.as_string::<i32>();
    let mut out = Vec::with_capacity(text.value_data().len() + text.len());
    for value in text.iter() {
        out.extend_from_slice(value.unwrap_or_default().as_bytes());
        out.push(b'\n');
    }
    Ok(out)
}

/// Encodes the visible columns of `batch` (all but the last `hidden`) as JSON lines, or as
/// Debezium change events with `debezium` (a retraction is a delete, anything else a create;
/// timestamps as epoch milliseconds).
pub(super) fn encode_rows(
    batch: &RecordBatch,
    hidden: usize,
    debezium: bool,
) -> Result<Vec<u8>, RunError> {
    if !debezium {
        return encode_json_lines(batch, hidden);
    }
    let visible: Vec<usize> = (0..batch.num_columns() - hidden).collect();
    let rows = batch
        .project(&visible)
        .and_then(|b| super::debezium::timestamps_as_millis(&b))
        .map_err(RunError::Encode)?;
    let lines = encode_json_lines(&rows, 0)?;
    let retract = (hidden == 2).then(|| {
        batch
            .column(batch.num_columns() - 2)
            .as_any()
            .downcast_ref::<datafusion::arrow::array::BooleanArray>()
            .expect("the retraction flag is a boolean")
            .clone()
    });
    let mut out = Vec::with_capacity(lines.len() + batch.num_rows() * 40);
    for (i, line) in lines
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .enumerate()
    {
        if retract.as_ref().is_some_and(|r| r.value(i)) {
            out.extend_from_slice(b"{\"before\":");
            out.extend_from_slice(line);
            out.extend_from_slice(b",\"after\":null,\"op\":\"d\"}\n");
        } else {
            out.extend_from_slice(b"{\"before\":null,\"after\":");
            out.extend_from_slice(line);
            out.extend_from_slice(b",\"op\":\"c\"}\n");
        }
    }
    Ok(out)
}

#[async_trait]
impl Operator for Sink {
    async fn process_batch(
        &mut self,
        batch: RecordBatch,
        _input: usize,
        _out: &mut Collector,
    ) -> Result<(), TaskError> {
        if matches!(self.target, Target::Blackhole) {
            return Ok(());
        }
        let lines = match self.encoding {
            Encoding::Json => encode_rows(&batch, self.hidden, false),
            Encoding::Debezium => encode_rows(&batch, self.hidden, true),
            Encoding::Raw(column) => encode_raw(&batch, column),
        }
        .map_err(|e| self.fail(e))?;
        match &mut self.target {
            Target::Blackhole => Ok(()),
            Target::Stdout => {
                let mut stdout = std::io::stdout().lock();
                let written = stdout.write_all(&lines).and_then(|_| stdout.flush());
                written.map_err(|e| self.fail(StorageError::io("writing to", "stdout")(e)))
            }
            Target::File(file) => {
                let written = match file.writer() {
                    Ok(w) => w
                        .write_all(&lines)
                        .map_err(|e| StorageError::io("writing", &file.path)(e).into()),
                    Err(e) => Err(e),
                };
                if let Err(e) = written {
                    return Err(TaskError::connector(&self.node, e));
                }
                file.length += lines.len() as u64;
                Ok(())
            }
            Target::Preview(tx) => {
                let rows: Vec<String> = String::from_utf8_lossy(&lines)
                    .lines()
                    .map(str::to_string)
                    .collect();
                tx.send(rows)
                    .await
                    .map_err(|_| self.fail(RunError::PreviewClosed))
            }
        }
    }

    async fn on_close(&mut self, _out: &mut Collector) -> Result<(), TaskError> {
        if let Target::File(file) = &mut self.target {
            file.sync()
                .map_err(|e| TaskError::connector(&self.node, e))?;
        }
        Ok(())
    }

    async fn snapshot(&mut self) -> Result<TaskState, TaskError> {
        let mut state = TaskState::new();
        if let Target::File(file) = &mut self.target {
            let length = file
                .sync()
                .map_err(|e| TaskError::connector(&self.node, e))?;
            state.put_json(LENGTH, &length)?;
        }
        Ok(state)
    }

    fn restore(&mut self, state: &RestoredState) -> Result<(), TaskError> {
        if let Target::File(file) = &mut self.target {
            // One writer per file: at most one old subtask has a length.
            file.restored = state.json::<u64>(LENGTH)?.into_iter().flatten().max();
            if file.restored.is_some() {
                file.writer()
                    .map_err(|e| TaskError::connector(&self.node, e))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, TimestampNanosecondArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use std::sync::Arc;

    fn output(path: &std::path::Path, restored: Option<u64>) -> OutputFile {
        OutputFile {
            path: path.display().to_string(),
            writer: None,
            length: 0,
            restored,
        }
    }

    #[test]
    fn a_restored_file_is_cut_to_its_checkpointed_length_and_never_extended() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.json");
        std::fs::write(&path, b"line 1\nline 2\nafter the checkpoint\n").unwrap();
        let mut file = output(&path, Some(14));
        file.writer().unwrap().write_all(b"again\n").unwrap();
        file.length += 6;
        assert_eq!(file.sync().unwrap(), 20);
        assert_eq!(std::fs::read(&path).unwrap(), b"line 1\nline 2\nagain\n");
        // A file shorter than its checkpoint lost output: refused, not padded.
        std::fs::write(&path, b"short").unwrap();
        let err = output(&path, Some(14)).writer().unwrap_err();
        assert!(err.to_string().contains("has 5 bytes but held 14"), "{err}");
        // A new run starts the file afresh.
        let mut fresh = output(&path, None);
        fresh.writer().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"");
    }

    #[test]
    fn json_lines_drop_the_event_time_write_nulls_and_format_timestamps_as_iso() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, true),
            Field::new("t", DataType::Timestamp(TimeUnit::Nanosecond, None), true),
            Field::new(
                "_timestamp",
                DataType::Timestamp(TimeUnit::Nanosecond, None),
                false,
            ),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![Some(1), None])),
                Arc::new(TimestampNanosecondArray::from(vec![
                    1_695_046_990_000_000_000,
                    0,
                ])),
                Arc::new(TimestampNanosecondArray::from(vec![5, 6])),
            ],
        )
        .unwrap();
        let out = String::from_utf8(encode_json_lines(&batch, 1).unwrap()).unwrap();
        assert_eq!(
            out,
            "{\"n\":1,\"t\":\"2023-09-18T14:23:10\"}\n{\"n\":null,\"t\":\"1970-01-01T00:00:00\"}\n"
        );
    }
}
