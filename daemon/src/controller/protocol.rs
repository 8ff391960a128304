//! What flows between the controller's callers and a pipeline's task: the envelopes of its
//! inbox, the view it publishes, and the domain side of a worker's attachment (the start it
//! receives, the reports it sends, the commands it gets). No gRPC here: `api` translates.

use crate::engine::Confinement;
use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use tokio::sync::{mpsc, oneshot};

use super::machine::{Command, Desired, Event, Refusal, Report, Spec, State, StopEnd};

/// What a pipeline looks like from outside, published by its task after every event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineView {
    pub id: String,
    pub name: String,
    pub created_at: String,
    pub updated_at: String,
    /// Who submitted it (None: the daemon's own user, or not known).
    pub submitter: Option<u32>,
    pub state: State,
    pub desired: Desired,
    pub failure: String,
    pub generation: u64,
    pub spec: Spec,
    /// Where its checkpoints are: the spec's location resolved against the state root.
    pub state_url: String,
    /// The newest completed checkpoint's epoch (0: none).
    pub last_checkpoint: u64,
    /// The current worker process, 0 when none runs.
    pub worker_pid: u32,
    /// How the last stop ended.
    pub last_stop: Option<StopEnd>,
    /// Crashed workers restarted since the daemon started.
    pub restarts: u64,
    /// Rows dropped as bad data, and as late, since the daemon started (all operators).
    pub bad_rows_dropped: u64,
    pub late_rows_dropped: u64,
    /// The current worker's subtasks, and how many have ended (as it last reported).
    pub subtasks: u32,
    pub subtasks_ended: u32,
}

/// What a worker needs to run its generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartSpec {
    pub pipeline_id: String,
    pub name: String,
    pub query: String,
    pub parallelism: u32,
    pub state_url: String,
    pub checkpoint_interval: Duration,
    /// The newest checkpoint the metadata says completed: the worker must find it.
    pub expected_epoch: u64,
    /// The most memory the worker may use, in bytes; 0: no limit.
    pub memory_limit: u64,
    /// What its tables may reach on the host.
    pub confinement: Confinement,
}

/// The worker's connection broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the worker's connection broke: {0}")]
pub struct LinkBroken(pub String);

/// A worker's reports, in order.
pub type ReportStream = Pin<Box<dyn Stream<Item = Result<Report, LinkBroken>> + Send>>;

/// An accepted worker: its start, then its commands until the stream ends.
pub struct Attachment {
    pub start: StartSpec,
    pub commands: mpsc::UnboundedReceiver<Command>,
}

/// Why a task refused or failed a command.
#[derive(Debug, thiserror::Error)]
pub enum Rejected {
    /// The state machine refused it; nothing changed.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// It was applied, but recording it failed (the pipeline then failed).
    #[error("recording the pipeline failed: {0}")]
    Store(String),
}

/// A message to a pipeline's task.
pub enum Envelope {
    /// A command; the reply carries the view once its effects are done.
    Command {
        event: Event,
        reply: oneshot::Sender<Result<PipelineView, Rejected>>,
    },
    /// A worker's Hello for `generation`, with its report stream.
    Attach {
        generation: u64,
        reports: ReportStream,
        reply: oneshot::Sender<Option<Attachment>>,
        /// Why the kernel does not confine this foreign pipeline's worker (None: it does, or
        /// the pipeline is the daemon's user's).
        unconfined: Option<String>,
    },
    /// Is the task alive? It answers at once (the watchdog asks).
    Probe { reply: oneshot::Sender<()> },
}
