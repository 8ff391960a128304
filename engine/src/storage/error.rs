//! The one error of the storage floor.

use std::fmt::Display;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::task::{ErrorKind, Fault, UserFault};

/// Errors of locations, durable writes and checkpoint storage.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A path or URL that names no usable store (the caller names the location).
    #[error("{reason}")]
    BadLocation { location: String, reason: String },
    /// A store setting (`storage.<key>`) that the location's store does not know.
    #[error("invalid value '{value}' for store setting '{key}': {reason}")]
    BadOption {
        key: String,
        value: String,
        reason: String,
    },
    /// The store cannot be set up (credentials, region, account).
    #[error("cannot set up the store of {base}")]
    Setup {
        base: String,
        #[source]
        source: Box<object_store::Error>,
    },
    /// The store failed an operation on `path`.
    #[error("{what} {path}")]
    Store {
        what: &'static str,
        path: String,
        #[source]
        source: Box<object_store::Error>,
    },
    /// A file operation failed (a local file, or a stream of an object read as one).
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A checkpoint file's length or checksum differs from its MANIFEST: it is never loaded.
    #[error("checkpoint file {path} is corrupt: {reason}")]
    Corrupt { path: String, reason: String },
    /// A checkpoint written by a newer arroyod, in a format this one cannot read.
    #[error("{path} has checkpoint format {format}; this arroyod reads formats up to {known}")]
    NewerFormat {
        path: String,
        format: u32,
        known: u32,
    },
    /// A checkpoint's MANIFEST lists no such file.
    #[error("checkpoint {epoch} has no file {name}")]
    NoSuchFile { epoch: u64, name: String },
    /// A path the confinement of the process does not allow (its `access` module).
    #[error("{path} may not be used: {reason}")]
    Denied { path: String, reason: String },
    /// The kernel refused a file operation of a foreign user's pipeline on a path its check
    /// had let through: it leads outside `allowed_paths` now (a symlink swapped in after the
    /// check), and the worker's Landlock restriction stopped it.
    #[error(
        "{what} {path}: refused by the kernel (a pipeline of another user than the daemon's reaches only files under allowed_paths; did the path change after it was checked?)"
    )]
    Refused {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A blocking file task panicked or was cancelled.
    #[error("a blocking file task failed")]
    Join(#[from] tokio::task::JoinError),
}

/// Set once this process runs a foreign user's pipeline (by `access::confine`): a file
/// operation the kernel refuses is then [`StorageError::Refused`].
static FOREIGN: AtomicBool = AtomicBool::new(false);

/// Marks this process as running a foreign user's pipeline.
pub(super) fn mark_foreign() {
    FOREIGN.store(true, Ordering::Relaxed);
}

impl StorageError {
    /// Wraps a failed file operation: `.map_err(StorageError::io("syncing", path.display()))`.
    pub fn io<P: Display>(
        what: &'static str,
        path: P,
    ) -> impl FnOnce(std::io::Error) -> StorageError + use<P> {
        let path = path.to_string();
        move |source| {
            if source.kind() == std::io::ErrorKind::PermissionDenied
                && FOREIGN.load(Ordering::Relaxed)
            {
                StorageError::Refused { what, path, source }
            } else {
                StorageError::Io { what, path, source }
            }
        }
    }

    /// Wraps a failed object-store operation on `path` (as messages name it).
    pub fn store<P: Display>(
        what: &'static str,
        path: P,
    ) -> impl FnOnce(object_store::Error) -> StorageError + use<P> {
        let path = path.to_string();
        move |source| StorageError::Store {
            what,
            path,
            source: Box::new(source),
        }
    }

    /// Whose fault it is: a location or setting that cannot work, a store that fails or
    /// holds something unexpected are the user's; a file the MANIFEST does not list, or a
    /// failed blocking task, is a bug.
    pub fn kind(&self) -> ErrorKind {
        match self {
            StorageError::BadLocation { .. }
            | StorageError::BadOption { .. }
            | StorageError::Setup { .. }
            | StorageError::Denied { .. }
            | StorageError::Refused { .. } => ErrorKind::User(UserFault::BadOption),
            StorageError::Store { .. }
            | StorageError::Io { .. }
            | StorageError::Corrupt { .. }
            | StorageError::NewerFormat { .. } => ErrorKind::User(UserFault::Storage),
            StorageError::NoSuchFile { .. } | StorageError::Join(_) => ErrorKind::Internal,
        }
    }
}

impl Fault for StorageError {
    fn kind(&self) -> ErrorKind {
        StorageError::kind(self)
    }
}
