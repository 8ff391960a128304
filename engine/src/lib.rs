//! The data plane of arroyod: Arroyo-dialect streaming SQL planned by DataFusion and run as a
//! dataflow of operators over Arrow record batches.
//!
//! The face it shows the process that embeds it (the daemon's worker) is narrow:
//!
//! 1. [`sql::plan`] parses the statements (CREATE TABLE/VIEW, INSERT INTO, a bare SELECT), lets
//!    DataFusion plan and type-check each query, and rewrites the logical plans into a dataflow
//!    of sources, operators and sinks joined by forward, rebalance or key-hash shuffle edges.
//! 2. [`job::start`] runs a planned query at a parallelism, restoring and taking checkpoints
//!    under a state location; a bare SELECT writes to the *default sink*, a channel the
//!    embedding process drains. [`job::checkpoints`] lists a state location's checkpoints.
//! 3. [`storage`] names locations (a path or an object-store URL) and writes local files
//!    durably, for the daemon's own files too.
//!
//! Every error says whose fault it is ([`ErrorKind`]).
//!
//! Inside, the modules are floors; each imports only from floors below it:
//!
//! 1. `task`: the contract between the runtime and what it runs (messages, the `Collector`,
//!    the `Operator` and `Source` traits, task state, the checkpoint protocol, the error).
//! 2. [`storage`]: locations, durable writes, checksums, the checkpoint store.
//! 3. `operator` and `connector`: what runs in a subtask; connectors also read and write the
//!    outside world through `storage`.
//! 4. `dataflow`: the graph, the runtime that runs it, the checkpoint coordinator and the
//!    layout of a checkpoint.
//! 5. [`sql`]: planning, which builds graphs of operators and connectors.
//! 6. [`job`]: the face above.
//!
//! Every batch carries a hidden, trailing event-time column named [`TIMESTAMP_FIELD`]
//! (`Timestamp(Nanosecond)`); it is never visible to SQL and never written by sinks.
//!
//! The engine never blocks the runtime: file I/O in connectors is small buffered writes or goes
//! through `spawn_blocking`, and expressions are evaluated on whole batches.

pub(crate) mod connector;
pub(crate) mod dataflow;
pub mod failpoint;
pub mod job;
pub(crate) mod operator;
pub mod sql;
pub mod storage;
pub(crate) mod task;

pub use connector::{
    HostAccess, HostAccessKind, PlannedSink, Rerun, ValueError, kafka_host_settings, parse_duration,
};
pub use task::{ErrorKind, TIMESTAMP_FIELD, UserFault, error_chain};
