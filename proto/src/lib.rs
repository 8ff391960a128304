//! The gRPC contract of arroyod, generated from `proto/arroyod.proto`.
//!
//! This crate owns nothing but what the daemon and the client must agree on: the generated types,
//! the state names and the default socket. It must never grow a dependency on the engine:
//! `arroyoctl` links it and stays thin.
//!
//! [`socket`] is the one definition of where the daemon's socket lives when nothing names it,
//! shared by `arroyod` (which listens there) and `arroyoctl` (which connects there) so that the
//! two find each other without flags. It needs nothing but `std`.
#![forbid(unsafe_code)]

#[allow(clippy::all, missing_docs)]
mod generated {
    tonic::include_proto!("arroyod.v1");
}

pub use generated::*;

pub mod socket;

/// Pipeline states, spelled as Arroyo spells them.
pub mod state {
    pub const CREATED: &str = "Created";
    pub const SCHEDULING: &str = "Scheduling";
    pub const RUNNING: &str = "Running";
    pub const STOPPING: &str = "Stopping";
    pub const STOPPED: &str = "Stopped";
    pub const FINISHED: &str = "Finished";
    pub const FAILED: &str = "Failed";
    pub const RECOVERING: &str = "Recovering";

    /// True for states a pipeline never leaves on its own.
    pub fn is_terminal(state: &str) -> bool {
        matches!(state, STOPPED | FINISHED | FAILED)
    }
}
