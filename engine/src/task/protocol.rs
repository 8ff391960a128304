//! The checkpoint protocol between a subtask and the coordinator.
//!
//! 1. At a barrier (a source: when one is due; an operator: once every input delivered it),
//!    a subtask hands its [`TaskState`] to [`Link::files`], which adds the runtime's own part
//!    (the subtask's watermark, table [`RUNTIME_TABLE`]), and reports it as
//!    [`Report::Snapshot`]. The state is not encoded on the data path: the coordinator does
//!    that.
//! 2. A subtask that ends reports its final state once, as [`Report::Ended`]; it stands for
//!    the subtask in every later epoch.
//! 3. The coordinator publishes every completed epoch on [`Completions`]; a sink waits there
//!    before it commits what it staged.

use tokio::sync::{mpsc, watch};

use super::error::TaskError;
use super::state::TaskState;

/// The newest completed epoch (0: none), and whether it is the last epoch of the run.
pub(crate) type Completions = watch::Receiver<(u64, bool)>;

/// A subtask, by node index and subtask index.
pub(crate) type TaskId = (usize, usize);

/// The runtime's own part of every subtask's state.
pub(crate) const RUNTIME_TABLE: &str = "_runtime";

/// The runtime's own part of a subtask's state.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct RuntimeState {
    pub watermark: Option<i64>,
}

/// A subtask's snapshot as reported, not yet encoded: the coordinator encodes it off the data
/// path (batches are shared, so holding them costs no copy).
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    pub task: TaskId,
    pub state: TaskState,
}

/// What subtasks tell the coordinator.
#[derive(Debug)]
pub(crate) enum Report {
    /// The snapshot at barrier `epoch`.
    Snapshot {
        task: TaskId,
        epoch: u64,
        files: Pending,
    },
    /// The subtask ended; its final state. `complete`: a source read its input to the end
    /// (false for a source that was stopped).
    Ended {
        task: TaskId,
        files: Pending,
        complete: bool,
    },
}

/// What a subtask holds to take part in checkpoints.
#[derive(Clone)]
pub(crate) struct Link {
    pub task: TaskId,
    pub reports: mpsc::UnboundedSender<Report>,
    pub completed: Completions,
}

impl Link {
    /// `state` (with the runtime's part) as this subtask's snapshot, to report.
    pub fn files(
        &self,
        mut state: TaskState,
        watermark: Option<i64>,
    ) -> Result<Pending, TaskError> {
        state.put_json(RUNTIME_TABLE, &RuntimeState { watermark })?;
        Ok(Pending {
            task: self.task,
            state,
        })
    }

    pub fn report(&self, report: Report) {
        // The coordinator only goes away when the run fails or ends.
        let _ = self.reports.send(report);
    }

    /// Waits until `epoch` is completed; false if the coordinator ended first.
    pub async fn wait_completed(&mut self, epoch: u64) -> bool {
        self.completed.wait_for(|c| c.0 >= epoch).await.is_ok()
    }
}
