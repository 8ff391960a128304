//! Connectors: the tables a query reads from and writes to, named by `connector = '...'` in a
//! `CREATE TABLE ... WITH (...)`.
//!
//! Planning turns a table's options into a [`ConnectorTable`] (every option must be used by
//! the connector, or planning fails naming it); running asks it for a [`SourceFactory`] or a
//! sink [`OperatorFactory`]. Connectors never block the runtime for long: writes are buffered
//! and flushed at the end of input.

mod counters;
pub(crate) mod debezium;
mod file;
mod filesystem;
mod impulse;
mod nexmark;
mod options;
mod sink;

pub use filesystem::Location;
pub use options::{Options, parse_duration};
pub use sink::{JobContext, PREVIEW_SINK};

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use tokio::sync::watch;

use crate::TIMESTAMP_FIELD;
use crate::dataflow::checkpointing::{Link, Report};
use crate::dataflow::{Barrier, Collector, DataflowError, Message, StopMode, Watermark};
use crate::operator::{OperatorFactory, TaskInfo};
use crate::state::{RestoredState, TaskState};

/// Errors in a table's definition, found while planning.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectorError {
    /// `connector = '...'` names no connector this engine has.
    #[error("unknown connector '{0}' (known: {known})", known = KNOWN_CONNECTORS.join(", "))]
    UnknownConnector(String),
    /// An option no part of the table definition uses.
    #[error("unknown option '{option}' for connector '{connector}'")]
    UnknownOption { connector: String, option: String },
    /// A required option is missing.
    #[error("connector '{connector}' needs the option '{option}'")]
    MissingOption { connector: String, option: String },
    /// An option's value does not parse or is out of range.
    #[error("invalid value '{value}' for option '{option}': {reason}")]
    InvalidOption {
        option: String,
        value: String,
        reason: String,
    },
    /// The table is used the wrong way round (reading from a sink, writing to a source).
    #[error("{0}")]
    Usage(String),
}

/// Connectors this engine knows.
pub const KNOWN_CONNECTORS: &[&str] = &[
    "impulse",
    "nexmark",
    "single_file",
    "filesystem",
    "stdout",
    "blackhole",
];

/// Whether a table is read or written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableKind {
    Source,
    Sink,
}

/// A table backed by a connector, as planning understood its definition.
#[derive(Debug, Clone)]
pub struct ConnectorTable {
    pub name: String,
    pub kind: TableKind,
    /// The visible columns (no event-time column).
    pub schema: SchemaRef,
    pub config: ConnectorConfig,
    /// Where a source's event time comes from and how its watermark is made.
    pub event_time: EventTimeSpec,
    /// Virtual columns (`GENERATED ALWAYS AS (expr)`): their index in `schema` and the
    /// expression over the other columns, in `schema` order without them. A source reads the
    /// other columns and computes these.
    pub generated: Vec<(usize, Arc<dyn datafusion::physical_expr::PhysicalExpr>)>,
}

/// A source's event time and watermark.
#[derive(Debug, Clone, Default)]
pub struct EventTimeSpec {
    /// The column holding the event time (`event_time_field`, or the column of
    /// `WATERMARK FOR`); None: the time the row was read.
    pub field: Option<usize>,
    /// `WATERMARK FOR col [AS expr]`, planned over the table's columns: the watermark is the
    /// largest value of the expression seen. None: the event time less one second.
    pub watermark: Option<Arc<dyn datafusion::physical_expr::PhysicalExpr>>,
}

/// Per-connector settings parsed from the table's options.
#[derive(Debug, Clone)]
pub enum ConnectorConfig {
    Impulse(impulse::ImpulseConfig),
    /// The Nexmark benchmark's auction events.
    Nexmark(nexmark::NexmarkConfig),
    Stdout {
        debezium: bool,
    },
    Blackhole,
    /// A JSON-lines file written by the sink.
    SingleFile {
        path: String,
        /// `format = 'debezium_json'`: rows as `{"before", "after", "op"}`, which updating
        /// results need.
        debezium: bool,
    },
    /// The default sink of a bare SELECT: rows go to the embedding process.
    Preview,
    /// A file read from start to end.
    FileSource(file::FileSourceConfig),
    /// Files under a directory or object-store prefix, read to the end.
    FileSystemSource(filesystem::FileSystemSourceConfig),
    /// Part files written under a directory or object-store prefix.
    FileSystemSink(filesystem::FileSystemSinkConfig),
}

impl ConnectorTable {
    /// Builds a table from its definition. `columns` is the declared schema (None when the
    /// statement declares no columns); `options` are the WITH options less `connector`.
    pub fn new(
        name: &str,
        connector: &str,
        columns: Option<SchemaRef>,
        options: &mut Options,
    ) -> Result<ConnectorTable, ConnectorError> {
        let declared_type = options.take("type");
        let (config, schema, kind) = match connector {
            "impulse" => {
                let config = impulse::ImpulseConfig::from_options(options)?;
                (
                    ConnectorConfig::Impulse(config),
                    impulse::schema(),
                    TableKind::Source,
                )
            }
            "nexmark" => {
                let config = nexmark::NexmarkConfig::from_options(options)?;
                (
                    ConnectorConfig::Nexmark(config),
                    nexmark::schema(),
                    TableKind::Source,
                )
            }
            "single_file" if declared_type.as_deref() == Some("source") => {
                let schema = columns.clone().ok_or_else(|| {
                    ConnectorError::Usage("a single_file source needs its columns declared".into())
                })?;
                let config = file::FileSourceConfig::from_options(options, &schema)?;
                (
                    ConnectorConfig::FileSource(config),
                    schema,
                    TableKind::Source,
                )
            }
            "filesystem" => match declared_type.as_deref() {
                Some("source") => (
                    ConnectorConfig::FileSystemSource(
                        filesystem::FileSystemSourceConfig::from_options(options)?,
                    ),
                    columns.clone().ok_or_else(|| {
                        ConnectorError::Usage(
                            "a filesystem source needs its columns declared".into(),
                        )
                    })?,
                    TableKind::Source,
                ),
                Some("sink") => (
                    ConnectorConfig::FileSystemSink(
                        filesystem::FileSystemSinkConfig::from_options(options)?,
                    ),
                    columns.clone().unwrap_or_else(|| Arc::new(Schema::empty())),
                    TableKind::Sink,
                ),
                None => {
                    return Err(ConnectorError::MissingOption {
                        connector: connector.into(),
                        option: "type".into(),
                    });
                }
                Some(other) => {
                    return Err(ConnectorError::InvalidOption {
                        option: "type".into(),
                        value: other.into(),
                        reason: "expected 'source' or 'sink'".into(),
                    });
                }
            },
            "stdout" | "blackhole" | "single_file" => {
                if connector == "single_file" && declared_type.is_none() {
                    return Err(ConnectorError::MissingOption {
                        connector: connector.into(),
                        option: "type".into(),
                    });
                }
                let schema = columns.clone().unwrap_or_else(|| Arc::new(Schema::empty()));
                let debezium = match options.take("format").as_deref() {
                    None | Some("json") => false,
                    Some("debezium_json") if connector != "blackhole" => true,
                    Some(other) => {
                        return Err(ConnectorError::InvalidOption {
                            option: "format".into(),
                            value: other.into(),
                            reason: "this connector writes 'json' or 'debezium_json'".into(),
                        });
                    }
                };
                let config = match connector {
                    "stdout" => ConnectorConfig::Stdout { debezium },
                    "blackhole" => ConnectorConfig::Blackhole,
                    _ => ConnectorConfig::SingleFile {
                        path: options.require("single_file", "path")?,
                        debezium,
                    },
                };
                (config, schema, TableKind::Sink)
            }
            other => return Err(ConnectorError::UnknownConnector(other.to_string())),
        };
        if let Some(t) = declared_type {
            let want = match kind {
                TableKind::Source => "source",
                TableKind::Sink => "sink",
            };
            if t != want {
                return Err(ConnectorError::InvalidOption {
                    option: "type".into(),
                    value: t,
                    reason: format!("connector '{connector}' can only be a {want}"),
                });
            }
        }
        let mut event_time = EventTimeSpec::default();
        if kind == TableKind::Source
            && let Some(field) = options.take("event_time_field")
        {
            let index = schema
                .index_of(&field)
                .map_err(|_| ConnectorError::InvalidOption {
                    option: "event_time_field".into(),
                    value: field.clone(),
                    reason: format!("table '{name}' has no column '{field}'"),
                })?;
            event_time.field = Some(index);
        }
        if let Some(option) = options.unused().next() {
            return Err(ConnectorError::UnknownOption {
                connector: connector.to_string(),
                option: option.to_string(),
            });
        }
        Ok(ConnectorTable {
            name: name.to_string(),
            kind,
            schema,
            config,
            event_time,
            generated: Vec::new(),
        })
    }

    /// True for a source of changes (retractions and inserts), such as a Debezium source.
    pub fn updating(&self) -> bool {
        matches!(&self.config, ConnectorConfig::FileSource(c) if c.updating())
    }

    /// The default sink of a bare SELECT with this schema.
    pub fn preview(schema: SchemaRef) -> ConnectorTable {
        ConnectorTable {
            name: PREVIEW_SINK.to_string(),
            kind: TableKind::Sink,
            schema,
            config: ConnectorConfig::Preview,
            event_time: EventTimeSpec::default(),
            generated: Vec::new(),
        }
    }

    /// A factory for the source's subtasks, producing the columns at `projection` (all when
    /// None) followed by the event-time column.
    pub fn source_factory(
        &self,
        projection: Option<Vec<usize>>,
    ) -> Result<Arc<dyn SourceFactory>, ConnectorError> {
        match &self.config {
            ConnectorConfig::Impulse(config) => Ok(Arc::new(impulse::ImpulseFactory::new(
                config.clone(),
                projection,
            ))),
            ConnectorConfig::Nexmark(config) => Ok(Arc::new(nexmark::NexmarkFactory::new(
                config.clone(),
                projection,
            ))),
            ConnectorConfig::FileSource(config) => Ok(Arc::new(file::FileSourceFactory::new(
                config.clone(),
                self.schema.clone(),
                self.event_time.clone(),
                self.generated.clone(),
                projection,
            ))),
            ConnectorConfig::FileSystemSource(config) => {
                Ok(Arc::new(filesystem::FileSystemSourceFactory::new(
                    config.clone(),
                    self.schema.clone(),
                    self.event_time.clone(),
                    self.generated.clone(),
                    projection,
                )))
            }
            _ if !self.generated.is_empty() => Err(ConnectorError::Usage(format!(
                "table '{}' cannot have virtual columns",
                self.name
            ))),
            _ => Err(ConnectorError::Usage(format!(
                "table '{}' is a sink and cannot be read from",
                self.name
            ))),
        }
    }

    /// A factory for the sink's subtasks; `updating` when its input is an updating result.
    pub fn sink_factory(&self, updating: bool) -> Result<Arc<dyn OperatorFactory>, ConnectorError> {
        if self.kind != TableKind::Sink {
            return Err(ConnectorError::Usage(format!(
                "table '{}' is a source and cannot be written to",
                self.name
            )));
        }
        if let ConnectorConfig::FileSystemSink(config) = &self.config {
            return Ok(Arc::new(filesystem::FileSystemSinkFactory::new(
                self, config, updating,
            )?));
        }
        let debezium = match &self.config {
            ConnectorConfig::SingleFile { debezium, .. } | ConnectorConfig::Stdout { debezium } => {
                *debezium
            }
            ConnectorConfig::Preview => updating,
            _ => false,
        };
        if updating && !debezium && !matches!(self.config, ConnectorConfig::Blackhole) {
            return Err(ConnectorError::Usage(format!(
                "'{}' receives updating results (an aggregate without a window): its format must be 'debezium_json'",
                self.name
            )));
        }
        Ok(Arc::new(sink::SinkFactory::new(self, updating, debezium)))
    }
}

/// Name of the hidden retraction flag of an updating stream (true: the row is withdrawn).
pub const RETRACT_FIELD: &str = "_retract";

/// `schema` with the hidden columns of an updating stream appended: the retraction flag, then
/// the event time.
pub fn with_updating(schema: &Schema) -> SchemaRef {
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(RETRACT_FIELD, DataType::Boolean, false));
    fields.push(Field::new(TIMESTAMP_FIELD, timestamp_type(), false));
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// The data type of the hidden event-time column.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Nanosecond, None)
}

/// `schema` with the hidden event-time column appended.
pub fn with_timestamp(schema: &Schema) -> SchemaRef {
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(TIMESTAMP_FIELD, timestamp_type(), false));
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// How a source ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceEnd {
    /// All its data was read (a bounded source): the final watermark follows.
    Finished,
    /// It was asked to stop.
    Stopped,
    /// It stopped at a checkpoint ([`SourceContext::checkpoint`] returned true): its barrier
    /// was the last thing it sent.
    Checkpointed,
}

/// Builds one source instance per subtask.
pub trait SourceFactory: Send + Sync {
    fn create(&self, info: &TaskInfo) -> Result<Box<dyn Source>, DataflowError>;
}

/// One subtask of a source.
///
/// A source keeps its position (offsets, counters, the files done) in itself, and between two
/// batches asks [`SourceContext::barrier_due`]; when a barrier is due it passes
/// [`Source::snapshot`] to [`SourceContext::checkpoint`], which sends the barrier.
#[async_trait]
pub trait Source: Send {
    /// Reads until the input ends or a stop is requested.
    async fn run(&mut self, ctx: &mut SourceContext) -> Result<SourceEnd, DataflowError>;

    /// Its position: exactly what it has emitted so far.
    fn snapshot(&self) -> Result<TaskState, DataflowError>;

    /// Called before [`Source::run`] when the run restores a checkpoint: continue after what
    /// the old subtasks (every one of them: the parallelism may differ) had emitted.
    fn restore(&mut self, state: &RestoredState) -> Result<(), DataflowError>;
}

/// What a source subtask can do: emit batches and watermarks, inject checkpoint barriers, and
/// learn it should stop.
pub struct SourceContext {
    info: TaskInfo,
    out: Collector,
    stop: watch::Receiver<Option<StopMode>>,
    trigger: watch::Receiver<Option<Barrier>>,
    link: Option<Link>,
    /// The epoch of the last barrier sent.
    injected: u64,
    watermark: Option<i64>,
}

impl SourceContext {
    pub(crate) fn new(
        info: TaskInfo,
        out: Collector,
        stop: watch::Receiver<Option<StopMode>>,
        trigger: watch::Receiver<Option<Barrier>>,
        link: Option<Link>,
        watermark: Option<i64>,
    ) -> Self {
        SourceContext {
            info,
            out,
            stop,
            trigger,
            link,
            injected: 0,
            watermark,
        }
    }

    pub fn info(&self) -> &TaskInfo {
        &self.info
    }

    pub(crate) fn collector(&mut self) -> &mut Collector {
        &mut self.out
    }

    /// Sends a batch (columns then the event-time column) downstream.
    pub async fn collect(&mut self, batch: RecordBatch) -> Result<(), DataflowError> {
        self.out.collect(batch).await
    }

    /// Advances the watermark to `t` (ignored unless it moves forward).
    pub async fn watermark(&mut self, t: i64) -> Result<(), DataflowError> {
        if self.watermark.is_some_and(|w| w >= t) {
            return Ok(());
        }
        self.watermark = Some(t);
        self.out
            .broadcast(Message::Watermark(Watermark::EventTime(t)))
            .await
    }

    /// Tells downstream this subtask has no data for now (a subtask with nothing to read).
    pub async fn idle(&mut self) -> Result<(), DataflowError> {
        self.out
            .broadcast(Message::Watermark(Watermark::Idle))
            .await
    }

    /// True once a stop without checkpoint was requested (graceful or immediate; also a
    /// checkpoint stop in a run without checkpointing).
    pub fn should_stop(&self) -> bool {
        match *self.stop.borrow() {
            None => false,
            Some(StopMode::Checkpoint) => self.link.is_none(),
            Some(_) => true,
        }
    }

    /// True when a checkpoint barrier is waiting to be sent.
    pub fn barrier_due(&self) -> bool {
        self.link.is_some()
            && self
                .trigger
                .borrow()
                .is_some_and(|b| b.epoch > self.injected)
    }

    /// Reports `state` (the source's position after everything it sent) for the due
    /// checkpoint and sends its barrier. True when the run stops at this checkpoint: the
    /// source must then return [`SourceEnd::Checkpointed`] without sending anything more.
    pub async fn checkpoint(&mut self, state: TaskState) -> Result<bool, DataflowError> {
        let (Some(barrier), Some(link)) = (*self.trigger.borrow(), self.link.as_ref()) else {
            return Ok(false);
        };
        self.injected = barrier.epoch;
        let files = link.files(state, self.watermark)?;
        link.report(Report::Snapshot {
            task: link.task,
            epoch: barrier.epoch,
            files,
        });
        self.out.broadcast(Message::Barrier(barrier)).await?;
        Ok(barrier.stop)
    }

    /// Sends the due barrier if there is one: `Some(end)` when the source must return `end`.
    pub async fn checkpoint_if_due(
        &mut self,
        snapshot: impl FnOnce() -> Result<TaskState, DataflowError>,
    ) -> Result<Option<SourceEnd>, DataflowError> {
        if !self.barrier_due() {
            return Ok(None);
        }
        Ok(self
            .checkpoint(snapshot()?)
            .await?
            .then_some(SourceEnd::Checkpointed))
    }

    /// The source ended: its final state stands for it in later checkpoints.
    pub(crate) fn ended(&mut self, state: TaskState, complete: bool) -> Result<(), DataflowError> {
        if let Some(link) = &self.link {
            let watermark = if complete {
                Some(i64::MAX)
            } else {
                self.watermark
            };
            let files = link.files(state, watermark)?;
            link.report(Report::Ended {
                task: link.task,
                files,
                complete,
            });
        }
        Ok(())
    }

    /// Resolves when a stop is requested or a checkpoint barrier is due (at once if so):
    /// a source waiting for time or data selects on this, then checks both.
    pub async fn stopped(&mut self) {
        if self.should_stop() || self.barrier_due() {
            return;
        }
        let checkpointing = self.link.is_some();
        let stop = self.stop.wait_for(|s| match s {
            None => false,
            Some(StopMode::Checkpoint) => !checkpointing,
            Some(_) => true,
        });
        if !checkpointing {
            let _ = stop.await;
            return;
        }
        let injected = self.injected;
        let barrier = self
            .trigger
            .wait_for(|b| b.is_some_and(|b| b.epoch > injected));
        tokio::select! {
            _ = stop => {}
            _ = barrier => {}
        }
    }
}
