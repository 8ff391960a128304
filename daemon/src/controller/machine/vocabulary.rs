//! What the pipeline state machine speaks: the states, what its user wants, the events that
//! move it, the effects it asks for, and why it refuses a command. Plain data, no behaviour
//! beyond naming and spelling; [`super::Machine`] is the transition function over them.

use std::time::Duration;

use crate::metrics::MetricsReport;

/// A pipeline's actual state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Stored, never scheduled.
    Created,
    /// A worker of the current generation is starting (or waits for the previous one to exit).
    Scheduling,
    Running,
    /// A stop was sent; the worker has not ended yet.
    Stopping,
    Stopped,
    /// Every source ended and the worker drained.
    Finished,
    Failed,
    /// The worker crashed; a new generation starts after a backoff.
    Recovering,
}

impl State {
    pub const ALL: [State; 8] = [
        State::Created,
        State::Scheduling,
        State::Running,
        State::Stopping,
        State::Stopped,
        State::Finished,
        State::Failed,
        State::Recovering,
    ];

    /// Arroyo's spelling, as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Created => "Created",
            State::Scheduling => "Scheduling",
            State::Running => "Running",
            State::Stopping => "Stopping",
            State::Stopped => "Stopped",
            State::Finished => "Finished",
            State::Failed => "Failed",
            State::Recovering => "Recovering",
        }
    }

    pub fn parse(text: &str) -> Option<State> {
        State::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// True for states a pipeline never leaves on its own.
    pub fn is_terminal(self) -> bool {
        matches!(self, State::Stopped | State::Finished | State::Failed)
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the pipeline's user wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Desired {
    Running,
    Stopped,
}

impl Desired {
    pub fn as_str(self) -> &'static str {
        match self {
            Desired::Running => "Running",
            Desired::Stopped => "Stopped",
        }
    }

    pub fn parse(text: &str) -> Option<Desired> {
        [Desired::Running, Desired::Stopped]
            .into_iter()
            .find(|d| d.as_str() == text)
    }
}

/// How to stop a pipeline, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum StopMode {
    /// A final checkpoint, then end (sinks commit it).
    Checkpoint,
    /// The sources end; the data in flight drains.
    Graceful,
    /// Kill the worker now; the pipeline resumes from its last completed checkpoint.
    Immediate,
}

impl StopMode {
    /// As users spell it.
    pub fn name(self) -> &'static str {
        match self {
            StopMode::Checkpoint => "checkpoint",
            StopMode::Graceful => "graceful",
            StopMode::Immediate => "immediate",
        }
    }
}

/// What a worker runs: the persisted part of a pipeline that a restart may change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub query: String,
    /// The plan's fingerprint.
    pub plan_hash: String,
    pub parallelism: u32,
    pub checkpoint_interval: Duration,
    /// Where its checkpoints are, relative to the daemon's state root (or, for pipelines
    /// stored before relative locations, a full URL).
    pub state_location: String,
    /// The most memory its worker may use, in bytes; 0: no limit.
    pub memory_limit: u64,
}

/// Changes a resume, restart or update makes to the [`Spec`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// A new query and its plan fingerprint.
    pub query: Option<(String, String)>,
    pub parallelism: Option<u32>,
    pub checkpoint_interval: Option<Duration>,
    /// Start without state: checkpoints go to this new location and none is restored.
    pub fresh_state: Option<String>,
    /// 0: no limit.
    pub memory_limit: Option<u64>,
}

impl Changes {
    /// True when it changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == Changes::default()
    }
}

/// A completed checkpoint as its worker reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointInfo {
    pub epoch: u64,
    pub bytes: u64,
    pub duration_ms: u64,
}

/// What a worker tells the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// Its dataflow runs, restored from this checkpoint.
    Running {
        restored: Option<u64>,
    },
    /// Rows of a readable sink (the default sink, `stdout` sinks), as JSON objects.
    Rows {
        sink: String,
        rows: Vec<String>,
    },
    Finished,
    Stopped,
    Failed(String),
    /// May the worker write the MANIFEST of this epoch?
    CommitRequest(u64),
    CheckpointCompleted(CheckpointInfo),
    /// What it measured since its previous report.
    Metrics(MetricsReport),
}

/// What the daemon tells an attached worker after Start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Stop(StopMode),
    /// The answer to a [`Report::CommitRequest`].
    Commit {
        epoch: u64,
        allowed: bool,
    },
    /// Take a checkpoint now.
    Checkpoint,
}

/// Timers the machine arms; each names the generation it was armed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// Start the next generation after a crash.
    Restart { generation: u64 },
    /// Kill a worker whose stop takes too long.
    StopDeadline { generation: u64 },
    /// Stop waiting for the last reports of a worker that exited.
    ReportGrace { generation: u64 },
}

/// Everything that can happen to a pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Schedule a pipeline just submitted.
    Start,
    /// Start a terminal pipeline again from its newest checkpoint, with changes.
    Resume(Changes),
    /// Stop (with a checkpoint when it runs), then start again with changes: `restart` (with
    /// `fresh_state` for `--no-state`) and `update`.
    Restart(Changes),
    Stop(StopMode),
    /// The daemon shuts down: stop with a checkpoint, keep what the user wants.
    Shutdown,
    /// The daemon started and found the pipeline as it was left.
    DaemonRestarted,
    /// Forget a terminal pipeline.
    Delete,
    /// Take a checkpoint now.
    CheckpointNow,
    /// A worker said Hello.
    Attached {
        generation: u64,
    },
    Reported {
        generation: u64,
        report: Report,
    },
    /// A worker's report stream ended.
    ReportsEnded {
        generation: u64,
    },
    /// A worker process exited.
    Exited {
        generation: u64,
        status: String,
    },
    /// A worker process could not be started.
    SpawnFailed {
        generation: u64,
        error: String,
    },
    /// Recording the pipeline in the metadata store failed; `unspawned` is the generation whose
    /// spawn was then skipped.
    StoreFailed {
        error: String,
        unspawned: Option<u64>,
    },
    Fired(Timer),
}

/// What a recorded event is about (what `arroyoctl logs` shows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A state change.
    State,
    /// A failure, with its cause.
    Error,
    /// Something went wrong but was handled.
    Warning,
    /// A crashed worker is restarted.
    Restart,
    Checkpoint,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::State => "state",
            EventKind::Error => "error",
            EventKind::Warning => "warning",
            EventKind::Restart => "restart",
            EventKind::Checkpoint => "checkpoint",
        }
    }
}

/// How the last stop ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopEnd {
    /// The strongest mode asked for.
    pub mode: StopMode,
    /// The stop did what its mode promises: a final checkpoint for `checkpoint` (or nothing
    /// was running), the data drained for `graceful`, the worker killed for `immediate`.
    pub clean: bool,
    /// The checkpoint it resumes from.
    pub epoch: u64,
    pub message: String,
}

/// What the pipeline's task must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Write the machine's persisted fields, and an event with this message. Must succeed
    /// before the effects after it.
    Persist {
        message: String,
        kind: EventKind,
    },
    /// Start a worker process for `generation`.
    Spawn {
        generation: u64,
    },
    /// Answer the Hello of `generation` with Start, then `then_stop` if given.
    Accept {
        generation: u64,
        then_stop: Option<StopMode>,
    },
    /// Refuse the Hello of `generation`.
    Refuse {
        generation: u64,
    },
    Send {
        generation: u64,
        command: Command,
    },
    Kill {
        generation: u64,
    },
    /// End the command stream of `generation`, so that it exits.
    CloseCommands {
        generation: u64,
    },
    Arm {
        timer: Timer,
        after: Duration,
    },
    /// Rows of a readable sink go to the output log.
    AppendRows {
        sink: String,
        rows: Vec<String>,
    },
    /// A new run will append to the output log; followers wait for its rows.
    OpenOutput,
    /// The run of `generation` writes from here: mark it in the output log.
    StartOutput {
        generation: u64,
        restored: Option<u64>,
        fresh: bool,
    },
    /// No row follows: followers end.
    CloseOutput,
    RecordCheckpoint(CheckpointInfo),
    RecordMetrics(MetricsReport),
    /// A crashed worker is restarted (counted).
    Restarted,
    /// The recorded checkpoints belong to a state that was dropped.
    ForgetCheckpoints,
    /// Remove the pipeline.
    Forget,
    /// Something went wrong but was handled; log it as a warning (and record it).
    Warn(String),
}

/// Why a command was refused; the machine is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Resume and Delete need a stopped, finished or failed pipeline.
    #[error("it is {0}: only a stopped, failed or finished pipeline can be resumed or deleted")]
    NotStopped(State),
    /// A checkpoint or restart needs a running pipeline (or a stop is under way).
    #[error("it is {0}")]
    NotRunning(State),
    /// Its previous worker has not exited yet.
    #[error("its previous worker is still exiting")]
    WorkerExiting,
    #[error("the daemon is shutting down")]
    ShuttingDown,
    #[error("it was deleted")]
    Deleted,
}

/// The current generation's worker process, from spawn to exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerSlot {
    pub generation: u64,
    pub attached: bool,
    pub reports_ended: bool,
    /// Its exit status, once it exited.
    pub exited: Option<String>,
    pub killed: bool,
    /// A stop deadline is armed.
    pub(super) deadline: bool,
}

impl WorkerSlot {
    pub(super) fn new(generation: u64) -> WorkerSlot {
        WorkerSlot {
            generation,
            attached: false,
            reports_ended: false,
            exited: None,
            killed: false,
            deadline: false,
        }
    }
}

/// Timeouts the machine arms timers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub stop: Duration,
    /// How long to wait, after a worker exited, for its last reports.
    pub report_grace: Duration,
}
