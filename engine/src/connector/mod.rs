//! Connectors: the tables a query reads from and writes to, named by `connector = '...'` in a
//! `CREATE TABLE ... WITH (...)`.
//!
//! Planning turns a table's options into a [`ConnectorTable`] (every option must be used by
//! the connector, or planning fails naming it); running asks it for a
//! [`SourceFactory`](crate::task::SourceFactory) or a sink
//! [`OperatorFactory`](crate::task::OperatorFactory). Connectors never block the runtime for long: writes are buffered
//! and flushed at the end of input.

mod counters;
pub(crate) mod debezium;
mod file;
pub(crate) mod filesystem;
mod http;
mod impulse;
mod kafka;
mod lines;
mod nexmark;
mod options;
mod rerun;
mod run;
mod sink;

pub use kafka::host_settings as kafka_host_settings;
pub use options::{Options, ValueError, parse_data_size, parse_duration};
pub use rerun::{PlannedSink, Rerun, rerun};
pub use run::RunError;
pub use sink::PREVIEW_SINK;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use datafusion::arrow::datatypes::{Schema, SchemaRef};

use crate::task::{OperatorFactory, SourceFactory};

/// Errors in a table's definition, found while planning.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectorError {
    /// `connector = '...'` names no connector this engine has.
    #[error("unknown connector '{name}'{hint} (known: {known})", name = .0, hint = did_you_mean(&options::closest(.0, KNOWN_CONNECTORS.iter().copied())), known = KNOWN_CONNECTORS.join(", "))]
    UnknownConnector(String),
    /// An option no part of the table definition uses (with the known option it is closest
    /// to, if one is close).
    #[error(
        "unknown option '{option}' for connector '{connector}'{}",
        did_you_mean(suggestion)
    )]
    UnknownOption {
        connector: String,
        option: String,
        suggestion: Option<String>,
    },
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

fn did_you_mean(suggestion: &Option<String>) -> String {
    suggestion
        .as_ref()
        .map(|s| format!(" (did you mean '{s}'?)"))
        .unwrap_or_default()
}

/// The wall clock as an event time: nanoseconds since the Unix epoch.
pub(crate) fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or_default()
}

/// Connectors this engine knows.
pub const KNOWN_CONNECTORS: &[&str] = &[
    "impulse",
    "nexmark",
    "single_file",
    "filesystem",
    "stdout",
    "blackhole",
    "sse",
    "websocket",
    "polling_http",
    "webhook",
    "kafka",
];

/// Whether a table is read or written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableKind {
    Source,
    Sink,
}

/// Virtual columns: index in the table schema and expression over the other columns.
pub(crate) type Generated = Vec<(usize, Arc<dyn datafusion::physical_expr::PhysicalExpr>)>;

/// A column filled from what the connector knows of a record (`col TYPE METADATA FROM
/// 'key'`), not from the record's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataColumn {
    /// Its index in the table's schema.
    pub index: usize,
    /// What it holds, as the connector names it (Kafka: `offset_id`, `partition`, `topic`,
    /// `timestamp`, `key`).
    pub key: String,
}

/// A table option that makes a worker use its host beyond the network: read a file, load a
/// library, run a command. The daemon refuses these for pipelines of users other than its
/// own (see [`ConnectorTable::host_access`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostAccess {
    pub table: String,
    /// The option, as written (a `client_configs` entry: `client_configs: <key>`).
    pub option: String,
    pub value: String,
    pub kind: HostAccessKind,
}

/// What a [`HostAccess`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostAccessKind {
    /// A table's local path (`path` of `single_file` and `filesystem`), read or written; its
    /// value is the path made absolute. Checked again when the worker opens it.
    LocalPath,
    ReadsFile,
    LoadsCode,
    RunsCommand,
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
    pub generated: Generated,
    /// Metadata columns (`METADATA FROM`): a source fills them from each record.
    pub metadata: Vec<MetadataColumn>,
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

/// `watermark_field = 'col'` (Arroyo's older spelling of `WATERMARK FOR ... AS col`): the
/// watermark is the largest value of TIMESTAMP column `col` (stored or virtual) seen.
fn watermark_column(
    table: &str,
    schema: &Schema,
    field: &str,
) -> Result<Arc<dyn datafusion::physical_expr::PhysicalExpr>, ConnectorError> {
    let invalid = |reason: String| ConnectorError::InvalidOption {
        option: "watermark_field".into(),
        value: field.to_string(),
        reason,
    };
    let index = schema
        .index_of(field)
        .map_err(|_| invalid(format!("table '{table}' has no column '{field}'")))?;
    let t = schema.field(index).data_type();
    if !matches!(t, datafusion::arrow::datatypes::DataType::Timestamp(..)) {
        return Err(invalid(format!(
            "the watermark must be a TIMESTAMP column, not {t}"
        )));
    }
    Ok(Arc::new(
        datafusion::physical_expr::expressions::Column::new(field, index),
    ))
}

/// Per-connector settings parsed from the table's options.
#[derive(Debug, Clone)]
pub enum ConnectorConfig {
    Impulse(impulse::ImpulseConfig),
    /// The Nexmark benchmark's auction events.
    Nexmark(nexmark::NexmarkConfig),
    Stdout {
        format: sink::LineSinkFormat,
    },
    Blackhole,
    /// A file of lines written by the sink.
    SingleFile {
        path: String,
        format: sink::LineSinkFormat,
    },
    /// The default sink of a bare SELECT: rows go to the embedding process.
    Preview,
    /// A file read from start to end.
    FileSource(file::FileSourceConfig),
    /// Files under a directory or object-store prefix, read to the end.
    FileSystemSource(filesystem::FileSystemSourceConfig),
    /// Part files written under a directory or object-store prefix.
    FileSystemSink(filesystem::FileSystemSinkConfig),
    /// An HTTP source (`sse`, `websocket`, `polling_http`) or the `webhook` sink.
    Http(http::HttpConfig),
    /// A topic of a Kafka-protocol broker, read or written.
    Kafka(kafka::KafkaConfig),
}

/// `type = 'source' | 'sink'`, which `connector` requires.
fn source_or_sink(connector: &str, declared: Option<&str>) -> Result<TableKind, ConnectorError> {
    match declared {
        Some("source") => Ok(TableKind::Source),
        Some("sink") => Ok(TableKind::Sink),
        None => Err(ConnectorError::MissingOption {
            connector: connector.into(),
            option: "type".into(),
        }),
        Some(other) => Err(ConnectorError::InvalidOption {
            option: "type".into(),
            value: other.into(),
            reason: "expected 'source' or 'sink'".into(),
        }),
    }
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
            "filesystem" => match source_or_sink(connector, declared_type.as_deref())? {
                TableKind::Source => (
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
                TableKind::Sink => (
                    ConnectorConfig::FileSystemSink(
                        filesystem::FileSystemSinkConfig::from_options(options)?,
                    ),
                    columns.clone().unwrap_or_else(|| Arc::new(Schema::empty())),
                    TableKind::Sink,
                ),
            },
            "kafka" => {
                let kind = source_or_sink(connector, declared_type.as_deref())?;
                let config = kafka::KafkaConfig::from_options(kind, options, columns.as_ref())?;
                let schema = match (&columns, kind, config.format) {
                    (Some(schema), _, _) => schema.clone(),
                    // raw_string defines its one column.
                    (None, TableKind::Source, lines::LineFormat::Raw) => {
                        Arc::new(Schema::new(vec![datafusion::arrow::datatypes::Field::new(
                            "value",
                            datafusion::arrow::datatypes::DataType::Utf8,
                            true,
                        )]))
                    }
                    (None, TableKind::Source, _) => {
                        return Err(ConnectorError::Usage(
                            "a kafka source needs its columns declared (or format = 'raw_string')"
                                .into(),
                        ));
                    }
                    (None, TableKind::Sink, _) => Arc::new(Schema::empty()),
                };
                (ConnectorConfig::Kafka(config), schema, kind)
            }
            "stdout" | "blackhole" | "single_file" => {
                if connector == "single_file" && declared_type.is_none() {
                    return Err(ConnectorError::MissingOption {
                        connector: connector.into(),
                        option: "type".into(),
                    });
                }
                let schema = columns.clone().unwrap_or_else(|| Arc::new(Schema::empty()));
                let format = match options.take("format").as_deref() {
                    None | Some("json") => sink::LineSinkFormat::Json,
                    Some("debezium_json") if connector != "blackhole" => {
                        sink::LineSinkFormat::Debezium
                    }
                    Some("raw_string") if connector != "blackhole" => {
                        sink::LineSinkFormat::RawString
                    }
                    Some(other) => {
                        return Err(ConnectorError::InvalidOption {
                            option: "format".into(),
                            value: other.into(),
                            reason: "this connector writes 'json', 'debezium_json' or 'raw_string'"
                                .into(),
                        });
                    }
                };
                let config = match connector {
                    "stdout" => ConnectorConfig::Stdout { format },
                    "blackhole" => ConnectorConfig::Blackhole,
                    _ => ConnectorConfig::SingleFile {
                        path: options.require("single_file", "path")?,
                        format,
                    },
                };
                (config, schema, TableKind::Sink)
            }
            "sse" | "websocket" | "polling_http" | "webhook" => {
                let (config, schema, kind) = http::from_options(connector, columns, options)?;
                (ConnectorConfig::Http(config), schema, kind)
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
        if kind == TableKind::Source
            && let Some(field) = options.take("watermark_field")
        {
            event_time.watermark = Some(watermark_column(name, &schema, &field)?);
        }
        if let Some(option) = options.unused().next() {
            return Err(ConnectorError::UnknownOption {
                connector: connector.to_string(),
                option: option.to_string(),
                suggestion: options.suggestion(option),
            });
        }
        Ok(ConnectorTable {
            name: name.to_string(),
            kind,
            schema,
            config,
            event_time,
            generated: Vec::new(),
            metadata: Vec::new(),
        })
    }

    /// Makes `column` a metadata column holding `key` (`column TYPE METADATA FROM 'key'`).
    pub fn add_metadata(&mut self, column: &str, key: &str) -> Result<(), ConnectorError> {
        let usage = |m: String| Err(ConnectorError::Usage(m));
        if !matches!(self.config, ConnectorConfig::Kafka(_)) || self.kind != TableKind::Source {
            return usage(format!(
                "METADATA FROM: table '{}' is not a kafka source; only kafka sources have metadata columns",
                self.name
            ));
        }
        let Ok(index) = self.schema.index_of(column) else {
            return usage(format!(
                "METADATA FROM: table '{}' has no column '{column}'",
                self.name
            ));
        };
        let Some((_, read_as)) = kafka::MetadataField::parse(key) else {
            return usage(format!(
                "unknown metadata '{key}'{} (known: offset_id, partition, topic, timestamp, key)",
                did_you_mean(&options::closest(
                    key,
                    ["offset_id", "partition", "topic", "timestamp", "key"].into_iter()
                ))
            ));
        };
        let wanted = self.schema.field(index).data_type();
        if !datafusion::arrow::compute::can_cast_types(&read_as, wanted) {
            return usage(format!(
                "metadata '{key}' is {read_as} and cannot fill column '{column}' of type {wanted}"
            ));
        }
        self.metadata.push(MetadataColumn {
            index,
            key: key.to_string(),
        });
        Ok(())
    }

    /// The options of this table that make a worker read a file, load code or run a command
    /// on its host. Planning refuses none of them: the daemon's access policy decides, per
    /// caller, with this list (today only Kafka's `client_configs` entries, such as
    /// `ssl.key.location` or `plugin.library.paths`).
    pub fn host_access(&self) -> Vec<HostAccess> {
        let path = |path: Option<std::path::PathBuf>| {
            path.map(|p| HostAccess {
                table: self.name.clone(),
                option: "path".to_string(),
                value: p.display().to_string(),
                kind: HostAccessKind::LocalPath,
            })
            .into_iter()
            .collect()
        };
        let absolute = |p: &str| Some(crate::storage::access::lexical_absolute(p.as_ref()));
        match &self.config {
            ConnectorConfig::Kafka(config) => kafka::host_access(&self.name, &config.connection),
            ConnectorConfig::SingleFile { path: p, .. } => path(absolute(p)),
            ConnectorConfig::FileSource(c) => path(absolute(c.path())),
            ConnectorConfig::FileSystemSource(c) => path(c.location().local_dir()),
            ConnectorConfig::FileSystemSink(c) => path(c.location().local_dir()),
            _ => Vec::new(),
        }
    }

    /// True for a source of changes (retractions and inserts), such as a Debezium source.
    pub fn updating(&self) -> bool {
        match &self.config {
            ConnectorConfig::FileSource(c) => c.updating(),
            ConnectorConfig::Kafka(c) => c.updating(),
            _ => false,
        }
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
            metadata: Vec::new(),
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
            ConnectorConfig::Kafka(config) if self.kind == TableKind::Source => Ok(Arc::new(
                kafka::KafkaSourceFactory::new(config, self, projection)?,
            )),
            ConnectorConfig::Http(config) => config.source_factory(self, projection),
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

    /// A factory for the sink's subtasks; `updating` when its input is an updating result,
    /// `input` the columns written (without the hidden ones).
    pub fn sink_factory(
        &self,
        updating: bool,
        input: &Schema,
    ) -> Result<Arc<dyn OperatorFactory>, ConnectorError> {
        if self.kind != TableKind::Sink {
            return Err(ConnectorError::Usage(format!(
                "table '{}' is a source and cannot be written to",
                self.name
            )));
        }
        if let ConnectorConfig::FileSystemSink(config) = &self.config {
            return Ok(Arc::new(filesystem::FileSystemSinkFactory::new(
                self, config, updating, input,
            )?));
        }
        if let ConnectorConfig::Http(config) = &self.config {
            return config.sink_factory(self, updating);
        }
        if let ConnectorConfig::Kafka(config) = &self.config {
            return Ok(Arc::new(kafka::KafkaSinkFactory::new(
                self, config, updating,
            )?));
        }
        let format = match &self.config {
            ConnectorConfig::SingleFile { format, .. } | ConnectorConfig::Stdout { format } => {
                *format
            }
            ConnectorConfig::Preview if updating => sink::LineSinkFormat::Debezium,
            _ => sink::LineSinkFormat::Json,
        };
        if updating
            && format != sink::LineSinkFormat::Debezium
            && !matches!(self.config, ConnectorConfig::Blackhole)
        {
            return Err(ConnectorError::Usage(format!(
                "'{}' receives updating results (an aggregate without a window): its format must be 'debezium_json'",
                self.name
            )));
        }
        let encoding = sink::Encoding::of(format, &self.name, input)?;
        Ok(Arc::new(sink::SinkFactory::new(self, updating, encoding)))
    }
}
