//! The streaming dataflow: its graph ([`Program`]) and the runtime that runs it ([`run`]), with
//! the checkpoint coordinator. What a subtask sees is defined in [`crate::task`].
//!
//! Runtime protocol, per subtask:
//!
//! 1. Each subtask owns one bounded input channel per input *slot*: one per upstream subtask
//!    that feeds it (per in-edge).
//! 2. A subtask's watermark is the minimum over its slots (idle slots excluded); it forwards a
//!    watermark downstream only when that minimum advances.
//! 3. When every slot has delivered [`crate::task::Message::EndOfData`] the subtask finishes its
//!    operator (which may flush state), forwards end of data and ends.
//! 4. The first error of any subtask fails the whole run; the others are aborted.
//! 5. Checkpoint barriers travel in-band and are aligned per subtask (see `checkpointing`).
//!
//! The runtime never does row-at-a-time work: operators see whole batches.

mod checkpointing;
mod error;
mod graph;
mod layout;
mod runtime;

pub use crate::task::StopMode;
pub use checkpointing::{CheckpointConfig, CommitGate, CompletedCheckpoint};
pub use error::DataflowError;
pub use graph::{EdgeKind, EdgeShape, NodeKind, NodeShape, Program, Role, Route, Shape, node_id};
pub use runtime::{CheckpointTrigger, NodeMetrics, RunHandle, RunOutcome, Stopper, run};
