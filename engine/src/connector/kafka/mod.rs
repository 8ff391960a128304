//! `kafka`: a topic of a Kafka-protocol broker as a source or a sink, through librdkafka (the
//! `rdkafka` crate, which builds its own librdkafka).
//!
//! Planning parses and checks the options ([`KafkaConfig`], named as Arroyo names them);
//! nothing talks to the broker before the run starts. At start every client checks, within
//! `startup_timeout` (60 s), that the broker answers and the topic exists, and fails naming
//! both; once running, librdkafka reconnects by itself and errors are warnings.
//!
//! Source ([`source`]): one consumer per subtask that is *assigned* its partitions (partition
//! `i` on subtask `i % parallelism`), never subscribed: a group join stalls for many seconds on
//! some brokers, and after every crash. The next offset of every partition is the checkpoint
//! state: a restore, at any parallelism, resumes each partition exactly there; a partition the
//! checkpoint does not know (added since) starts at its beginning. When a checkpoint completes,
//! its offsets are committed to the consumer group (as Arroyo does; `source.offset = 'group'`
//! starts from them). The watermark is kept per partition; a subtask's is the lowest of its
//! partitions that are not idle (no record for `idle_micros`).
//!
//! Sink ([`sink`]): `at_least_once` (every record sent before a barrier is delivered before
//! the barrier passes) or `exactly_once`, one transaction per checkpoint:
//!
//! 1. Sink subtask `s` of node `n` in pipeline `p` has the stable `transactional.id`
//!    `arroyod-{p}-{n}-{s}`; `init_transactions` at start aborts whatever a previous run of
//!    that subtask left open (a zombie can never commit afterwards).
//! 2. Records go into the open transaction as they come. At a barrier the sink waits until
//!    they are delivered and puts every record not yet committed in its checkpoint state;
//!    records that arrive before that checkpoint completes are held back.
//! 3. When checkpoint `E` completes, the transaction gets an *epoch marker*: offset `E + 1`
//!    for partition 0 of the topic in the consumer group `arroyod-{p}-{n}-{s}-sink`, sent with
//!    `send_offsets_to_transaction`, so it commits with the records or not at all. Then the
//!    transaction commits, and the held-back records start the next one.
//! 4. A restore from checkpoint `R` first runs `init_transactions` for every subtask id of the
//!    old parallelism this subtask inherits (`old % parallelism == s`), then reads each one's
//!    marker: below `R + 1`, the records in its state were never committed (the crash came
//!    after the MANIFEST and before the commit), and are sent again in a new transaction
//!    with marker `R + 1`; otherwise they are dropped. The broker's marker, not the topic's
//!    contents, decides, so brokers that show aborted records to `read_committed` readers do
//!    not fool it.
//!
//! Never: subscribe to a topic; block the runtime (librdkafka's blocking calls run on
//! tokio's blocking pool); put a password in a log line or a `Debug` output.
//!
//! Options that make librdkafka read files or load code ([`host_access`]) are listed so the
//! daemon can refuse them for pipelines of other users.

mod client;
mod decode;
mod sink;
mod source;

pub use decode::MetadataField;
pub use sink::KafkaSinkFactory;
pub use source::KafkaSourceFactory;

use std::time::Duration;

use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::error::ArrowError;
use datafusion::error::DataFusionError;

use super::lines::{BadData, LineFormat, take_bad_data};
use super::{ConnectorError, HostAccess, HostAccessKind, Options, RunError, TableKind};
use crate::task::{ErrorKind, Fault, UserFault, datafusion_kind};

/// Errors of the Kafka connector at run time.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    /// The broker did not answer within the start-up deadline.
    #[error("broker {broker} unreachable for {waited:.1?} (topic '{topic}'): {reason}")]
    Unreachable {
        broker: String,
        topic: String,
        waited: Duration,
        reason: String,
    },
    /// The broker refused the client's credentials.
    #[error("authentication with broker {broker} failed (topic '{topic}'): {reason}")]
    Authentication {
        broker: String,
        topic: String,
        reason: String,
    },
    /// The topic does not exist.
    #[error("topic '{topic}' does not exist on broker {broker}")]
    MissingTopic { broker: String, topic: String },
    /// librdkafka refused the client's settings.
    #[error("creating a client for broker {broker}")]
    Client {
        broker: String,
        #[source]
        source: Box<rdkafka::error::KafkaError>,
    },
    /// A call to the broker failed.
    #[error("{what} (broker {broker}, topic '{topic}')")]
    Broker {
        what: String,
        broker: String,
        topic: String,
        #[source]
        source: Box<rdkafka::error::KafkaError>,
    },
    /// A record could not be delivered.
    #[error("delivering to topic '{topic}' on broker {broker}: {reason}")]
    Delivery {
        broker: String,
        topic: String,
        reason: String,
    },
    /// A record of the topic is not what the table declares (`bad_data = 'fail'`).
    #[error("bad data in topic '{topic}' partition {partition} offset {offset}")]
    BadRecord {
        topic: String,
        partition: i32,
        offset: i64,
        #[source]
        source: ArrowError,
    },
    /// `sink.key_field` or `sink.timestamp_field` names a column the rows do not have.
    #[error("{option} names '{column}', which the rows written to topic '{topic}' do not have")]
    Column {
        option: &'static str,
        column: String,
        topic: String,
    },
    /// Computing a virtual column or a watermark failed.
    #[error("computing {what}")]
    Expression {
        what: String,
        #[source]
        source: DataFusionError,
    },
    /// Building a batch of rows or records failed.
    #[error("building {what}")]
    Arrow {
        what: &'static str,
        #[source]
        source: ArrowError,
    },
    /// Rows could not be encoded in the sink's format.
    #[error(transparent)]
    Encode(#[from] RunError),
    /// The consumer of a sink's marker group has no group metadata (librdkafka gives it to
    /// every consumer with a `group.id`).
    #[error("a sink's marker consumer has no group metadata")]
    NoGroupMetadata,
    /// The run stopped while a client was starting.
    #[error("start-up abandoned")]
    Abandoned,
    /// A blocking call to librdkafka panicked or was cancelled.
    #[error("a blocking call to librdkafka did not finish")]
    Blocking(#[source] tokio::task::JoinError),
}

impl KafkaError {
    /// Wraps an Arrow error in building `what`: `.map_err(KafkaError::arrow("the rows"))`.
    pub(super) fn arrow(what: &'static str) -> impl Fn(ArrowError) -> KafkaError + Copy {
        move |source| KafkaError::Arrow { what, source }
    }
}

impl Fault for KafkaError {
    fn kind(&self) -> ErrorKind {
        match self {
            // A broker is the store this connector reaches.
            KafkaError::Unreachable { .. }
            | KafkaError::MissingTopic { .. }
            | KafkaError::Broker { .. }
            | KafkaError::Delivery { .. } => ErrorKind::User(UserFault::Storage),
            KafkaError::Authentication { .. }
            | KafkaError::Client { .. }
            | KafkaError::Column { .. } => ErrorKind::User(UserFault::BadOption),
            KafkaError::BadRecord { .. } => ErrorKind::User(UserFault::BadRecord),
            KafkaError::Expression { source, .. } => datafusion_kind(source),
            KafkaError::Encode(e) => e.kind(),
            KafkaError::Arrow { .. }
            | KafkaError::NoGroupMetadata
            | KafkaError::Abandoned
            | KafkaError::Blocking(_) => ErrorKind::Internal,
        }
    }
}

/// Where a source starts when no checkpoint says where (`source.offset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartOffset {
    Earliest,
    Latest,
    /// The consumer group's committed offsets (`auto.offset.reset` where it has none).
    Group,
}

/// How a table reaches its broker.
#[derive(Clone)]
pub struct Connection {
    /// `host:port[,host:port...]`.
    pub bootstrap: String,
    /// librdkafka settings from `auth.*`, then `client_configs` (which win), in order.
    pub settings: Vec<(String, String)>,
    /// How long a client may take at start to reach the broker and find the topic.
    pub startup_timeout: Duration,
}

impl std::fmt::Debug for Connection {
    // Values may be secrets: keys only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("bootstrap", &self.bootstrap)
            .field(
                "settings",
                &self.settings.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("startup_timeout", &self.startup_timeout)
            .finish()
    }
}

/// What a source table reads.
#[derive(Debug, Clone)]
pub struct SourceOptions {
    pub offset: StartOffset,
    /// `source.group_id`.
    pub group_id: Option<String>,
    /// `source.group_id_prefix`.
    pub group_id_prefix: Option<String>,
    /// `source.read_mode = 'read_committed'`.
    pub read_committed: bool,
    /// A partition without a record for this long no longer holds the watermark back (None:
    /// never).
    pub idle: Option<Duration>,
}

/// How a sink table writes.
#[derive(Debug, Clone)]
pub struct SinkOptions {
    /// `sink.commit_mode = 'exactly_once'`.
    pub exactly_once: bool,
    /// `sink.key_field`: the column whose text is each record's key.
    pub key_field: Option<String>,
    /// `sink.timestamp_field`: the column whose time is each record's timestamp (default:
    /// the row's event time).
    pub timestamp_field: Option<String>,
}

/// Source or sink options.
#[derive(Debug, Clone)]
pub enum Role {
    Source(SourceOptions),
    Sink(SinkOptions),
}

/// A Kafka table's options.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    pub connection: Connection,
    pub topic: String,
    pub format: LineFormat,
    pub bad_data: BadData,
    pub role: Role,
}

/// How long a client may take at start by default (`startup_timeout`).
const DEFAULT_STARTUP: Duration = Duration::from_secs(60);

/// Settings that make librdkafka read a file, load a library or run a command.
const HOST_SETTINGS: &[(&str, HostAccessKind)] = &[
    ("plugin.library.paths", HostAccessKind::LoadsCode),
    ("ssl.engine.location", HostAccessKind::LoadsCode),
    ("ssl.providers", HostAccessKind::LoadsCode),
    ("sasl.kerberos.kinit.cmd", HostAccessKind::RunsCommand),
    ("ssl.key.location", HostAccessKind::ReadsFile),
    ("ssl.certificate.location", HostAccessKind::ReadsFile),
    ("ssl.ca.location", HostAccessKind::ReadsFile),
    ("ssl.crl.location", HostAccessKind::ReadsFile),
    ("ssl.keystore.location", HostAccessKind::ReadsFile),
    ("ssl.ca.directory", HostAccessKind::ReadsFile),
    ("sasl.kerberos.keytab", HostAccessKind::ReadsFile),
    (
        "sasl.oauthbearer.assertion.private.key.file",
        HostAccessKind::ReadsFile,
    ),
    (
        "sasl.oauthbearer.assertion.jwt.template.file",
        HostAccessKind::ReadsFile,
    ),
    ("https.ca.location", HostAccessKind::ReadsFile),
];

/// The librdkafka settings (`client_configs` keys, lower case) that read a file, load code or
/// run a command on the worker's host, and what each does: for an access policy that refuses
/// them before a query is planned.
pub fn host_settings() -> &'static [(&'static str, HostAccessKind)] {
    HOST_SETTINGS
}

/// The librdkafka settings of `connection` that read files, load code or run commands on the
/// worker's host, as `client_configs` entries. The daemon refuses them for a pipeline of a
/// user other than its own (`client_configs` is the only way to set them).
pub fn host_access(table: &str, connection: &Connection) -> Vec<HostAccess> {
    connection
        .settings
        .iter()
        .filter_map(|(key, value)| {
            let key = key.trim().to_ascii_lowercase();
            HOST_SETTINGS
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, kind)| HostAccess {
                    table: table.to_string(),
                    option: format!("client_configs: {key}"),
                    value: value.clone(),
                    kind: *kind,
                })
        })
        .collect()
}

fn invalid(option: &str, value: &str, reason: impl Into<String>) -> ConnectorError {
    ConnectorError::InvalidOption {
        option: option.into(),
        value: value.into(),
        reason: reason.into(),
    }
}

/// Takes an option that must be one of `choices`.
fn take_choice<'a>(
    options: &mut Options,
    key: &str,
    choices: &[&'a str],
) -> Result<Option<&'a str>, ConnectorError> {
    let Some(value) = options.take(key) else {
        return Ok(None);
    };
    choices
        .iter()
        .find(|c| c.eq_ignore_ascii_case(value.trim()))
        .copied()
        .map(Some)
        .ok_or_else(|| {
            let list: Vec<String> = choices.iter().map(|c| format!("'{c}'")).collect();
            invalid(key, &value, format!("expected {}", list.join(" or ")))
        })
}

/// `client_configs = 'k1=v1,k2=v2'`.
fn parse_client_configs(text: &str) -> Result<Vec<(String, String)>, ConnectorError> {
    text.split(',')
        .filter(|entry| !entry.trim().is_empty())
        .map(|entry| {
            entry
                .split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .filter(|(k, _)| !k.is_empty())
                // The entry alone: the others may hold secrets.
                .ok_or_else(|| invalid("client_configs", entry.trim(), "not key=value"))
        })
        .collect()
}

/// `host:port[,host:port...]`.
fn check_bootstrap(text: &str) -> Result<String, ConnectorError> {
    let ok = !text.trim().is_empty()
        && text.split(',').all(|server| {
            server.trim().rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty()
                    && host
                        .chars()
                        .all(|c| c.is_alphanumeric() || "._-[]:".contains(c))
                    && port.parse::<u16>().is_ok()
            })
        });
    if ok {
        Ok(text.trim().to_string())
    } else {
        Err(invalid(
            "bootstrap_servers",
            text,
            "expected host:port[,host:port...]",
        ))
    }
}

/// Takes `auth.type` and its options: librdkafka settings.
fn take_auth(options: &mut Options) -> Result<Vec<(String, String)>, ConnectorError> {
    match take_choice(options, "auth.type", &["none", "sasl"])? {
        None | Some("none") => Ok(vec![]),
        _ => {
            let mut require = |key: &str| options.require("kafka", key);
            Ok(vec![
                ("sasl.mechanism".into(), require("auth.mechanism")?),
                ("security.protocol".into(), require("auth.protocol")?),
                ("sasl.username".into(), require("auth.username")?),
                ("sasl.password".into(), require("auth.password")?),
            ])
        }
    }
}

impl KafkaConfig {
    /// Parses a table's options; `schema` is its declared columns (None: none declared).
    pub fn from_options(
        kind: TableKind,
        options: &mut Options,
        schema: Option<&SchemaRef>,
    ) -> Result<KafkaConfig, ConnectorError> {
        let bootstrap = check_bootstrap(&options.require("kafka", "bootstrap_servers")?)?;
        let topic = options.require("kafka", "topic")?;
        if topic.trim().is_empty() {
            return Err(invalid("topic", &topic, "a topic name is needed"));
        }
        let unstructured = options
            .take_parsed::<bool>("json.unstructured")?
            .unwrap_or(false);
        let format = match options.require("kafka", "format")?.as_str() {
            "json" if unstructured => LineFormat::Raw,
            "json" => LineFormat::Json,
            "raw_string" => LineFormat::Raw,
            "debezium_json" => LineFormat::Debezium,
            other => {
                return Err(invalid(
                    "format",
                    other,
                    "the kafka connector reads and writes 'json', 'debezium_json' or 'raw_string'",
                ));
            }
        };
        if format == LineFormat::Raw
            && let Some(schema) = schema
            && (schema.fields().len() != 1 || schema.field(0).data_type() != &DataType::Utf8)
        {
            return Err(ConnectorError::Usage(
                "a raw_string or json.unstructured kafka table has exactly one text column (value TEXT)"
                    .into(),
            ));
        }
        let bad_data = take_bad_data(options)?;
        let mut settings = take_auth(options)?;
        if let Some(text) = options.take("client_configs") {
            settings.extend(parse_client_configs(&text)?);
        }
        let startup_timeout = options
            .take_duration("startup_timeout")?
            .unwrap_or(DEFAULT_STARTUP);
        let connection = Connection {
            bootstrap,
            settings,
            startup_timeout,
        };
        // Options of the other role are named as such rather than as unknown.
        let (own, other) = match kind {
            TableKind::Source => ("source.", "sink."),
            TableKind::Sink => ("sink.", "source."),
        };
        for key in [
            "source.offset",
            "source.read_mode",
            "source.group_id",
            "source.group_id_prefix",
            "sink.commit_mode",
            "sink.key_field",
            "sink.timestamp_field",
        ] {
            if key.starts_with(other)
                && let Some(value) = options.take(key)
            {
                return Err(invalid(
                    key,
                    &value,
                    format!(
                        "only a {} table takes '{other}*' options; this one is a {}",
                        other.trim_end_matches('.'),
                        own.trim_end_matches('.')
                    ),
                ));
            }
        }
        let role = match kind {
            TableKind::Source => {
                let offset = match take_choice(
                    options,
                    "source.offset",
                    &["earliest", "latest", "group"],
                )? {
                    Some("earliest") => StartOffset::Earliest,
                    Some("group") => StartOffset::Group,
                    _ => StartOffset::Latest,
                };
                let read_committed = take_choice(
                    options,
                    "source.read_mode",
                    &["read_committed", "read_uncommitted"],
                )? == Some("read_committed");
                let idle = options.take_idle()?;
                Role::Source(SourceOptions {
                    offset,
                    group_id: options.take("source.group_id"),
                    group_id_prefix: options.take("source.group_id_prefix"),
                    read_committed,
                    idle,
                })
            }
            TableKind::Sink => {
                let exactly_once = take_choice(
                    options,
                    "sink.commit_mode",
                    &["at_least_once", "exactly_once"],
                )? == Some("exactly_once");
                let key_field = options.take("sink.key_field");
                let timestamp_field = options.take("sink.timestamp_field");
                if let Some(schema) = schema.filter(|s| !s.fields().is_empty()) {
                    for (option, field) in [
                        ("sink.key_field", &key_field),
                        ("sink.timestamp_field", &timestamp_field),
                    ] {
                        if let Some(field) = field
                            && schema.index_of(field).is_err()
                        {
                            return Err(invalid(option, field, "the table has no such column"));
                        }
                    }
                }
                Role::Sink(SinkOptions {
                    exactly_once,
                    key_field,
                    timestamp_field,
                })
            }
        };
        Ok(KafkaConfig {
            connection,
            topic: topic.trim().to_string(),
            format,
            bad_data,
            role,
        })
    }

    /// True for a source of Debezium changes.
    pub fn updating(&self) -> bool {
        matches!(self.role, Role::Source(_)) && self.format == LineFormat::Debezium
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(kind: TableKind, entries: &[(&str, &str)]) -> Result<KafkaConfig, ConnectorError> {
        let mut options = Options::new(
            entries
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        let config = KafkaConfig::from_options(kind, &mut options, None)?;
        if let Some(unused) = options.unused().next() {
            panic!("option {unused} was not taken");
        }
        Ok(config)
    }

    const BASE: [(&str, &str); 3] = [
        ("bootstrap_servers", "localhost:9092"),
        ("topic", "t"),
        ("format", "json"),
    ];

    #[test]
    fn source_options_follow_arroyo() {
        let mut entries = BASE.to_vec();
        entries.extend([
            ("source.offset", "group"),
            ("source.read_mode", "read_committed"),
            ("source.group_id", "g"),
            (
                "client_configs",
                "fetch.wait.max.ms=50, ssl.ca.location=/etc/ca.pem",
            ),
            ("idle_micros", "2000000"),
            ("auth.type", "sasl"),
            ("auth.mechanism", "SCRAM-SHA-256"),
            ("auth.protocol", "SASL_PLAINTEXT"),
            ("auth.username", "u"),
            ("auth.password", "secret"),
        ]);
        let c = parse(TableKind::Source, &entries).unwrap();
        let Role::Source(s) = &c.role else {
            panic!("a source")
        };
        assert_eq!(s.offset, StartOffset::Group);
        assert!(s.read_committed);
        assert_eq!(s.idle, Some(Duration::from_secs(2)));
        assert_eq!(c.connection.settings.len(), 6);
        assert_eq!(c.connection.settings[4].0, "fetch.wait.max.ms");
        assert!(!format!("{c:?}").contains("secret"), "{c:?}");
        let access = host_access("t", &c.connection);
        assert_eq!(access.len(), 1);
        assert_eq!(access[0].kind, HostAccessKind::ReadsFile);
        assert_eq!(access[0].value, "/etc/ca.pem");
    }

    #[test]
    fn defaults_and_idle_alias() {
        let c = parse(TableKind::Source, &BASE).unwrap();
        let Role::Source(s) = &c.role else {
            panic!("a source")
        };
        assert_eq!(s.offset, StartOffset::Latest);
        assert_eq!(s.idle, Some(crate::connector::options::DEFAULT_IDLE));
        let mut entries = BASE.to_vec();
        entries.push(("idle_time", "0"));
        let c = parse(TableKind::Source, &entries).unwrap();
        assert!(matches!(
            c.role,
            Role::Source(SourceOptions { idle: None, .. })
        ));
    }

    #[test]
    fn bad_values_name_the_option() {
        for (key, value, wanted) in [
            ("bootstrap_servers", "localhost", "host:port"),
            (
                "source.offset",
                "beginning",
                "'earliest' or 'latest' or 'group'",
            ),
            ("client_configs", "sasl.password=pw,b", "not key=value"),
            ("sink.commit_mode", "exactly_once", "only a sink table"),
            ("format", "avro", "'json', 'debezium_json' or 'raw_string'"),
        ] {
            let mut entries: Vec<(&str, &str)> =
                BASE.iter().copied().filter(|(k, _)| *k != key).collect();
            entries.push((key, value));
            match parse(TableKind::Source, &entries) {
                Err(ConnectorError::InvalidOption {
                    option,
                    reason,
                    value: shown,
                }) => {
                    assert_eq!(option, key);
                    assert!(reason.contains(wanted), "{reason}");
                    // A client_configs error shows the bad entry, not the others' values.
                    assert!(!shown.contains("pw"), "{shown}");
                }
                other => panic!("{key}: {other:?}"),
            }
        }
        let mut entries = BASE.to_vec();
        entries.extend([("auth.type", "sasl"), ("auth.mechanism", "PLAIN")]);
        assert!(matches!(
            parse(TableKind::Source, &entries),
            Err(ConnectorError::MissingOption { option, .. }) if option == "auth.protocol"
        ));
    }
}
