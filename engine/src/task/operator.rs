//! What runs inside a non-source subtask.
//!
//! An operator sees batches (with the hidden event-time column last), the combined watermark of
//! its inputs and the end of its input. It must never block the runtime and never work
//! row-at-a-time on the hot path: it evaluates DataFusion physical expressions on whole batches.

use async_trait::async_trait;
use datafusion::arrow::record_batch::RecordBatch;

use super::collector::Collector;
use super::context::TaskInfo;
use super::error::TaskError;
use super::message::{Message, Watermark};
use super::state::{RestoredState, TaskState};

/// Builds one operator instance per subtask.
pub trait OperatorFactory: Send + Sync {
    fn create(&self, info: &TaskInfo) -> Result<Box<dyn Operator>, TaskError>;

    /// For a sink (a node without outputs): whether a restore from a checkpoint older than the
    /// newest keeps its delivery promise, because it rewinds its output to what that checkpoint
    /// recorded or promises only at-least-once. False, the safe default, for a sink that
    /// commits output for good at each checkpoint: a restore then falls back past no
    /// checkpoint.
    fn rewinds(&self) -> bool {
        false
    }
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
    ) -> Result<(), TaskError>;

    /// The combined watermark of the inputs advanced to `watermark`. The default forwards it.
    async fn on_watermark(&mut self, watermark: i64, out: &mut Collector) -> Result<(), TaskError> {
        out.broadcast(Message::Watermark(Watermark::EventTime(watermark)))
            .await
    }

    /// The bytes its state holds in memory, as well as it can tell: the run's memory budget
    /// (DataFusion's memory pool) holds a reservation of this size after every batch and
    /// watermark, and fails the subtask when the pool cannot grant it. Called often, so it
    /// must not walk the state. Stateless operators keep the default.
    fn state_bytes(&self) -> usize {
        0
    }

    /// Every input has ended; flush what is held. End of data is forwarded afterwards.
    async fn on_close(&mut self, _out: &mut Collector) -> Result<(), TaskError> {
        Ok(())
    }

    /// Every input has delivered the barrier of a checkpoint: returns the state to write,
    /// which must reflect exactly the input before the barrier. Also called once after
    /// [`Operator::on_close`], for the final state. Stateless operators keep the default.
    async fn snapshot(&mut self) -> Result<TaskState, TaskError> {
        Ok(TaskState::new())
    }

    /// Called once before any input, when the run restores a checkpoint: `state` holds every
    /// old subtask's snapshot of this node (the parallelism may differ; see
    /// [`RestoredState::owned_rows`]).
    fn restore(&mut self, _state: &RestoredState) -> Result<(), TaskError> {
        Ok(())
    }

    /// The checkpoint `epoch` is complete (its MANIFEST is written): a sink may commit what
    /// it staged for it and before.
    async fn on_checkpoint_complete(&mut self, _epoch: u64) -> Result<(), TaskError> {
        Ok(())
    }
}
