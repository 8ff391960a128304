//! The storage floor: where bytes live and how they are written so that they survive a crash.
//! It knows nothing of tasks, operators or connectors; checkpoints, the file connectors and
//! the daemon's snapshots all build on it.
//!
//! - [`Location`]: a local directory or an object-store prefix (`file://`, `s3://`, `gs://`,
//!   `az://`) and the `object_store` client that reaches it;
//! - [`durable`]: the one way to write a local file durably (temp file, fsync, rename, fsync
//!   the directory; or fsync a file written in place and the directories above it);
//! - [`checksum`]: CRC-32 for new checkpoint files, FNV-1a 64 for what was written with it;
//! - [`CheckpointStore`]: a pipeline's checkpoints under its state location, and the rule that
//!   makes a checkpoint exist (a valid MANIFEST, written last);
//! - [`access`]: which local paths a worker's tables may open, and whether their stores may
//!   use the host's credentials (the daemon's access policy, checked at open time);
//! - [`StorageError`]: the one error of all of it.
//!
//! Nothing here blocks the runtime: object stores are async, and local fsyncs go through
//! `spawn_blocking` ([`durable::sync`]).

pub mod access;
mod checkpoint;
pub mod checksum;
pub mod durable;
mod error;
mod location;

pub use checkpoint::{
    CheckpointStore, FORMAT, FileEntry, KEEP, MANIFEST, Manifest, Passed, Restorable,
};
pub use error::StorageError;
pub use location::{Location, Scheme};
