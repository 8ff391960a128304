//! The data plane of arroyod: Arroyo-dialect streaming SQL planned by DataFusion and run as a
//! dataflow of operators over Arrow record batches.
//!
//! A query goes through three stages:
//!
//! 1. [`sql`] parses the statements (CREATE TABLE/VIEW, INSERT INTO, a bare SELECT), lets
//!    DataFusion plan and type-check each query, and rewrites the logical plans into a
//!    [`dataflow::Program`]: a graph of sources, operators and sinks joined by forward,
//!    rebalance or key-hash shuffle edges.
//! 2. [`dataflow::run`] starts every subtask of every node as a task on the current tokio
//!    runtime, wired by bounded channels; data and control messages ([`dataflow::Message`]:
//!    batches, watermarks, end of data) travel in-band, so backpressure is natural.
//! 3. [`connector`]s read and write the outside world; a bare SELECT writes to the *default
//!    sink*, a channel the embedding process (the worker) drains.
//!
//! Every batch carries a hidden, trailing event-time column named [`TIMESTAMP_FIELD`]
//! (`Timestamp(Nanosecond)`); it is never visible to SQL and never written by sinks.
//!
//! The engine never blocks the runtime: file I/O in connectors is small buffered writes or goes
//! through `spawn_blocking`, and expressions are evaluated on whole batches.

pub mod connector;
pub mod dataflow;
pub mod failpoint;
pub mod operator;
pub mod sql;
pub mod storage;
pub mod task;

pub use task::{TIMESTAMP_FIELD, error_chain};
