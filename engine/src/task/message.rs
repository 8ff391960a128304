//! What travels on an edge of the dataflow: batches and in-band control messages.

use datafusion::arrow::record_batch::RecordBatch;

/// What travels on an edge of the dataflow.
#[derive(Debug, Clone)]
pub enum Message {
    /// Rows, with the hidden event-time column last.
    Data(RecordBatch),
    /// No row with an event time at or before this one (nanoseconds since the epoch) follows.
    Watermark(Watermark),
    /// Everything before belongs to a checkpoint's epoch.
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

/// A barrier: everything before it on an edge belongs to epoch `epoch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Barrier {
    pub epoch: u64,
    /// Stop after this checkpoint (no flush, no end of data).
    pub stop: bool,
}
