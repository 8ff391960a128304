//! The error a run ends with, and whose fault it is.

use crate::storage::StorageError;
use crate::task::{ErrorKind, StateError, TaskError, UserFault};

/// Errors that end a run (or keep it from starting).
#[derive(Debug, thiserror::Error)]
pub enum DataflowError {
    /// A subtask failed.
    #[error(transparent)]
    Task(#[from] TaskError),
    /// A subtask panicked: a bug.
    #[error("subtask {0} panicked")]
    Panic(String),
    /// Checkpoint storage failed: finding the checkpoint to restore, reading it, writing one.
    #[error("{what}")]
    Checkpoint {
        what: String,
        #[source]
        source: StorageError,
    },
    /// The checkpoint to restore was not taken of this dataflow.
    #[error("checkpoint {epoch} under {location} {reason}")]
    Incompatible {
        epoch: u64,
        location: String,
        reason: String,
    },
    /// The newest complete checkpoint is older than one the embedding process knows completed:
    /// starting from it would repeat or lose what sinks committed since.
    #[error(
        "checkpoint {expected} completed (the metadata says so), but {location} holds {held}: refusing to start over. Was the state moved or deleted?"
    )]
    Missing {
        expected: u64,
        location: String,
        /// What there is instead (`no complete checkpoint`, `only checkpoints up to 7`).
        held: String,
    },
    /// A checkpoint's topology could not be written or read back.
    #[error("checkpoint {epoch}: its topology")]
    Topology {
        epoch: u64,
        #[source]
        source: serde_json::Error,
    },
    /// The state of a checkpoint could not be encoded or decoded.
    #[error("checkpoint {epoch}")]
    State {
        epoch: u64,
        #[source]
        source: StateError,
    },
    /// A newer run of the pipeline exists: this one may not commit, and ends.
    #[error("checkpoint {epoch} may not be committed: a newer run of this pipeline exists")]
    Fenced { epoch: u64 },
}

impl DataflowError {
    /// Whose fault it is: what the daemon maps to a gRPC code.
    pub fn kind(&self) -> ErrorKind {
        match self {
            DataflowError::Task(e) => e.kind(),
            DataflowError::Checkpoint { source, .. } => source.kind(),
            DataflowError::Incompatible { .. } | DataflowError::Missing { .. } => {
                ErrorKind::User(UserFault::Storage)
            }
            DataflowError::Fenced { .. } => ErrorKind::Superseded,
            DataflowError::Panic(_)
            | DataflowError::Topology { .. }
            | DataflowError::State { .. } => ErrorKind::Internal,
        }
    }
}
