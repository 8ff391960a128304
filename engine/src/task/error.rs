//! The error a subtask fails with.

/// Errors that end a run.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// A connector failed: bad input data, an unreachable file, a failed write.
    #[error("{node}: {message}")]
    Connector { node: String, message: String },
    /// Evaluating an expression failed on a batch.
    #[error("{node}: evaluating an expression failed")]
    Expression {
        node: String,
        #[source]
        source: datafusion::error::DataFusionError,
    },
    /// Setting up the dataflow failed.
    #[error("{0}")]
    Setup(String),
    /// A subtask panicked: a bug.
    #[error("subtask {0} panicked")]
    Panic(String),
    /// A downstream subtask went away while this one still had data for it.
    #[error("channel closed")]
    ChannelClosed,
    /// Taking, writing or restoring a checkpoint failed.
    #[error("checkpoint: {0}")]
    State(String),
}

impl TaskError {
    /// Wraps a failed evaluation in node `node`: `.map_err(TaskError::expression(&label))`.
    pub fn expression(
        node: &str,
    ) -> impl FnOnce(datafusion::error::DataFusionError) -> TaskError + use<> {
        let node = node.to_string();
        move |source| TaskError::Expression { node, source }
    }
}

/// `error: cause: cause` in one line, for messages that must say where and why.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}
