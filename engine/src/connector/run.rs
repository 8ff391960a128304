//! What a connector fails with while it runs (its definition was checked at planning), and
//! whose fault that is.

use datafusion::arrow::error::ArrowError;
use datafusion::error::DataFusionError;
use datafusion::parquet::errors::ParquetError;

use crate::storage::StorageError;
use crate::task::{ErrorKind, Fault, UserFault, datafusion_kind};

/// Errors of a source or sink while it runs.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A record that cannot be read, named by where it is (a file and line, or a file).
    #[error("bad data in {at}: {reason}")]
    BadData { at: String, reason: String },
    /// A file or store that cannot be reached, read or written.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A sink's file is shorter than the checkpoint being restored recorded.
    #[error(
        "'{path}' has {found} bytes but held {expected} at the checkpoint being restored: output was lost or the file was replaced"
    )]
    Lost {
        path: String,
        found: u64,
        expected: u64,
    },
    /// A file a checkpoint lists is gone under both its staged and its final name.
    #[error(
        "cannot commit {target}: neither it nor its staged file {staged} exists (were they deleted?)"
    )]
    Missing { target: String, staged: String },
    /// A checkpoint's state names something that cannot be (a path, a staging directory).
    #[error("the checkpoint {0}")]
    BadCheckpoint(String),
    /// Rows could not be encoded for output.
    #[error("encoding rows")]
    Encode(#[source] ArrowError),
    /// A Parquet file could not be read.
    #[error("reading {path}")]
    ParquetRead {
        path: String,
        #[source]
        source: ParquetError,
    },
    /// A Parquet file could not be written.
    #[error("writing {path}")]
    ParquetWrite {
        path: String,
        #[source]
        source: ParquetError,
    },
    /// Computing a virtual column or a watermark failed on a batch.
    #[error("computing {what}")]
    Expression {
        what: String,
        #[source]
        source: DataFusionError,
    },
    /// The default sink's reader went away (the embedding process stopped reading).
    #[error("the default sink's reader went away")]
    PreviewClosed,
}

impl Fault for RunError {
    fn kind(&self) -> ErrorKind {
        match self {
            RunError::BadData { .. } | RunError::ParquetRead { .. } => {
                ErrorKind::User(UserFault::BadRecord)
            }
            RunError::Storage(e) => e.kind(),
            RunError::Lost { .. } | RunError::Missing { .. } => ErrorKind::User(UserFault::Storage),
            RunError::Expression { source, .. } => datafusion_kind(source),
            RunError::BadCheckpoint(_)
            | RunError::Encode(_)
            | RunError::ParquetWrite { .. }
            | RunError::PreviewClosed => ErrorKind::Internal,
        }
    }
}
