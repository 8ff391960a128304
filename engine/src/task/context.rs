//! What a subtask knows of its run: where it sits, what the embedding process gave the run,
//! and how the run is asked to stop.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use datafusion::execution::memory_pool::MemoryPool;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::Instrument;

use super::metrics::NodeCounters;

/// Where a subtask sits in the dataflow.
#[derive(Debug, Clone)]
pub struct TaskInfo {
    /// The node's label.
    pub node: String,
    pub subtask: usize,
    pub parallelism: usize,
    /// What the embedding process gave the run.
    pub job: Arc<JobContext>,
    /// The run takes checkpoints: a sink commits what it staged when a checkpoint completes
    /// (also at the end of input: the last epoch), never on its own.
    pub checkpointing: bool,
    /// Where a subtask runs what must outlive it (the abort of an upload it leaves behind).
    pub background: Background,
    /// The node's counters, shared by its subtasks: an operator adds the late rows it drops,
    /// a source the bad rows it skips.
    pub counters: Arc<NodeCounters>,
}

#[cfg(test)]
impl TaskInfo {
    /// Subtask `subtask` of `parallelism` of a node named `test`, in a run without
    /// checkpoints, for tests.
    pub(crate) fn for_test(subtask: usize, parallelism: usize) -> TaskInfo {
        TaskInfo {
            node: "test".into(),
            subtask,
            parallelism,
            job: Arc::default(),
            checkpointing: false,
            background: Background::default(),
            counters: Arc::default(),
        }
    }
}

/// What a run gets from the process that embeds the engine.
#[derive(Debug, Clone, Default)]
pub struct JobContext {
    /// The pipeline's id: it names what the run leaves on outside systems that must survive
    /// a restart (a Kafka sink's transactional ids, a source's consumer group). Empty outside
    /// a pipeline.
    pub pipeline: String,
    /// Where the default sink sends its rows, as JSON objects in batches. Without it the
    /// default sink discards its rows.
    pub preview: Option<mpsc::Sender<Vec<String>>>,
    /// What the operators' state may hold; None: no limit.
    pub memory: Option<MemoryBudget>,
}

/// The memory the operators' state of a run may hold: a DataFusion memory pool shared by
/// every subtask, each of which keeps a reservation the size of its operator's state.
#[derive(Debug, Clone)]
pub struct MemoryBudget {
    pub pool: Arc<dyn MemoryPool>,
    /// The pipeline's memory limit, in bytes, of which the pool holds a share (what an error
    /// names).
    pub limit: u64,
    /// The pool's size, in bytes.
    pub state: u64,
}

/// Tasks that subtasks leave behind (the abort of an upload a dropped file had under way),
/// each in a span that names it. The run owns them: it waits a while for them once every
/// subtask ended, and aborts them if it is dropped first.
#[derive(Debug, Clone, Default)]
pub struct Background(Arc<Mutex<JoinSet<()>>>);

impl Background {
    /// Runs `task` in a span named `name`. Outside a runtime (a subtask dropped after its run)
    /// there is nothing to run it on, and it is dropped.
    pub fn spawn(&self, span: tracing::Span, task: impl Future<Output = ()> + Send + 'static) {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let mut set = self.0.lock().expect("not poisoned");
        // Reap what ended, so the set holds only what runs.
        while set.try_join_next().is_some() {}
        set.spawn(task.instrument(span));
    }

    /// Waits up to `grace` for every task; returns how many were still running (they are
    /// aborted).
    pub(crate) async fn wait(&self, grace: Duration) -> usize {
        let mut set = std::mem::take(&mut *self.0.lock().expect("not poisoned"));
        let all = async { while set.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, all).await.is_ok() {
            return 0;
        }
        set.len()
    }
}

/// How a run is asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// A final checkpoint, then every subtask stops where it is (nothing is flushed: the run
    /// restored from that checkpoint goes on as if never stopped). Without checkpointing, as
    /// [`StopMode::Graceful`].
    Checkpoint,
    /// Sources stop reading, everything in flight drains to the sinks; no checkpoint.
    Graceful,
    /// Every task is aborted at once; in-flight data is lost (recovered from a checkpoint).
    Immediate,
}
