//! What a node's subtasks measure while they run: rows and bytes in and out, time blocked on a
//! full output channel, the output watermark, late and bad rows dropped, subtasks ended.
//!
//! One [`NodeCounters`] per node, shared by its subtasks: relaxed atomics added to once per
//! batch (never per row), read by whoever embeds the run ([`NodeCounters::read`]). Counters
//! are totals since the run started; the embedding process turns them into deltas and rates.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use datafusion::arrow::record_batch::RecordBatch;

/// A node's counters, shared by its subtasks.
#[derive(Debug, Default)]
pub struct NodeCounters {
    rows_in: AtomicU64,
    rows_out: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    blocked_ns: AtomicU64,
    /// The highest event-time watermark a subtask sent downstream, ms since the epoch;
    /// `i64::MIN`: none yet.
    watermark_ms: AtomicI64Min,
    late_rows: AtomicU64,
    bad_rows: AtomicU64,
    subtasks_ended: AtomicU64,
    /// The node's part of the last completed checkpoint: bytes, and ms from the trigger to
    /// its last subtask's snapshot.
    checkpoint_bytes: AtomicU64,
    checkpoint_ms: AtomicU64,
}

/// An `AtomicI64` that starts at `i64::MIN` (no value yet).
#[derive(Debug)]
struct AtomicI64Min(AtomicI64);

impl Default for AtomicI64Min {
    fn default() -> Self {
        AtomicI64Min(AtomicI64::new(i64::MIN))
    }
}

/// A node's counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeFigures {
    pub rows_in: u64,
    pub rows_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Nanoseconds its subtasks spent waiting on a full output channel, summed.
    pub blocked_ns: u64,
    /// Its output watermark in ms since the epoch (None: none yet, or only the end of input).
    pub watermark_ms: Option<i64>,
    pub late_rows: u64,
    pub bad_rows: u64,
    pub subtasks_ended: u64,
    /// Its part of the last completed checkpoint (0: none yet).
    pub checkpoint_bytes: u64,
    pub checkpoint_ms: u64,
}

impl NodeFigures {
    /// The counters' growth since `before` (an earlier reading of the same node); the gauges
    /// (watermark, subtasks ended, last checkpoint) as they are now.
    pub fn since(&self, before: &NodeFigures) -> NodeFigures {
        NodeFigures {
            rows_in: self.rows_in - before.rows_in,
            rows_out: self.rows_out - before.rows_out,
            bytes_in: self.bytes_in - before.bytes_in,
            bytes_out: self.bytes_out - before.bytes_out,
            blocked_ns: self.blocked_ns - before.blocked_ns,
            late_rows: self.late_rows - before.late_rows,
            bad_rows: self.bad_rows - before.bad_rows,
            ..*self
        }
    }
}

/// The in-memory size of a batch's buffers, as Arrow counts it.
fn bytes(batch: &RecordBatch) -> u64 {
    batch.get_array_memory_size() as u64
}

impl NodeCounters {
    /// A batch came in.
    pub fn received(&self, batch: &RecordBatch) {
        self.rows_in
            .fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
        self.bytes_in.fetch_add(bytes(batch), Ordering::Relaxed);
    }

    /// A batch went out.
    pub fn sent(&self, batch: &RecordBatch) {
        self.rows_out
            .fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
        self.bytes_out.fetch_add(bytes(batch), Ordering::Relaxed);
    }

    /// A subtask waited `waited` for room in an output channel.
    pub fn blocked(&self, waited: Duration) {
        self.blocked_ns
            .fetch_add(waited.as_nanos() as u64, Ordering::Relaxed);
    }

    /// A subtask sent the event-time watermark `ms` downstream (the end of input, `i64::MAX`,
    /// is not a time and is not recorded).
    pub fn watermark(&self, ms: i64) {
        if ms != i64::MAX {
            self.watermark_ms.0.fetch_max(ms, Ordering::Relaxed);
        }
    }

    /// `rows` arrived after the watermark had passed their window, and were dropped.
    pub fn late(&self, rows: u64) {
        self.late_rows.fetch_add(rows, Ordering::Relaxed);
    }

    /// `rows` could not be read (`bad_data = 'drop'`), and were skipped.
    pub fn bad(&self, rows: u64) {
        self.bad_rows.fetch_add(rows, Ordering::Relaxed);
    }

    /// A subtask of the node ended.
    pub fn ended(&self) {
        self.subtasks_ended.fetch_add(1, Ordering::Relaxed);
    }

    /// A checkpoint completed holding `bytes` of the node's state, its subtasks' snapshots
    /// done `ms` after the trigger.
    pub fn checkpointed(&self, bytes: u64, ms: u64) {
        self.checkpoint_bytes.store(bytes, Ordering::Relaxed);
        self.checkpoint_ms.store(ms, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn read(&self) -> NodeFigures {
        let watermark = self.watermark_ms.0.load(Ordering::Relaxed);
        NodeFigures {
            rows_in: self.rows_in.load(Ordering::Relaxed),
            rows_out: self.rows_out.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            blocked_ns: self.blocked_ns.load(Ordering::Relaxed),
            watermark_ms: (watermark != i64::MIN).then_some(watermark),
            late_rows: self.late_rows.load(Ordering::Relaxed),
            bad_rows: self.bad_rows.load(Ordering::Relaxed),
            subtasks_ended: self.subtasks_ended.load(Ordering::Relaxed),
            checkpoint_bytes: self.checkpoint_bytes.load(Ordering::Relaxed),
            checkpoint_ms: self.checkpoint_ms.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    #[test]
    fn counters_add_per_batch_and_keep_the_highest_watermark() {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        let batch =
            RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1, 2, 3]))]).unwrap();
        let c = NodeCounters::default();
        assert_eq!(c.read().watermark_ms, None);
        c.received(&batch);
        c.sent(&batch);
        c.sent(&batch);
        c.watermark(20);
        c.watermark(10);
        c.watermark(i64::MAX);
        c.late(2);
        c.ended();
        let f = c.read();
        assert_eq!((f.rows_in, f.rows_out), (3, 6));
        assert_eq!(f.bytes_out, 2 * f.bytes_in);
        assert!(f.bytes_in > 0);
        assert_eq!(f.watermark_ms, Some(20));
        assert_eq!((f.late_rows, f.subtasks_ended), (2, 1));
    }
}
