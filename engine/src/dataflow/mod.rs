//! The streaming dataflow: its graph ([`Program`]), the messages on its edges ([`Message`]) and
//! the runtime that runs it ([`run`]).
//!
//! Runtime protocol, per subtask:
//!
//! 1. Each subtask owns one bounded input channel per input *slot*: one per upstream subtask
//!    that feeds it (per in-edge).
//! 2. A subtask's watermark is the minimum over its slots (idle slots excluded); it forwards a
//!    watermark downstream only when that minimum advances.
//! 3. When every slot has delivered [`Message::EndOfData`] the subtask finishes its operator
//!    (which may flush state), forwards end of data and ends.
//! 4. The first error of any subtask fails the whole run; the others are aborted.
//! 5. Checkpoint barriers travel in-band and are aligned per subtask (see `checkpointing`).
//!
//! The runtime never does row-at-a-time work: operators see whole batches.

pub(crate) mod checkpointing;
mod graph;
mod runtime;

pub use checkpointing::{Barrier, CheckpointConfig, CommitGate, CompletedCheckpoint};
pub use graph::{Edge, EdgeKind, Node, NodeKind, Program};
pub use runtime::{Collector, DataflowError, RunHandle, RunOutcome, StopMode, run};

use datafusion::arrow::record_batch::RecordBatch;

/// What travels on an edge of the dataflow.
#[derive(Debug, Clone)]
pub enum Message {
    /// Rows, with the hidden event-time column last.
    Data(RecordBatch),
    /// No row with an event time at or before this one (nanoseconds since the epoch) follows.
    Watermark(Watermark),
    /// Everything before belongs to a checkpoint's epoch (see [`checkpointing`]).
    Barrier(Barrier),
    /// The sender will send nothing more.
    EndOfData,
}

/// A watermark: an event time in nanoseconds since the epoch, or idleness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watermark {
    EventTime(i64),
    /// The sender has no data for now and must not hold back the watermark downstream.
    Idle,
}
