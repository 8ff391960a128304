//! The checkpoint coordinator of a run: it triggers epochs at the sources, gathers every
//! subtask's snapshot, and writes the epoch (files, then MANIFEST) when all have reported.
//!
//! Protocol, per epoch `N`:
//!
//! 1. The coordinator publishes trigger `N` (with `stop` for a stop with a final checkpoint).
//!    At most one epoch is in flight; a stop waits for the one in flight.
//! 2. Each source, between two batches, snapshots its offsets, reports them and sends
//!    barrier `N` on every output.
//! 3. An operator that has received barrier `N` on some inputs holds back what else comes on
//!    those inputs until all open inputs delivered it (alignment); then it snapshots, reports
//!    and forwards the barrier. With `stop` it then ends without flushing.
//! 4. A subtask that ended reports its final state once; it stands for itself in every later
//!    epoch.
//! 5. With every subtask accounted for, the coordinator asks the [`CommitGate`] (a worker of a
//!    stale generation is refused), writes the epoch and publishes it as completed; sinks then
//!    commit what they staged.
//!
//! When every subtask ended and every source read its input to the end, a last epoch records
//! the final state, so a rerun of a finished pipeline does not redo its work; sinks wait for it
//! before they commit what they staged last.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::error::DataflowError;
use super::layout::{self, File, TopologyNode};
use crate::storage::{CheckpointStore, Manifest};
use crate::task::protocol::{Pending, Report, TaskId};
use crate::task::{Barrier, NodeCounters, StopMode};

/// Decides whether this run may still commit an epoch (false: a newer generation of the
/// pipeline exists).
#[async_trait]
pub trait CommitGate: Send + Sync {
    async fn may_commit(&self, epoch: u64) -> bool;
}

/// Checkpointing of a run.
#[derive(Clone)]
pub struct CheckpointConfig {
    pub store: Arc<CheckpointStore>,
    /// Time between two checkpoints.
    pub interval: Duration,
    /// The checkpoint to restore (from [`CheckpointStore::latest`]), if any.
    pub restore: Option<Manifest>,
    pub gate: Option<Arc<dyn CommitGate>>,
}

/// A checkpoint the run completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompletedCheckpoint {
    pub epoch: u64,
    /// Bytes of state written.
    pub bytes: u64,
    /// From trigger to MANIFEST.
    pub duration: Duration,
    /// The last epoch of a run whose sources all finished.
    pub last: bool,
}

/// Subtasks that ended: their final state, and whether they read their input to the end.
type Ended = BTreeMap<TaskId, (Pending, bool)>;

/// Checkpoints that may fail in a row (the store unreachable for a while) before the run
/// fails.
const TOLERATED_FAILURES: u32 = 3;

/// Why an epoch was not committed.
enum Commit {
    /// A newer generation exists: this run must end.
    Fenced(DataflowError),
    /// Writing it failed.
    Write(DataflowError),
}

/// The coordinator's side of a run.
pub(crate) struct Coordinator {
    pub config: CheckpointConfig,
    /// Every subtask of the run.
    pub tasks: Vec<TaskId>,
    pub sources: Vec<TaskId>,
    /// The nodes, as a checkpoint records them.
    pub topology: Vec<TopologyNode>,
    pub first_epoch: u64,
    pub reports: mpsc::UnboundedReceiver<Report>,
    pub trigger: watch::Sender<Option<Barrier>>,
    pub stop: watch::Receiver<Option<StopMode>>,
    pub completed: watch::Sender<(u64, bool)>,
    pub published: watch::Sender<Option<CompletedCheckpoint>>,
    /// Requests for a checkpoint now (on demand), besides the interval's.
    pub on_demand: mpsc::UnboundedReceiver<()>,
    /// Per node, where its part of each completed checkpoint is recorded.
    pub counters: Vec<Arc<NodeCounters>>,
}

struct InFlight {
    barrier: Barrier,
    started: Instant,
    files: HashMap<TaskId, Pending>,
    /// Per node, ms from the trigger to its last subtask's snapshot so far.
    snapshot_ms: HashMap<usize, u64>,
}

impl Coordinator {
    pub async fn run(mut self) -> Result<(), DataflowError> {
        let mut next = self.first_epoch;
        let mut ticker = tokio::time::interval_at(
            tokio::time::Instant::now() + self.config.interval,
            self.config.interval,
        );
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut in_flight: Option<InFlight> = None;
        let mut ended = Ended::new();
        let mut stop_pending = false;
        let mut stop_sent = false;
        // A checkpoint was asked for now; and whether anyone can still ask.
        let mut wanted = false;
        let mut on_demand_open = true;
        // Checkpoints that failed in a row.
        let mut failures = 0;
        loop {
            if in_flight.is_none() && stop_pending && !stop_sent {
                stop_sent = true;
                in_flight = Some(self.start(next, true));
                next += 1;
            }
            if wanted
                && in_flight.is_none()
                && !stop_pending
                && !self.sources.iter().all(|s| ended.contains_key(s))
            {
                wanted = false;
                in_flight = Some(self.start(next, false));
                next += 1;
                // The next one an interval after this one.
                ticker.reset();
            }
            tokio::select! {
                request = self.on_demand.recv(), if on_demand_open && !stop_pending => {
                    match request {
                        Some(()) => wanted = true,
                        None => on_demand_open = false,
                    }
                }
                _ = ticker.tick(), if in_flight.is_none() && !stop_pending => {
                    if self.sources.iter().all(|s| ended.contains_key(s)) {
                        continue;
                    }
                    in_flight = Some(self.start(next, false));
                    next += 1;
                }
                changed = self.stop.changed(), if !stop_pending => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    if *self.stop.borrow() == Some(StopMode::Checkpoint) {
                        stop_pending = true;
                    }
                }
                report = self.reports.recv() => {
                    let Some(report) = report else {
                        // Every subtask is gone.
                        return self.finish(next, ended, stop_pending).await;
                    };
                    match report {
                        Report::Snapshot { task, epoch, files } => {
                            match in_flight.as_mut() {
                                Some(f) if f.barrier.epoch == epoch => {
                                    let ms = f.started.elapsed().as_millis() as u64;
                                    let node = f.snapshot_ms.entry(task.0).or_default();
                                    *node = (*node).max(ms);
                                    f.files.insert(task, files);
                                }
                                _ => warn!(?task, epoch, "snapshot of an epoch not in flight"),
                            }
                        }
                        Report::Ended { task, files, complete } => {
                            ended.insert(task, (files, complete));
                        }
                    }
                    // Everyone ended (subtasks then wait for the last epoch, not the end of
                    // this channel).
                    let all_ended = self.tasks.iter().all(|t| ended.contains_key(t));
                    let done = in_flight.as_ref().is_some_and(|f| {
                        self.tasks
                            .iter()
                            .all(|t| f.files.contains_key(t) || ended.contains_key(t))
                    });
                    if done {
                        let flight = in_flight.take().expect("an epoch in flight");
                        let (epoch, stop) = (flight.barrier.epoch, flight.barrier.stop);
                        match self.commit(flight, &ended, false).await {
                            Ok(()) => failures = 0,
                            // A store that fails now and then costs an epoch, not the run; a
                            // stop's checkpoint must land.
                            Err(Commit::Write(e)) if !stop && failures < TOLERATED_FAILURES => {
                                failures += 1;
                                warn!(epoch, failures, error = %e, "checkpoint failed; the run goes on");
                            }
                            Err(Commit::Write(e) | Commit::Fenced(e)) => return Err(e),
                        }
                        if stop {
                            // Nothing comes after a stop's checkpoint. Ending here also
                            // releases subtasks that ended earlier and wait for a last epoch
                            // that will not come (their wait sees the channel close).
                            return Ok(());
                        }
                    }
                    if all_ended && in_flight.is_none() {
                        return self.finish(next, ended, stop_pending).await;
                    }
                }
            }
        }
    }

    fn start(&self, epoch: u64, stop: bool) -> InFlight {
        debug!(epoch, stop, "checkpoint triggered");
        let barrier = Barrier { epoch, stop };
        let _ = self.trigger.send(Some(barrier));
        InFlight {
            barrier,
            started: Instant::now(),
            files: HashMap::new(),
            snapshot_ms: HashMap::new(),
        }
    }

    /// Every subtask ended: when every source read to its end (and no stop asked for a
    /// checkpoint), the final state becomes the last epoch.
    async fn finish(self, epoch: u64, ended: Ended, stopping: bool) -> Result<(), DataflowError> {
        let complete = self.tasks.iter().all(|t| ended.contains_key(t))
            && self
                .sources
                .iter()
                .all(|s| ended.get(s).is_some_and(|(_, c)| *c));
        if !complete {
            return Ok(());
        }
        debug!(
            stopping,
            "every source finished: the final state is the last epoch"
        );
        let flight = InFlight {
            barrier: Barrier { epoch, stop: true },
            started: Instant::now(),
            files: HashMap::new(),
            snapshot_ms: HashMap::new(),
        };
        self.commit(flight, &ended, true)
            .await
            .map_err(|e| match e {
                Commit::Write(e) | Commit::Fenced(e) => e,
            })
    }

    async fn commit(&self, flight: InFlight, ended: &Ended, last: bool) -> Result<(), Commit> {
        let epoch = flight.barrier.epoch;
        if let Some(gate) = &self.config.gate
            && !gate.may_commit(epoch).await
        {
            return Err(Commit::Fenced(DataflowError::Fenced { epoch }));
        }
        let mut files = flight.files;
        for (task, (f, _)) in ended {
            files.entry(*task).or_insert_with(|| f.clone());
        }
        let ids: Vec<String> = self.topology.iter().map(|n| n.id.clone()).collect();
        // Encoding is CPU work: on a blocking thread, not on the subtasks' runtime threads.
        let encoded = tokio::task::spawn_blocking(move || {
            files
                .into_iter()
                .map(|(task, p)| layout::encode(&p, &ids).map(|f| (task.0, f)))
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(|e| {
            Commit::Write(DataflowError::Panic(format!(
                "encoding checkpoint {epoch}: {e}"
            )))
        })?
        .map_err(|source| Commit::Write(DataflowError::State { epoch, source }))?;
        let mut node_bytes = vec![0u64; self.counters.len()];
        let mut all: Vec<File> = Vec::new();
        for (node, files) in encoded {
            if let Some(b) = node_bytes.get_mut(node) {
                *b += files.iter().map(|(_, b)| b.len() as u64).sum::<u64>();
            }
            all.extend(files);
        }
        let topology = layout::topology(&self.topology)
            .map_err(|source| Commit::Write(DataflowError::Topology { epoch, source }))?;
        all.push((layout::TOPOLOGY.to_string(), topology));
        let bytes = all.iter().map(|(_, b)| b.len() as u64).sum();
        self.config
            .store
            .write_epoch(epoch, all)
            .await
            .map_err(|source| {
                Commit::Write(DataflowError::Checkpoint {
                    what: format!("writing checkpoint {epoch}"),
                    source,
                })
            })?;
        let done = CompletedCheckpoint {
            epoch,
            bytes,
            duration: flight.started.elapsed(),
            last,
        };
        info!(
            epoch,
            bytes,
            ms = done.duration.as_millis() as u64,
            last,
            "checkpoint completed"
        );
        for (node, counters) in self.counters.iter().enumerate() {
            let ms = flight.snapshot_ms.get(&node).copied().unwrap_or(0);
            counters.checkpointed(node_bytes[node], ms);
        }
        let _ = self.completed.send((epoch, last));
        let _ = self.published.send(Some(done));
        // Completed, not yet reported to the daemon (which records it in its database).
        crate::failpoint::crash_point!("checkpoint_completed");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::dataflow::{Program, RunOutcome, run};
    use crate::task::JobContext;

    /// Counters the bounded test programs write in all.
    const COUNT: u64 = 4000;

    /// Impulse counters into a `single_file` sink: `COUNT` of them at 5000 per second.
    fn program(out: &std::path::Path) -> Program {
        let sql = format!(
            "CREATE TABLE impulse WITH (connector = 'impulse', event_rate = '5000', message_count = '{COUNT}');
             CREATE TABLE out (counter BIGINT UNSIGNED) WITH (connector = 'single_file', path = '{}', type = 'sink');
             INSERT INTO out SELECT counter FROM impulse;",
            out.display()
        );
        crate::sql::plan(&sql).expect("plans").program
    }

    /// Runs (or resumes) until every source finished.
    async fn run_to_end(program: &Program, p: usize, config: CheckpointConfig) {
        let handle = run(program, p, Arc::new(JobContext::default()), Some(config))
            .await
            .unwrap();
        assert_eq!(handle.wait().await.unwrap(), RunOutcome::Finished);
    }

    /// Asserts `counters` has no counter twice; returns them sorted. (Which counters a run
    /// stopped part-way wrote depends on where each source subtask was at the stop.)
    fn no_duplicates(mut counters: Vec<u64>) -> Vec<u64> {
        counters.sort_unstable();
        let twice = counters.windows(2).find(|w| w[0] == w[1]);
        assert!(twice.is_none(), "counter {twice:?} written twice");
        counters
    }

    fn config(store: &Arc<CheckpointStore>, restore: Option<Manifest>) -> CheckpointConfig {
        CheckpointConfig {
            store: store.clone(),
            interval: Duration::from_millis(20),
            restore,
            gate: None,
        }
    }

    fn counters(out: &std::path::Path) -> Vec<u64> {
        std::fs::read_to_string(out)
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["counter"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    }

    /// Runs until `epochs` checkpoints completed, then stops with a checkpoint.
    async fn run_for(program: &Program, p: usize, config: CheckpointConfig, epochs: u64) {
        let handle = run(program, p, Arc::new(JobContext::default()), Some(config))
            .await
            .unwrap();
        let mut done = handle.checkpoints();
        let first = done.borrow().map_or(0, |c| c.epoch);
        done.wait_for(|c| c.is_some_and(|c| c.epoch >= first + epochs))
            .await
            .unwrap();
        handle.stopper().request(StopMode::Checkpoint);
        assert_eq!(handle.wait().await.unwrap(), RunOutcome::Stopped);
    }

    #[tokio::test]
    async fn a_stop_with_checkpoint_ends_subtasks_that_ended_before_it() {
        // `a` ends at once; its subtasks wait for a last epoch the stop will never write.
        let sql =
            "CREATE TABLE a WITH (connector = 'impulse', event_rate = '1000', message_count = '5');
             CREATE TABLE b WITH (connector = 'impulse', event_rate = '1000');
             CREATE TABLE out (counter BIGINT UNSIGNED) WITH (connector = 'blackhole');
             INSERT INTO out SELECT counter FROM a WHERE counter % 2 = 0
             UNION ALL SELECT counter FROM b WHERE counter % 2 = 1;";
        let program = crate::sql::plan(sql).expect("plans").program;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(CheckpointStore::open(dir.path().to_str().unwrap()).unwrap());
        let stopped = tokio::time::timeout(
            Duration::from_secs(20),
            run_for(&program, 2, config(&store, None), 3),
        )
        .await;
        assert!(stopped.is_ok(), "the stop did not end the run");
    }

    #[tokio::test]
    async fn a_stopped_run_restored_at_another_parallelism_writes_every_counter_once() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.json");
        let store =
            Arc::new(CheckpointStore::open(dir.path().join("state").to_str().unwrap()).unwrap());
        let program = program(&out);
        run_for(&program, 2, config(&store, None), 2).await;
        let first = no_duplicates(counters(&out)).len();
        assert!(first > 0 && (first as u64) < COUNT, "{first} rows");
        let latest = store.latest().await.unwrap().expect("a checkpoint");
        run_for(&program, 3, config(&store, Some(latest)), 2).await;
        no_duplicates(counters(&out));
        let latest = store.latest().await.unwrap().expect("a checkpoint");
        run_to_end(&program, 1, config(&store, Some(latest))).await;
        assert_once(&no_duplicates(counters(&out)), COUNT);
    }

    #[tokio::test]
    async fn a_store_that_keeps_failing_fails_the_run_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let store = Arc::new(CheckpointStore::open(state.to_str().unwrap()).unwrap());
        let program = program(&dir.path().join("out.json"));
        let handle = run(
            &program,
            1,
            Arc::new(JobContext::default()),
            Some(config(&store, None)),
        )
        .await
        .unwrap();
        let mut done = handle.checkpoints();
        done.wait_for(Option::is_some).await.unwrap();
        // A file where the checkpoints go: from now on every write fails.
        let checkpoints = state.join("checkpoints");
        std::fs::remove_dir_all(&checkpoints).unwrap();
        std::fs::write(&checkpoints, b"not a directory").unwrap();
        let err = tokio::time::timeout(Duration::from_secs(30), handle.wait())
            .await
            .expect("the run fails")
            .unwrap_err();
        // A store that fails is the user's to fix, and the message says which.
        assert_eq!(
            err.kind(),
            crate::task::ErrorKind::User(crate::task::UserFault::Storage)
        );
        let message = crate::task::error_chain(&err);
        assert!(message.contains("writing checkpoint"), "{message}");
        assert!(message.contains("checkpoints"), "{message}");
    }

    struct Refuse;

    #[async_trait]
    impl CommitGate for Refuse {
        async fn may_commit(&self, _epoch: u64) -> bool {
            false
        }
    }

    #[tokio::test]
    async fn a_fenced_run_never_writes_a_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Arc::new(CheckpointStore::open(dir.path().join("state").to_str().unwrap()).unwrap());
        let program = program(&dir.path().join("out.json"));
        let mut fenced = config(&store, None);
        fenced.gate = Some(Arc::new(Refuse));
        let handle = run(&program, 1, Arc::new(JobContext::default()), Some(fenced))
            .await
            .unwrap();
        let err = tokio::time::timeout(Duration::from_secs(30), handle.wait())
            .await
            .expect("the run fails")
            .unwrap_err();
        assert!(err.to_string().contains("may not be committed"), "{err}");
        assert_eq!(err.kind(), crate::task::ErrorKind::Superseded);
        assert_eq!(store.latest().await.unwrap(), None);
    }

    /// Asserts sorted `counters` are 0..count, naming the first that is not.
    fn assert_once(counters: &[u64], count: u64) {
        let wrong = counters.iter().enumerate().find(|(i, c)| **c != *i as u64);
        assert!(
            wrong.is_none() && counters.len() as u64 == count,
            "{} rows of {count}; first wrong (row, counter): {wrong:?}",
            counters.len()
        );
    }

    /// The counters in the visible JSON files under `dir` (staged files are hidden).
    fn committed(dir: &std::path::Path) -> Vec<u64> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with('.') || e.path().is_dir() {
                continue;
            }
            out.extend(counters(&e.path()));
        }
        out
    }

    #[tokio::test]
    async fn a_graceful_stop_commits_nothing_past_the_last_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let files = dir.path().join("files");
        let sql = format!(
            "CREATE TABLE impulse WITH (connector = 'impulse', event_rate = '5000', message_count = '{COUNT}');
             CREATE TABLE out (counter BIGINT UNSIGNED) WITH (connector = 'filesystem', type = 'sink', path = '{}', format = 'json', 'rolling_policy.file_size' = '1kb');
             INSERT INTO out SELECT counter FROM impulse;",
            files.display()
        );
        let program = crate::sql::plan(&sql).expect("plans").program;
        let store =
            Arc::new(CheckpointStore::open(dir.path().join("state").to_str().unwrap()).unwrap());
        // Drained past its last checkpoint: what came after it must stay invisible.
        let handle = run(
            &program,
            2,
            Arc::new(JobContext::default()),
            Some(config(&store, None)),
        )
        .await
        .unwrap();
        let mut done = handle.checkpoints();
        done.wait_for(|c| c.is_some_and(|c| c.epoch >= 2))
            .await
            .unwrap();
        handle.stopper().request(StopMode::Graceful);
        assert_eq!(handle.wait().await.unwrap(), RunOutcome::Stopped);
        let first = no_duplicates(committed(&files));
        assert!((first.len() as u64) < COUNT, "{} rows", first.len());
        // The rerun from the last checkpoint writes the rest once.
        let latest = store.latest().await.unwrap().expect("a checkpoint");
        run_to_end(&program, 3, config(&store, Some(latest))).await;
        assert_once(&no_duplicates(committed(&files)), COUNT);
    }

    /// `program(out)`'s query after another one that writes 10 counters into `other`: every
    /// node of `program(out)` has another index here, and the same id.
    fn with_another_query_first(out: &std::path::Path, other: &std::path::Path) -> Program {
        let sql = format!(
            "CREATE TABLE early WITH (connector = 'impulse', event_rate = '1000', message_count = '10');
             CREATE TABLE other (counter BIGINT UNSIGNED) WITH (connector = 'single_file', path = '{}', type = 'sink');
             INSERT INTO other SELECT counter FROM early WHERE counter >= 0;
             CREATE TABLE impulse WITH (connector = 'impulse', event_rate = '5000', message_count = '{COUNT}');
             CREATE TABLE out (counter BIGINT UNSIGNED) WITH (connector = 'single_file', path = '{}', type = 'sink');
             INSERT INTO out SELECT counter FROM impulse;",
            other.display(),
            out.display()
        );
        crate::sql::plan(&sql).expect("plans").program
    }

    #[tokio::test]
    async fn node_ids_stay_when_other_parts_of_the_plan_change() {
        let dir = tempfile::tempdir().unwrap();
        let (out, other) = (dir.path().join("out.json"), dir.path().join("other.json"));
        let alone = program(&out);
        let after = with_another_query_first(&out, &other);
        for (i, node) in alone.nodes.iter().enumerate() {
            let same = after.nodes.iter().position(|n| n.id == node.id);
            let same = same.unwrap_or_else(|| panic!("{node:?} is not in {after:?}"));
            assert_ne!(same, i, "{node:?} has the same index");
        }
        // A change of the query itself changes the ids from that node down, not above it.
        let changed = crate::sql::plan(&format!(
            "CREATE TABLE impulse WITH (connector = 'impulse', event_rate = '5000', message_count = '{COUNT}');
             CREATE TABLE out (counter BIGINT UNSIGNED) WITH (connector = 'single_file', path = '{}', type = 'sink');
             INSERT INTO out SELECT counter + 1 FROM impulse;",
            out.display()
        ))
        .expect("plans")
        .program;
        let ids = |p: &Program| p.nodes.iter().map(|n| n.id.clone()).collect::<Vec<_>>();
        let (before, now) = (ids(&alone), ids(&changed));
        assert_eq!(before[0], now[0], "the source");
        assert_ne!(before[1], now[1], "the projection");
        assert_eq!(before.last(), now.last(), "the sink, by its table's name");
    }

    #[tokio::test]
    async fn a_checkpoint_restores_into_a_plan_with_a_query_added_before() {
        let dir = tempfile::tempdir().unwrap();
        let (out, other) = (dir.path().join("out.json"), dir.path().join("other.json"));
        let store =
            Arc::new(CheckpointStore::open(dir.path().join("state").to_str().unwrap()).unwrap());
        run_for(&program(&out), 2, config(&store, None), 2).await;
        let first = no_duplicates(counters(&out)).len();
        assert!(first > 0 && (first as u64) < COUNT, "{first} rows");
        let latest = store.latest().await.unwrap().expect("a checkpoint");
        let grown = with_another_query_first(&out, &other);
        run_to_end(&grown, 3, config(&store, Some(latest))).await;
        assert_once(&no_duplicates(counters(&out)), COUNT);
        assert_once(&no_duplicates(counters(&other)), 10);
    }

    #[tokio::test]
    async fn a_plan_that_drops_a_node_with_state_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (out, other) = (dir.path().join("out.json"), dir.path().join("other.json"));
        let store =
            Arc::new(CheckpointStore::open(dir.path().join("state").to_str().unwrap()).unwrap());
        run_for(
            &with_another_query_first(&out, &other),
            1,
            config(&store, None),
            2,
        )
        .await;
        let latest = store.latest().await.unwrap().expect("a checkpoint");
        let err = match run(
            &program(&out),
            1,
            Arc::new(JobContext::default()),
            Some(config(&store, Some(latest))),
        )
        .await
        {
            Ok(_) => panic!("a checkpoint with the state of a dropped query restored"),
            Err(e) => e,
        };
        assert!(matches!(err, DataflowError::Incompatible { .. }), "{err}");
        let message = err.to_string();
        assert!(message.contains("this query does not have"), "{message}");
        assert!(
            message.contains("source:early") || message.contains("sink:other"),
            "{message}"
        );
    }
}
