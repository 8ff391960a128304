//! The ground floor of the engine: the contract between the runtime and what it runs.
//!
//! Everything a subtask sees is defined here, and nothing here knows the operators, the
//! connectors, the storage or the runtime that build on it:
//!
//! - what travels on an edge ([`Message`]: batches with the hidden columns of [`schema`],
//!   [`Watermark`]s, checkpoint [`Barrier`]s, end of data) and the output side of a subtask
//!   ([`Collector`], which routes batches by key hash with [`hash::partition_by_hash`]);
//! - what runs in a subtask: the [`Operator`] and [`Source`] traits and their factories, the
//!   [`SourceContext`] a source emits through, and [`TaskInfo`] / [`JobContext`];
//! - the state a subtask snapshots and restores ([`TaskState`], [`RestoredState`]) and the
//!   checkpoint protocol between a subtask and the coordinator (`protocol`: what a subtask
//!   reports, how it learns that an epoch completed);
//! - what a node's subtasks measure ([`NodeCounters`]: rows, bytes, backpressure, watermark);
//! - the error a subtask fails with ([`TaskError`]) and whose fault it is ([`ErrorKind`]).
//!
//! Rules every implementation follows: never block the runtime, never work row by row on the
//! hot path (DataFusion physical expressions over whole batches), and keep the hidden
//! event-time column last in every batch.

mod collector;
mod context;
mod error;
pub(crate) mod hash;
mod message;
mod metrics;
mod operator;
pub(crate) mod protocol;
pub mod schema;
mod source;
mod state;

pub use collector::Collector;
pub(crate) use collector::{Route, Rx, Tx};
pub use context::{Background, JobContext, MemoryBudget, StopMode, TaskInfo};
pub use error::{ErrorKind, Fault, StateError, TaskError, UserFault, datafusion_kind, error_chain};
pub use message::{Barrier, Message, Watermark};
pub use metrics::{NodeCounters, NodeFigures};
pub use operator::{Operator, OperatorFactory};
pub use schema::{TIMESTAMP_FIELD, timestamp_type, with_timestamp, with_updating};
pub use source::{Source, SourceContext, SourceEnd, SourceFactory};
pub use state::{RestoredState, TaskState};
