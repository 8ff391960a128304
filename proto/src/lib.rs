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

pub mod diagnostic;
pub mod socket;
