//! What a subtask knows of its run: where it sits, what the embedding process gave the run,
//! and how the run is asked to stop.

use std::sync::Arc;

use tokio::sync::mpsc;

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
}

/// What a run gets from the process that embeds the engine.
#[derive(Debug, Clone, Default)]
pub struct JobContext {
    /// Where the default sink sends its rows, as JSON objects in batches. Without it the
    /// default sink discards its rows.
    pub preview: Option<mpsc::Sender<Vec<String>>>,
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
