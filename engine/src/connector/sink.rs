//! Sinks: the operators at the end of the dataflow. They drop the hidden event-time column,
//! encode rows as JSON lines and write them to stdout, a file, the default-sink channel, or
//! nowhere (blackhole).

use async_trait::async_trait;
use datafusion::arrow::json::LineDelimitedWriter;
use datafusion::arrow::record_batch::RecordBatch;
use std::fs::File;
use std::io::{BufWriter, Write};
use tokio::sync::mpsc;

use super::{ConnectorConfig, ConnectorTable};
use crate::dataflow::{Collector, DataflowError};
use crate::operator::{Operator, OperatorFactory, TaskInfo};

/// Name of the default sink a bare SELECT writes to.
pub const PREVIEW_SINK: &str = "preview";

/// What a run gets from the process that embeds the engine.
#[derive(Debug, Clone, Default)]
pub struct JobContext {
    /// Where the default sink sends its rows, as JSON objects in batches. Without it the
    /// default sink discards its rows.
    pub preview: Option<mpsc::Sender<Vec<String>>>,
}

pub struct SinkFactory {
    table: String,
    config: ConnectorConfig,
    /// The input carries a retraction flag before the event time.
    updating: bool,
    /// Rows are written as `{"before", "after", "op"}`.
    debezium: bool,
}

impl SinkFactory {
    pub fn new(table: &ConnectorTable, updating: bool, debezium: bool) -> Self {
        SinkFactory {
            table: table.name.clone(),
            config: table.config.clone(),
            updating,
            debezium,
        }
    }
}

impl OperatorFactory for SinkFactory {
    fn create(&self, info: &TaskInfo) -> Result<Box<dyn Operator>, DataflowError> {
        let fail = |message: String| DataflowError::Connector {
            node: info.node.clone(),
            message,
        };
        let target = match &self.config {
            ConnectorConfig::Stdout { .. } => Target::Stdout,
            ConnectorConfig::Blackhole => Target::Blackhole,
            ConnectorConfig::Preview => match &info.job.preview {
                Some(tx) => Target::Preview(tx.clone()),
                None => Target::Blackhole,
            },
            ConnectorConfig::SingleFile { path, .. } => {
                let file =
                    File::create(path).map_err(|e| fail(format!("cannot create '{path}': {e}")))?;
                Target::File(path.clone(), BufWriter::with_capacity(1 << 20, file))
            }
            ConnectorConfig::Impulse(_)
            | ConnectorConfig::Nexmark(_)
            | ConnectorConfig::FileSource(_)
            | ConnectorConfig::FileSystemSource(_)
            | ConnectorConfig::FileSystemSink(_) => {
                return Err(fail(format!("table '{}' is not a sink", self.table)));
            }
        };
        Ok(Box::new(Sink {
            node: info.node.clone(),
            target,
            hidden: if self.updating { 2 } else { 1 },
            debezium: self.debezium,
        }))
    }
}

enum Target {
    Blackhole,
    Stdout,
    File(String, BufWriter<File>),
    Preview(mpsc::Sender<Vec<String>>),
}

struct Sink {
    node: String,
    target: Target,
    /// Hidden columns at the end of each batch: the event time, and for an updating stream the
    /// retraction flag before it.
    hidden: usize,
    debezium: bool,
}

impl Sink {
    fn fail(&self, message: impl Into<String>) -> DataflowError {
        DataflowError::Connector {
            node: self.node.clone(),
            message: message.into(),
        }
    }
}

/// Encodes the visible columns of `batch` (all but the last `hidden`) as JSON lines.
pub fn encode_json_lines(batch: &RecordBatch, hidden: usize) -> Result<Vec<u8>, String> {
    let visible: Vec<usize> = (0..batch.num_columns().saturating_sub(hidden)).collect();
    let batch = batch.project(&visible).map_err(|e| e.to_string())?;
    let mut buf = Vec::with_capacity(batch.num_rows() * 64);
    let mut writer = LineDelimitedWriter::new(&mut buf);
    writer.write(&batch).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())?;
    drop(writer);
    Ok(buf)
}

impl Sink {
    /// Wraps JSON lines as Debezium change events: a retraction is a delete, anything else a
    /// create.
    fn debezium_lines(&self, batch: &RecordBatch, lines: &[u8]) -> Vec<u8> {
        let retract = (self.hidden == 2).then(|| {
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
        out
    }
}

#[async_trait]
impl Operator for Sink {
    async fn process_batch(
        &mut self,
        batch: RecordBatch,
        _input: usize,
        _out: &mut Collector,
    ) -> Result<(), DataflowError> {
        if matches!(self.target, Target::Blackhole) {
            return Ok(());
        }
        let mut lines = if self.debezium {
            let visible: Vec<usize> = (0..batch.num_columns() - self.hidden).collect();
            let rows = batch
                .project(&visible)
                .and_then(|b| super::debezium::timestamps_as_millis(&b))
                .map_err(|e| self.fail(e.to_string()))?;
            encode_json_lines(&rows, 0).map_err(|e| self.fail(e))?
        } else {
            encode_json_lines(&batch, self.hidden).map_err(|e| self.fail(e))?
        };
        if self.debezium {
            lines = self.debezium_lines(&batch, &lines);
        }
        match &mut self.target {
            Target::Blackhole => Ok(()),
            Target::Stdout => {
                let mut stdout = std::io::stdout().lock();
                stdout
                    .write_all(&lines)
                    .and_then(|_| stdout.flush())
                    .map_err(|e| DataflowError::Connector {
                        node: self.node.clone(),
                        message: format!("writing to stdout: {e}"),
                    })
            }
            Target::File(path, writer) => {
                writer
                    .write_all(&lines)
                    .map_err(|e| DataflowError::Connector {
                        node: self.node.clone(),
                        message: format!("writing '{path}': {e}"),
                    })
            }
            Target::Preview(tx) => {
                let rows: Vec<String> = String::from_utf8_lossy(&lines)
                    .lines()
                    .map(str::to_string)
                    .collect();
                tx.send(rows)
                    .await
                    .map_err(|_| self.fail("the default sink's reader went away"))
            }
        }
    }

    async fn on_close(&mut self, _out: &mut Collector) -> Result<(), DataflowError> {
        if let Target::File(path, writer) = &mut self.target {
            let path = path.clone();
            writer
                .flush()
                .and_then(|_| writer.get_ref().sync_all())
                .map_err(|e| self.fail(format!("flushing '{path}': {e}")))?;
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

    #[test]
    fn json_lines_drop_the_event_time_and_format_timestamps_as_iso() {
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
            "{\"n\":1,\"t\":\"2023-09-18T14:23:10\"}\n{\"t\":\"1970-01-01T00:00:00\"}\n"
        );
    }
}
