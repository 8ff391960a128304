//! The gRPC contract of arroyod, generated from `proto/arroyod.proto`.
//!
//! This crate owns nothing but what the daemon and the client must agree on: the generated types
//! and the default socket. It must never grow a dependency on the engine:
//! `arroyoctl` links it and stays thin.
//!
//! [`socket`] is the one definition of where the daemon's socket lives when nothing names it,
//! shared by `arroyod` (which listens there) and `arroyoctl` (which connects there) so that the
//! two find each other without flags. It needs nothing but `std`. [`diagnostic`] is the one
//! format of an error at a place in a query file, which both print.
#![forbid(unsafe_code)]

#[allow(clippy::all, missing_docs)]
mod generated {
    tonic::include_proto!("arroyod.v1");
}

pub use generated::*;

/// The largest gRPC message the daemon, its workers and `arroyoctl` decode (tonic's default is
/// 4 MiB). A row of a pipeline's default sink travels in one message (a worker's `Rows`, a
/// `TailRow`), so this bounds a row: a worker fails its pipeline on a larger one.
pub const MAX_MESSAGE_BYTES: usize = 32 << 20;

/// At most this many bytes of rows go in one `Rows` message (a single larger row goes alone,
/// up to [`MAX_MESSAGE_BYTES`]).
pub const ROWS_MESSAGE_BYTES: usize = 1 << 20;

/// What a row costs in a `Rows` message beside its text: the field's tag and length.
pub const ROW_FRAMING_BYTES: usize = 6;

pub mod diagnostic;
pub mod socket;
