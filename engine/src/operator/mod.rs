//! Streaming operators: what runs inside a non-source subtask.
//!
//! An operator sees batches (with the hidden event-time column last), the combined watermark of
//! its inputs and the end of its input. It must never block the runtime and never work
//! row-at-a-time on the hot path: it evaluates DataFusion physical expressions on whole batches.

pub mod instant;
pub mod join;
pub mod transform;
pub mod updating;
pub mod window;

pub use transform::Transform;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, UInt32Array};
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::hash_utils::{RandomState, create_hashes};
use datafusion::error::DataFusionError;
use datafusion::physical_expr::PhysicalExpr;
use std::sync::Arc;

use crate::dataflow::{Collector, DataflowError, Message, Watermark};
use crate::state::{RestoredState, TaskState};

/// Where a subtask sits in the dataflow.
#[derive(Debug, Clone)]
pub struct TaskInfo {
    /// The node's label.
    pub node: String,
    pub subtask: usize,
    pub parallelism: usize,
    /// What the embedding process gave the run.
    pub job: Arc<crate::connector::JobContext>,
    /// The run takes checkpoints: a sink commits what it staged when a checkpoint completes
    /// (also at the end of input: the last epoch), never on its own.
    pub checkpointing: bool,
}

/// Builds one operator instance per subtask.
pub trait OperatorFactory: Send + Sync {
    fn create(&self, info: &TaskInfo) -> Result<Box<dyn Operator>, DataflowError>;
}

/// One subtask's operator.
#[async_trait]
pub trait Operator: Send {
    /// Handles a batch from input `input` (the index of the in-edge it came on).
    async fn process_batch(
        &mut self,
        batch: RecordBatch,
        input: usize,
        out: &mut Collector,
    ) -> Result<(), DataflowError>;

    /// The combined watermark of the inputs advanced to `watermark`. The default forwards it.
    async fn on_watermark(
        &mut self,
        watermark: i64,
        out: &mut Collector,
    ) -> Result<(), DataflowError> {
        out.broadcast(Message::Watermark(Watermark::EventTime(watermark)))
            .await
    }

    /// Every input has ended; flush what is held. End of data is forwarded afterwards.
    async fn on_close(&mut self, _out: &mut Collector) -> Result<(), DataflowError> {
        Ok(())
    }

    /// Every input has delivered the barrier of a checkpoint: returns the state to write,
    /// which must reflect exactly the input before the barrier. Also called once after
    /// [`Operator::on_close`], for the final state. Stateless operators keep the default.
    async fn snapshot(&mut self) -> Result<TaskState, DataflowError> {
        Ok(TaskState::new())
    }

    /// Called once before any input, when the run restores a checkpoint: `state` holds every
    /// old subtask's snapshot of this node (the parallelism may differ; see
    /// [`RestoredState::owned_rows`]).
    fn restore(&mut self, _state: &RestoredState) -> Result<(), DataflowError> {
        Ok(())
    }

    /// The checkpoint `epoch` is complete (its MANIFEST is written): a sink may commit what
    /// it staged for it and before.
    async fn on_checkpoint_complete(&mut self, _epoch: u64) -> Result<(), DataflowError> {
        Ok(())
    }
}

/// Evaluates `exprs` over `batch`, each to a full column.
pub fn evaluate_all(
    exprs: &[Arc<dyn PhysicalExpr>],
    batch: &RecordBatch,
) -> Result<Vec<ArrayRef>, DataFusionError> {
    exprs
        .iter()
        .map(|e| e.evaluate(batch)?.into_array(batch.num_rows()))
        .collect()
}

/// The group-key columns of `batch`: the keys, or one constant column when there are none
/// (a global aggregate), since group tables need at least one column.
pub fn group_keys(
    keys: &[Arc<dyn PhysicalExpr>],
    batch: &RecordBatch,
) -> Result<Vec<ArrayRef>, DataFusionError> {
    if keys.is_empty() {
        let zeros = datafusion::arrow::array::UInt8Array::from(vec![0u8; batch.num_rows()]);
        return Ok(vec![Arc::new(zeros)]);
    }
    evaluate_all(keys, batch)
}

/// Seeds of the shuffle hash: fixed, so that every subtask, and every run restored from a
/// checkpoint, sends a key to the same place.
const SHUFFLE_HASH: RandomState = RandomState::with_seed(0x6172_726f_796f_6421);

/// Splits `batch` into `n` parts by the hash of `keys`; `None` for an empty part.
pub fn partition_by_hash(
    batch: &RecordBatch,
    keys: &[Arc<dyn PhysicalExpr>],
    n: usize,
) -> Result<Vec<Option<RecordBatch>>, DataFusionError> {
    if n == 1 {
        return Ok(vec![Some(batch.clone())]);
    }
    let arrays: Vec<ArrayRef> = keys
        .iter()
        .map(|k| k.evaluate(batch)?.into_array(batch.num_rows()))
        .collect::<Result<_, _>>()?;
    let mut hashes = vec![0u64; batch.num_rows()];
    create_hashes(&arrays, &SHUFFLE_HASH, &mut hashes)?;
    let mut indices: Vec<Vec<u32>> = vec![Vec::new(); n];
    for (row, h) in hashes.iter().enumerate() {
        indices[(*h % n as u64) as usize].push(row as u32);
    }
    indices
        .into_iter()
        .map(|idx| {
            if idx.is_empty() {
                Ok(None)
            } else if idx.len() == batch.num_rows() {
                Ok(Some(batch.clone()))
            } else {
                Ok(Some(take_record_batch(batch, &UInt32Array::from(idx))?))
            }
        })
        .collect()
}
