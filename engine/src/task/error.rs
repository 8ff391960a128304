//! The error a subtask fails with, and whose fault an error is.
//!
//! Every error of the engine answers [`ErrorKind`]: the user's (a bad record, a bad option, a
//! store that cannot be reached), a newer run that took over, or a bug. Connectors, which sit
//! above this floor, bring their own error types into a [`TaskError`] through the [`Fault`]
//! trait; the daemon maps the kind to a gRPC code.

use std::fmt;

use datafusion::arrow::error::ArrowError;
use datafusion::error::DataFusionError;

/// Whose fault an error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The user's to fix; the message says what and where.
    User(UserFault),
    /// A newer run of the same pipeline took over: this run must end. No one's fault.
    Superseded,
    /// A broken invariant: a bug in arroyod.
    Internal,
}

/// What the user has to fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserFault {
    /// A record the query cannot take: bad data in a file, a value an expression refuses.
    BadRecord,
    /// A table or connector option that cannot work, found once the run starts.
    BadOption,
    /// A store or file that cannot be reached, read or written, or that holds something
    /// else than expected (a checkpoint of another query, a file cut short).
    Storage,
}

/// An error that knows whose fault it is: what a connector's errors implement to travel in a
/// [`TaskError`].
pub trait Fault: std::error::Error + Send + Sync + 'static {
    fn kind(&self) -> ErrorKind;
}

/// A connector's error inside a [`TaskError`]: its message and causes, and its kind.
#[derive(Debug)]
pub struct ConnectorFailure(Box<dyn Fault>);

impl ConnectorFailure {
    pub fn kind(&self) -> ErrorKind {
        self.0.kind()
    }

    /// The connector's own error, to downcast.
    pub fn inner(&self) -> &(dyn std::error::Error + 'static) {
        &*self.0
    }
}

impl fmt::Display for ConnectorFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for ConnectorFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// Errors a subtask fails with.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// Evaluating an expression failed on a batch.
    #[error("{node}: evaluating an expression failed")]
    Expression {
        node: String,
        #[source]
        source: DataFusionError,
    },
    /// Arrow refused a batch the task built (columns that do not fit their schema).
    #[error("{node}: building a batch failed")]
    Batch {
        node: String,
        #[source]
        source: ArrowError,
    },
    /// The task could not be set up (a row format, an aggregate's state layout).
    #[error("{node}: setting up")]
    Setup {
        node: String,
        #[source]
        source: DataFusionError,
    },
    /// The task's state could not be snapshotted or restored.
    #[error(transparent)]
    State(#[from] StateError),
    /// A connector failed; its error says what, where and whose fault.
    #[error("{node}")]
    Connector {
        node: String,
        #[source]
        source: ConnectorFailure,
    },
    /// The operator's state would grow past what the pipeline's memory limit leaves for
    /// state (the run's memory pool refused to grow its reservation).
    #[error(
        "{node}: the pipeline went over its memory limit of {}: its operators' state may hold {} of it, and would grow past that (this subtask's to {}); raise it with `arroyoctl update --memory-limit`, or hold less state (fewer keys, a shorter updating_ttl, smaller windows)",
        size(*limit), size(*state), size(*wanted)
    )]
    MemoryLimit {
        node: String,
        /// The pipeline's memory limit, in bytes.
        limit: u64,
        /// The part of it the operators' state may hold.
        state: u64,
        /// What this subtask's state would hold.
        wanted: u64,
        #[source]
        source: DataFusionError,
    },
    /// A downstream subtask went away while this one still had data for it.
    #[error("channel closed")]
    ChannelClosed,
}

impl TaskError {
    /// Wraps a failed evaluation in node `node`: `.map_err(TaskError::expression(&label))`.
    pub fn expression(node: &str) -> impl FnOnce(DataFusionError) -> TaskError + use<> {
        let node = node.to_string();
        move |source| TaskError::Expression { node, source }
    }

    /// Wraps a batch Arrow refused in node `node`: `.map_err(TaskError::batch(&label))`.
    pub fn batch(node: &str) -> impl FnOnce(ArrowError) -> TaskError + use<> {
        let node = node.to_string();
        move |source| TaskError::Batch { node, source }
    }

    /// Wraps a failed setup of node `node`.
    pub fn setup(node: &str) -> impl FnOnce(DataFusionError) -> TaskError + use<> {
        let node = node.to_string();
        move |source| TaskError::Setup { node, source }
    }

    /// A connector's error in node `node`.
    pub fn connector(node: &str, source: impl Fault) -> TaskError {
        TaskError::Connector {
            node: node.to_string(),
            source: ConnectorFailure(Box::new(source)),
        }
    }

    /// Whose fault it is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            TaskError::Expression { source, .. } => datafusion_kind(source),
            TaskError::Connector { source, .. } => source.kind(),
            // The limit is the user's setting: too low for the state the query holds.
            TaskError::MemoryLimit { .. } => ErrorKind::User(UserFault::BadOption),
            TaskError::Batch { .. }
            | TaskError::Setup { .. }
            | TaskError::State(_)
            | TaskError::ChannelClosed => ErrorKind::Internal,
        }
    }
}

/// A size in bytes as `64 MiB` or `1.5 GiB`.
fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Whose fault a DataFusion error on a batch is: an internal error is a bug; anything else
/// (a cast, an overflow, a division by zero) comes from the values of a record.
pub fn datafusion_kind(e: &DataFusionError) -> ErrorKind {
    match e.find_root() {
        DataFusionError::Internal(_) => ErrorKind::Internal,
        _ => ErrorKind::User(UserFault::BadRecord),
    }
}

/// Errors of a task's state, as a snapshot writes it and a restore reads it back.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A JSON document of a state table could not be written or read.
    #[error("state table '{table}' as JSON")]
    Json {
        table: String,
        #[source]
        source: serde_json::Error,
    },
    /// A state table could not be written as, or read from, Arrow IPC.
    #[error("state table '{table}' as Arrow IPC")]
    Ipc {
        table: String,
        #[source]
        source: ArrowError,
    },
    /// A state table does not have the columns its snapshot wrote.
    #[error("state table '{table}' has unexpected columns")]
    Layout { table: String },
    /// A state table's rows could not be split among the new subtasks.
    #[error("re-partitioning state table '{table}'")]
    Repartition {
        table: String,
        #[source]
        source: DataFusionError,
    },
    /// An operator could not turn its state into tables, or tables back into its state.
    #[error("{node}: state table '{table}'")]
    Operator {
        node: String,
        table: String,
        #[source]
        source: DataFusionError,
    },
}

impl StateError {
    /// Wraps an operator's failure to snapshot or restore state table `table` of node `node`.
    pub fn operator(node: &str, table: &str) -> impl FnOnce(DataFusionError) -> TaskError + use<> {
        let (node, table) = (node.to_string(), table.to_string());
        move |source| {
            TaskError::State(StateError::Operator {
                node,
                table,
                source,
            })
        }
    }
}

/// `error: cause: cause` in one line, for messages that must say where and why.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        // Some errors print their source themselves (DataFusion's "Arrow error: {e}"): it
        // is not said twice.
        let text = cause.to_string();
        if !s.ends_with(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = cause.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("reading {0}")]
    struct Unreadable(String, #[source] std::io::Error);

    impl Fault for Unreadable {
        fn kind(&self) -> ErrorKind {
            ErrorKind::User(UserFault::Storage)
        }
    }

    #[test]
    fn a_connector_error_keeps_its_kind_and_its_chain() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = TaskError::connector("source:t", Unreadable("/in.json".into(), io));
        assert_eq!(e.kind(), ErrorKind::User(UserFault::Storage));
        assert_eq!(error_chain(&e), "source:t: reading /in.json: no such file");
        let e = TaskError::expression("t")(DataFusionError::Execution("division by zero".into()));
        assert_eq!(e.kind(), ErrorKind::User(UserFault::BadRecord));
        let e = TaskError::expression("t")(DataFusionError::Internal("oops".into()));
        assert_eq!(e.kind(), ErrorKind::Internal);
        assert_eq!(TaskError::ChannelClosed.kind(), ErrorKind::Internal);
    }

    #[test]
    fn a_cause_its_wrapper_already_printed_is_not_repeated() {
        let arrow = datafusion::arrow::error::ArrowError::DivideByZero;
        let e = TaskError::expression("t")(DataFusionError::ArrowError(Box::new(arrow), None));
        assert_eq!(
            error_chain(&e),
            "t: evaluating an expression failed: Arrow error: Divide by zero error"
        );
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(size(512), "512 B");
        assert_eq!(size(64 << 20), "64 MiB");
        assert_eq!(size(3 << 29), "1.5 GiB");
    }
}
