//! Running a planned query: the face the engine shows the process that embeds it (the
//! daemon's worker, tests).
//!
//! 1. [`crate::sql::plan`] turns the SQL text into a [`PlannedQuery`].
//! 2. [`start`] runs it at a parallelism: with [`Checkpointing`], it finds the newest complete
//!    checkpoint under the state location, restores it, and takes checkpoints every interval,
//!    each one allowed by the [`CommitGate`] before its MANIFEST is written.
//! 3. The [`Job`] reports completed checkpoints, takes stop requests ([`Stopper`]) and ends
//!    with an [`Outcome`] or a [`DataflowError`] whose [`kind`](DataflowError::kind) says
//!    whose fault it is.
//!
//! [`checkpoints`] lists what a state location holds. Nothing here blocks the runtime.

use std::sync::Arc;
use std::time::Duration;

use datafusion::execution::memory_pool::{GreedyMemoryPool, MemoryPool};
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use crate::dataflow::{self, CheckpointConfig, RunHandle};
use crate::storage::{CheckpointStore, Manifest, Passed, Restorable, StorageError};
use crate::task::{JobContext, MemoryBudget};

pub use crate::dataflow::{
    CheckpointTrigger, CommitGate, CompletedCheckpoint, DataflowError, EdgeShape, NodeMetrics,
    NodeShape, Role, Route, RunOutcome as Outcome, Shape, StopMode, Stopper,
};
pub use crate::sql::PlannedQuery;
pub use crate::task::NodeFigures;

/// How a job is run.
#[derive(Clone, Default)]
pub struct JobSpec {
    /// Subtasks per node (nodes that need one, such as a file source, have one).
    pub parallelism: usize,
    /// Checkpoints of the job; None: it takes none and restores nothing.
    pub checkpointing: Option<Checkpointing>,
    /// Where the default sink (a bare SELECT) sends its rows, as JSON objects in batches;
    /// None: they are dropped.
    pub preview: Option<mpsc::Sender<Vec<String>>>,
    /// The pipeline's id: it names what the job leaves on outside systems that must survive a
    /// restart (a Kafka sink's transactional ids, a Kafka source's consumer group). Empty
    /// outside a pipeline.
    pub pipeline: String,
    /// The pipeline's memory limit, in bytes: the operators' state may hold
    /// [`STATE_SHARE_PERCENT`] of it, through a DataFusion memory pool; a subtask whose state
    /// would grow past that fails the run. None: no limit.
    pub memory_limit: Option<u64>,
}

/// The share of a memory limit that operators' state may hold; the rest is for batches in
/// flight, buffers, the runtime and the process itself (which the daemon's worker watches as
/// a whole).
pub const STATE_SHARE_PERCENT: u64 = 50;

/// Where and how often a job checkpoints.
#[derive(Clone)]
pub struct Checkpointing {
    /// The pipeline's state location: a path or a `file://`, `s3://`, `gs://`, `az://` URL.
    pub state: String,
    /// Time between two checkpoints.
    pub interval: Duration,
    /// Asked before every MANIFEST; None: every checkpoint may be written.
    pub gate: Option<Arc<dyn CommitGate>>,
    /// The newest epoch the embedding process knows completed (0: none). A state location
    /// whose newest complete checkpoint is older is refused ([`DataflowError::Missing`]):
    /// starting from it would repeat or lose what sinks committed since.
    pub expected_epoch: u64,
}

/// A running job.
pub struct Job {
    handle: RunHandle,
}

/// Starts `query` as `spec` says, on the current runtime.
pub async fn start(query: &PlannedQuery, spec: JobSpec) -> Result<Job, DataflowError> {
    let checkpoints = match spec.checkpointing {
        None => None,
        Some(c) => {
            let failed = |source| DataflowError::Checkpoint {
                what: format!("checkpoints at {}", c.state),
                source,
            };
            let store = CheckpointStore::open(&c.state).map_err(failed)?;
            let found = store.newest_valid().await.map_err(failed)?;
            let restore = choose_restore(&store, found, c.expected_epoch, &query.program)?;
            Some(CheckpointConfig {
                store: Arc::new(store),
                interval: c.interval,
                restore,
                gate: c.gate,
            })
        }
    };
    debug!(parallelism = spec.parallelism, plan = %query.program.describe(), "starting a job");
    let memory = spec.memory_limit.map(|limit| {
        let state = (u128::from(limit) * u128::from(STATE_SHARE_PERCENT) / 100) as u64;
        let pool: Arc<dyn MemoryPool> = Arc::new(GreedyMemoryPool::new(state as usize));
        MemoryBudget { pool, limit, state }
    });
    let context = Arc::new(JobContext {
        pipeline: spec.pipeline,
        preview: spec.preview,
        memory,
    });
    let handle = dataflow::run(&query.program, spec.parallelism, context, checkpoints).await?;
    Ok(Job { handle })
}

/// The checkpoint to restore out of what `store` holds: the newest valid one. Falling back
/// past a corrupt checkpoint (one with a valid MANIFEST whose file fails its check, or one the
/// metadata says completed that is no checkpoint now) is allowed only when every sink of
/// `program` rewinds, and is said in a WARN naming both. Epochs newer than `expected_epoch`
/// without a MANIFEST are interrupted checkpoints, passed over silently.
fn choose_restore(
    store: &CheckpointStore,
    found: Restorable,
    expected_epoch: u64,
    program: &crate::dataflow::Program,
) -> Result<Option<Manifest>, DataflowError> {
    let location = store.display().to_string();
    if let Some(m) = &found.manifest
        && !found.unlisted.is_empty()
    {
        warn!(
            epoch = m.epoch,
            "checkpoint {} holds files its MANIFEST does not list, which are ignored: {}",
            m.epoch,
            found.unlisted.join(", ")
        );
    }
    let corrupt: Vec<&Passed> = found
        .passed
        .iter()
        .filter(|p| p.complete || p.epoch <= expected_epoch)
        .collect();
    let epoch = found.manifest.as_ref().map_or(0, |m| m.epoch);
    let Some(newest_corrupt) = corrupt.first() else {
        if epoch < expected_epoch {
            return Err(DataflowError::Missing {
                expected: expected_epoch,
                location,
                held: match epoch {
                    0 => "no complete checkpoint".to_string(),
                    n => format!("only checkpoints up to {n}"),
                },
            });
        }
        return Ok(found.manifest);
    };
    let described = corrupt
        .iter()
        .map(|p| {
            format!(
                "checkpoint {} under {location} is corrupt: {}",
                p.epoch, p.reason
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    let refuse = |why: String| DataflowError::NoFallback {
        corrupt: described.clone(),
        why,
    };
    if newest_corrupt.epoch < expected_epoch {
        // The one the metadata knows is not even there.
        return Err(DataflowError::Missing {
            expected: expected_epoch,
            location,
            held: format!("only checkpoints up to {}", newest_corrupt.epoch),
        });
    }
    let Some(manifest) = found.manifest else {
        return Err(refuse(
            "no older valid checkpoint remains to restore instead".to_string(),
        ));
    };
    let committing = program.committing_sinks();
    if !committing.is_empty() {
        return Err(refuse(format!(
            "the older checkpoint {epoch} is valid, but {} committed output past it, which restoring it would repeat; restore a backup of the state, or start afresh",
            committing.join(", ")
        )));
    }
    warn!(
        corrupt = %described,
        restored = epoch,
        "falling back to the newest valid checkpoint, {epoch}: every sink rewinds to it"
    );
    Ok(Some(manifest))
}

impl Job {
    /// The epoch the job was restored from.
    pub fn restored(&self) -> Option<u64> {
        self.handle.restored()
    }

    /// The newest checkpoint the job completed (None until one does).
    pub fn checkpoints(&self) -> watch::Receiver<Option<CompletedCheckpoint>> {
        self.handle.checkpoints()
    }

    /// Its operators (nodes) in topological order, with their counters (totals since the job
    /// started, read without stopping it).
    pub fn operators(&self) -> Vec<NodeMetrics> {
        self.handle.nodes().to_vec()
    }

    /// What asks for a checkpoint now, besides the interval's; it completes like those (see
    /// [`Job::checkpoints`]).
    pub fn checkpoint_trigger(&self) -> CheckpointTrigger {
        self.handle.checkpoint_trigger()
    }

    /// What asks the job to stop, from anywhere.
    pub fn stopper(&self) -> Stopper {
        self.handle.stopper()
    }

    /// Waits for the job to end: its sources finished, it was stopped, or it failed.
    pub async fn wait(self) -> Result<Outcome, DataflowError> {
        self.handle.wait().await
    }
}

/// The epochs of the complete checkpoints under state location `state`, newest first.
pub async fn checkpoints(state: &str) -> Result<Vec<u64>, StorageError> {
    let store = CheckpointStore::open(state)?;
    Ok(store.list().await?.iter().map(|m| m.epoch).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts the rows that arrive on `rx` until it closes.
    fn count(mut rx: mpsc::Receiver<Vec<String>>) -> tokio::task::JoinHandle<usize> {
        tokio::spawn(async move {
            let mut n = 0;
            while let Some(batch) = rx.recv().await {
                n += batch.len();
            }
            n
        })
    }

    #[tokio::test]
    async fn a_job_checkpoints_under_its_state_location_and_restores_from_it() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state").display().to_string();
        // Slow enough (2 s) that a checkpoint completes before the source ends, even on a busy box.
        let sql = "CREATE TABLE impulse WITH (connector = 'impulse', event_rate = '500', message_count = '1000');
                   SELECT counter FROM impulse;";
        let query = crate::sql::plan(sql).expect("plans");
        let spec = |preview| JobSpec {
            parallelism: 2,
            checkpointing: Some(Checkpointing {
                state: state.clone(),
                interval: Duration::from_millis(20),
                gate: None,
                expected_epoch: 0,
            }),
            preview: Some(preview),
            ..JobSpec::default()
        };
        let (tx, rx) = mpsc::channel(16);
        let (job, before) = (start(&query, spec(tx)).await.unwrap(), count(rx));
        assert_eq!(job.restored(), None);
        // A deadline, so a job that ends without a checkpoint fails the test instead of hanging it.
        tokio::time::timeout(
            Duration::from_secs(60),
            job.checkpoints().wait_for(Option::is_some),
        )
        .await
        .expect("a checkpoint completes within a minute")
        .unwrap();
        job.stopper().request(StopMode::Checkpoint);
        assert_eq!(job.wait().await.unwrap(), Outcome::Stopped);
        let listed = checkpoints(&state).await.unwrap();
        assert!(!listed.is_empty());

        let (tx, rx) = mpsc::channel(16);
        let (job, after) = (start(&query, spec(tx)).await.unwrap(), count(rx));
        assert_eq!(job.restored(), Some(listed[0]));
        assert_eq!(job.wait().await.unwrap(), Outcome::Finished);
        // The default sink's rows after a stop with a checkpoint: each once.
        assert_eq!(before.await.unwrap() + after.await.unwrap(), 1000);
    }

    #[tokio::test]
    async fn a_checkpoint_on_demand_completes_long_before_the_interval_and_nodes_count_rows() {
        let dir = tempfile::tempdir().unwrap();
        let query = crate::sql::plan(
            "CREATE TABLE impulse WITH (connector = 'impulse', event_rate = '1000');
             SELECT counter FROM impulse WHERE counter % 2 = 0;",
        )
        .expect("plans");
        let (tx, rx) = mpsc::channel(16);
        let spec = JobSpec {
            parallelism: 1,
            checkpointing: Some(Checkpointing {
                state: dir.path().display().to_string(),
                interval: Duration::from_secs(3600),
                gate: None,
                expected_epoch: 0,
            }),
            preview: Some(tx),
            pipeline: String::new(),
            memory_limit: None,
        };
        let job = start(&query, spec).await.unwrap();
        let rows = count(rx);
        let operators = job.operators();
        let (first, last) = (&operators[0], operators.last().unwrap());
        let within = Duration::from_secs(60);
        let counted = async {
            while first.counters.read().rows_out == 0 || last.counters.read().rows_in == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(within, counted)
            .await
            .expect("rows counted within a minute");
        assert!(job.checkpoint_trigger().request());
        let done = tokio::time::timeout(within, job.checkpoints().wait_for(Option::is_some))
            .await
            .expect("the checkpoint asked for completes within a minute, not an hour")
            .unwrap()
            .expect("checked");
        assert!(!done.last);
        // The source's part of it is recorded with its node.
        assert!(first.counters.read().checkpoint_bytes > 0);
        job.stopper().request(StopMode::Immediate);
        job.wait().await.unwrap();
        let (source, sink) = (first.counters.read(), last.counters.read());
        assert_eq!(source.rows_in, 0);
        // The filter halves the rows between the source and the sink.
        assert!(sink.rows_in <= source.rows_out, "{source:?} {sink:?}");
        assert!(rows.await.unwrap() > 0);
    }

    #[tokio::test]
    async fn a_location_without_the_checkpoint_known_to_have_completed_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let query = crate::sql::plan(
            "CREATE TABLE impulse WITH (connector = 'impulse', event_rate = '10', message_count = '10');
             SELECT counter FROM impulse;",
        )
        .expect("plans");
        let spec = JobSpec {
            parallelism: 1,
            checkpointing: Some(Checkpointing {
                state: dir.path().display().to_string(),
                interval: Duration::from_secs(1),
                gate: None,
                expected_epoch: 4,
            }),
            preview: None,
            ..JobSpec::default()
        };
        let err = match start(&query, spec).await {
            Ok(_) => panic!("a job started over"),
            Err(e) => e,
        };
        assert_eq!(
            err.kind(),
            crate::task::ErrorKind::User(crate::task::UserFault::Storage)
        );
        assert!(err.to_string().contains("(the metadata says so)"), "{err}");
        assert!(err.to_string().contains("no complete checkpoint"), "{err}");
    }

    #[tokio::test]
    async fn state_beyond_the_memory_limit_fails_the_job_naming_the_limit() {
        // Every counter is a group of its own: the state grows without end.
        let query = crate::sql::plan(
            "CREATE TABLE impulse WITH (connector = 'impulse', event_rate = '10000000');
             SELECT counter, count(*) AS n FROM impulse GROUP BY counter;",
        )
        .expect("plans");
        let spec = JobSpec {
            parallelism: 2,
            memory_limit: Some(8 << 20),
            ..JobSpec::default()
        };
        let job = start(&query, spec).await.unwrap();
        let failed = tokio::time::timeout(Duration::from_secs(120), job.wait())
            .await
            .expect("fails within two minutes")
            .expect_err("the state outgrows the limit");
        let message = crate::error_chain(&failed);
        assert!(
            message.contains("went over its memory limit of 8 MiB")
                && message.contains("state may hold 4 MiB of it"),
            "{message}"
        );
        assert_eq!(
            failed.kind(),
            crate::ErrorKind::User(crate::UserFault::BadOption),
            "{message}"
        );
    }
}
