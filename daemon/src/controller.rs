//! The controller: keeps each pipeline's desired state (Running or Stopped) apart from its
//! actual state and drives workers to match.
//!
//! Protocol with a worker:
//!
//! 1. Scheduling bumps the pipeline's persisted generation, then spawns
//!    `arroyod worker --socket S --pipeline ID --generation G`.
//! 2. The worker attaches to the `WorkerControl` service and says Hello; a Hello for any
//!    generation but the current one is refused, so a stale worker can never report or commit.
//! 3. The controller answers Start; the worker reports Running, streams rows of the default
//!    sink, and ends with Finished, Stopped or Failed.
//! 4. Stop sends Stop to the worker; a worker that has not stopped after [`STOP_TIMEOUT`] is
//!    killed, with a warning. A worker process that exits without a final report leaves its
//!    pipeline Failed (or Stopped when a stop was requested).
//!
//! The controller never blocks the runtime: SQLite goes through sqlx, planning through
//! `spawn_blocking`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arroyod_engine::sql::{PlannedQuery, SqlError};
use arroyod_proto::state::{self, is_terminal};
use arroyod_proto::{StopMode, WorkerCommand, worker_command};
use tokio::process::Command;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

use crate::store::{CheckpointRow, PipelineRow, Store, StoreError, now_rfc3339};
use crate::tail::{DEFAULT_CAPACITY, TailBuffer};

/// How long a stop may take before the worker is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// Restarts of a crashed worker allowed within [`RESTART_WINDOW`] before the pipeline fails.
pub const RESTART_BUDGET: usize = 5;
pub const RESTART_WINDOW: Duration = Duration::from_secs(600);
/// The first restart's delay; each further restart in the window doubles it.
const RESTART_BACKOFF: Duration = Duration::from_millis(500);
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// How long to wait, after a worker exited, for its last reports to arrive.
const REPORT_GRACE: Duration = Duration::from_secs(5);

pub const DESIRED_RUNNING: &str = "Running";
pub const DESIRED_STOPPED: &str = "Stopped";

/// Errors of the controller's operations.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The query does not plan; every error is listed.
    #[error("the query has errors")]
    InvalidQuery(Vec<SqlError>),
    /// No pipeline has this id or name.
    #[error("no pipeline with id or name '{0}'")]
    NotFound(String),
    /// The daemon is shutting down and takes no new pipelines.
    #[error("the daemon is shutting down")]
    ShuttingDown,
    /// The metadata store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A worker process could not be started.
    #[error("starting a worker process")]
    Spawn(#[source] std::io::Error),
    /// The pipeline is not stopped, so it cannot be resumed.
    #[error("pipeline '{0}' is {1}: only a stopped, failed or finished pipeline can be resumed")]
    NotStopped(String, String),
}

/// What the controller gives every pipeline.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Pipelines' checkpoints go under `<state_root>/<pipeline id>`.
    pub state_root: String,
    /// The default time between checkpoints.
    pub checkpoint_interval: Duration,
}

impl Settings {
    fn state_url(&self, id: &str) -> String {
        format!("{}/{id}", self.state_root.trim_end_matches('/'))
    }
}

/// Commands to a worker, as the gRPC response stream carries them.
pub type CommandRx = mpsc::Receiver<Result<WorkerCommand, tonic::Status>>;

/// The current worker of a pipeline.
struct Worker {
    generation: u64,
    pid: u32,
    /// Commands to the worker, once it has attached.
    commands: Option<mpsc::Sender<Result<WorkerCommand, tonic::Status>>>,
    /// Kills the worker process.
    kill: Option<oneshot::Sender<()>>,
    /// True once the worker's report stream has ended.
    reports_done: watch::Receiver<bool>,
    reports_done_tx: watch::Sender<bool>,
}

/// A pipeline the daemon knows, with its live parts.
pub struct Pipeline {
    row: Mutex<PipelineRow>,
    /// When its worker was restarted after a crash, within the restart window.
    restarts: Mutex<Vec<std::time::Instant>>,
    pub tail: TailBuffer,
    state: watch::Sender<String>,
    worker: Mutex<Option<Worker>>,
    /// The newest completed checkpoint's epoch (0: none yet).
    last_checkpoint: AtomicU64,
}

impl Pipeline {
    fn new(row: PipelineRow) -> Arc<Pipeline> {
        let tail = TailBuffer::new(DEFAULT_CAPACITY);
        if is_terminal(&row.state) {
            tail.close();
        }
        Arc::new(Pipeline {
            state: watch::channel(row.state.clone()).0,
            row: Mutex::new(row),
            restarts: Mutex::new(Vec::new()),
            tail,
            worker: Mutex::new(None),
            last_checkpoint: AtomicU64::new(0),
        })
    }

    /// The newest completed checkpoint's epoch this daemon heard of (0: none).
    pub fn last_checkpoint(&self) -> u64 {
        self.last_checkpoint.load(Ordering::SeqCst)
    }

    /// The delay before restarting a crashed worker, or None when the restart budget is used
    /// up; counts the restart.
    fn restart_delay(&self) -> Option<Duration> {
        let mut restarts = self.restarts.lock().expect("restarts lock");
        let now = std::time::Instant::now();
        restarts.retain(|t| now.duration_since(*t) < RESTART_WINDOW);
        if restarts.len() >= RESTART_BUDGET {
            return None;
        }
        let delay = RESTART_BACKOFF
            .saturating_mul(1 << restarts.len())
            .min(RESTART_BACKOFF_MAX);
        restarts.push(now);
        Some(delay)
    }

    pub fn row(&self) -> PipelineRow {
        self.row.lock().expect("pipeline lock").clone()
    }

    pub fn worker_pid(&self) -> u32 {
        self.worker
            .lock()
            .expect("worker lock")
            .as_ref()
            .map_or(0, |w| w.pid)
    }

    /// Waits until the pipeline is in a terminal state; returns it.
    pub async fn wait_terminal(&self) -> String {
        let mut rx = self.state.subscribe();
        let state = rx.wait_for(|s| is_terminal(s)).await.map(|s| s.clone());
        state.unwrap_or_else(|_| self.row().state)
    }
}

pub struct Controller {
    store: Store,
    exe: PathBuf,
    worker_socket: PathBuf,
    pipelines: Mutex<HashMap<String, Arc<Pipeline>>>,
    shutting_down: std::sync::atomic::AtomicBool,
    ids: AtomicU64,
    /// Worker processes not yet reaped.
    live_workers: watch::Sender<usize>,
    settings: Settings,
    /// Counts completed checkpoints, so that a metadata snapshot follows them.
    checkpointed: watch::Sender<u64>,
}

fn new_id(counter: u64) -> String {
    use std::hash::BuildHasher;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let h = std::collections::hash_map::RandomState::new().hash_one((nanos, counter));
    format!("{:012x}", h >> 16)
}

/// Plans `query` off the runtime.
pub async fn plan(query: String) -> Result<PlannedQuery, Vec<SqlError>> {
    tokio::task::spawn_blocking(move || arroyod_engine::sql::plan(&query))
        .await
        .unwrap_or_else(|e| {
            Err(vec![SqlError {
                message: format!("planning panicked: {e}"),
                line: 0,
                column: 0,
            }])
        })
}

impl Controller {
    /// Loads every pipeline; those that were active when the daemon went away are marked
    /// Stopped (resuming them needs checkpoints).
    pub async fn new(
        store: Store,
        exe: PathBuf,
        worker_socket: PathBuf,
        settings: Settings,
    ) -> Result<Arc<Controller>, StoreError> {
        let mut pipelines = HashMap::new();
        for mut row in store.list().await? {
            if row.state_url.is_empty() {
                // A pipeline from before checkpoints: from now on it takes them.
                row.state_url = settings.state_url(&row.id);
                store
                    .update(&row, "checkpoints go to the daemon's state_url")
                    .await?;
            }
            if !is_terminal(&row.state) {
                warn!(pipeline = %row.id, state = %row.state, "pipeline was active when the daemon went away; marking it Stopped");
                row.state = state::STOPPED.to_string();
                row.updated_at = now_rfc3339();
                store
                    .update(&row, "the daemon restarted while the pipeline ran")
                    .await?;
            }
            let id = row.id.clone();
            let p = Pipeline::new(row);
            if let Some(last) = store.checkpoints(&id).await?.first() {
                p.last_checkpoint.store(last.epoch, Ordering::SeqCst);
            }
            pipelines.insert(id, p);
        }
        Ok(Arc::new(Controller {
            store,
            exe,
            worker_socket,
            pipelines: Mutex::new(pipelines),
            shutting_down: false.into(),
            ids: AtomicU64::new(0),
            live_workers: watch::channel(0).0,
            settings,
            checkpointed: watch::channel(0).0,
        }))
    }

    /// Changes with every completed checkpoint of any pipeline.
    pub fn checkpointed(&self) -> watch::Receiver<u64> {
        self.checkpointed.subscribe()
    }

    /// Schedules every pipeline that should run but does not: after a daemon restart (also
    /// after kill -9). Each worker restores the pipeline's newest checkpoint.
    pub async fn resume_all(self: &Arc<Self>) {
        for p in self.list() {
            let row = p.row();
            let resumable = row.desired == DESIRED_RUNNING
                && row.state != state::FINISHED
                && row.state != state::FAILED;
            if resumable {
                info!(pipeline = %row.id, name = %row.name, "resuming after a daemon restart");
                if let Err(e) = self.schedule(&p).await {
                    let why = format!("resuming after a daemon restart failed: {e}");
                    let _ = self.set_state(&p, state::FAILED, Some(&why), &why).await;
                }
            }
        }
    }

    /// The metadata store; the daemon closes it after [`Controller::shutdown`].
    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn find(&self, id_or_name: &str) -> Result<Arc<Pipeline>, ControllerError> {
        let pipelines = self.pipelines.lock().expect("pipelines lock");
        if let Some(p) = pipelines.get(id_or_name) {
            return Ok(p.clone());
        }
        pipelines
            .values()
            .find(|p| p.row().name == id_or_name)
            .cloned()
            .ok_or_else(|| ControllerError::NotFound(id_or_name.to_string()))
    }

    pub fn list(&self) -> Vec<Arc<Pipeline>> {
        let mut all: Vec<_> = self
            .pipelines
            .lock()
            .expect("pipelines lock")
            .values()
            .cloned()
            .collect();
        all.sort_by_key(|p| {
            let r = p.row();
            (r.created_at, r.id)
        });
        all
    }

    /// Plans, stores and schedules a new pipeline.
    pub async fn submit(
        self: &Arc<Self>,
        query: String,
        name: String,
        parallelism: u32,
        checkpoint_interval: Option<Duration>,
    ) -> Result<Arc<Pipeline>, ControllerError> {
        let planned = plan(query.clone())
            .await
            .map_err(ControllerError::InvalidQuery)?;
        self.submit_planned(
            query,
            planned.fingerprint,
            name,
            parallelism,
            checkpoint_interval,
        )
        .await
    }

    /// [`Controller::submit`] of a query already planned, whose plan fingerprint is
    /// `plan_hash`.
    pub async fn submit_planned(
        self: &Arc<Self>,
        query: String,
        plan_hash: String,
        name: String,
        parallelism: u32,
        checkpoint_interval: Option<Duration>,
    ) -> Result<Arc<Pipeline>, ControllerError> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(ControllerError::ShuttingDown);
        }
        let id = new_id(self.ids.fetch_add(1, Ordering::Relaxed));
        let name = if name.trim().is_empty() {
            format!("pipeline-{}", &id[..6])
        } else {
            name.trim().to_string()
        };
        let now = now_rfc3339();
        let row = PipelineRow {
            id: id.clone(),
            name,
            query,
            parallelism: parallelism.max(1),
            desired: DESIRED_RUNNING.into(),
            state: state::CREATED.into(),
            failure: String::new(),
            generation: 0,
            created_at: now.clone(),
            updated_at: now,
            checkpoint_interval_ms: checkpoint_interval
                .unwrap_or(self.settings.checkpoint_interval)
                .as_millis()
                .max(1) as u64,
            plan_hash,
            state_url: self.settings.state_url(&id),
        };
        self.store.insert(&row).await?;
        info!(pipeline = %row.id, name = %row.name, parallelism = row.parallelism, "pipeline submitted");
        let pipeline = Pipeline::new(row);
        self.pipelines
            .lock()
            .expect("pipelines lock")
            .insert(id, pipeline.clone());
        self.schedule(&pipeline).await?;
        Ok(pipeline)
    }

    /// Starts a stopped, failed or finished pipeline again from its newest checkpoint; with
    /// `update`, first replaces its query (same plan fingerprint) and parallelism.
    pub async fn resume(
        self: &Arc<Self>,
        id_or_name: &str,
        update: Option<(String, u32)>,
    ) -> Result<Arc<Pipeline>, ControllerError> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(ControllerError::ShuttingDown);
        }
        let p = self.find(id_or_name)?;
        let row = p.row();
        if !is_terminal(&row.state) {
            return Err(ControllerError::NotStopped(row.name, row.state));
        }
        {
            let mut row = p.row.lock().expect("pipeline lock");
            row.desired = DESIRED_RUNNING.into();
            if let Some((query, parallelism)) = update {
                row.query = query;
                row.parallelism = parallelism.max(1);
            }
        }
        p.restarts.lock().expect("restarts lock").clear();
        info!(pipeline = %row.id, name = %row.name, "resuming from the newest checkpoint");
        self.schedule(&p).await?;
        Ok(p)
    }

    /// The checkpoints a pipeline's workers completed, newest first.
    pub async fn checkpoints(
        &self,
        id_or_name: &str,
    ) -> Result<(Arc<Pipeline>, Vec<CheckpointRow>), ControllerError> {
        let p = self.find(id_or_name)?;
        let rows = self.store.checkpoints(&p.row().id).await?;
        Ok((p, rows))
    }

    /// Deletes a pipeline in a terminal state, for `arroyod run` reusing its state dir.
    pub async fn forget(&self, p: &Pipeline) -> Result<(), StoreError> {
        let id = p.row().id;
        self.store.delete(&id).await?;
        self.pipelines.lock().expect("pipelines lock").remove(&id);
        Ok(())
    }

    /// Persists a state change of `p` and wakes its waiters.
    async fn set_state(
        &self,
        p: &Pipeline,
        new_state: &str,
        failure: Option<&str>,
        message: &str,
    ) -> Result<(), StoreError> {
        let row = {
            let mut row = p.row.lock().expect("pipeline lock");
            if is_terminal(&row.state) && new_state != state::SCHEDULING {
                return Ok(());
            }
            row.state = new_state.to_string();
            if let Some(f) = failure {
                row.failure = f.to_string();
            }
            row.updated_at = now_rfc3339();
            row.clone()
        };
        info!(pipeline = %row.id, state = %new_state, "{message}");
        self.store.update(&row, message).await?;
        if is_terminal(new_state) {
            p.tail.close();
        }
        p.state.send_replace(new_state.to_string());
        Ok(())
    }

    /// Starts a worker for the next generation of `p`.
    async fn schedule(self: &Arc<Self>, p: &Arc<Pipeline>) -> Result<(), ControllerError> {
        let generation = {
            let mut row = p.row.lock().expect("pipeline lock");
            row.generation += 1;
            row.failure.clear();
            row.generation
        };
        p.tail.reopen();
        self.set_state(p, state::SCHEDULING, None, "scheduling a worker")
            .await?;
        let id = p.row().id;
        let mut child = Command::new(&self.exe)
            .arg("worker")
            .arg("--socket")
            .arg(&self.worker_socket)
            .arg("--pipeline")
            .arg(&id)
            .arg("--generation")
            .arg(generation.to_string())
            .stdin(Stdio::null())
            // Its own process group: a Ctrl-C at the terminal reaches the daemon (or `run`),
            // which stops the worker properly, not the worker directly.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(ControllerError::Spawn)?;
        let pid = child.id().unwrap_or_default();
        let (kill_tx, kill_rx) = oneshot::channel();
        let (done_tx, done_rx) = watch::channel(false);
        *p.worker.lock().expect("worker lock") = Some(Worker {
            generation,
            pid,
            commands: None,
            kill: Some(kill_tx),
            reports_done: done_rx,
            reports_done_tx: done_tx,
        });
        info!(pipeline = %id, generation, pid, "worker started");
        self.live_workers.send_modify(|n| *n += 1);
        let (this, p) = (self.clone(), p.clone());
        tokio::spawn(async move {
            let killed = tokio::select! {
                _ = child.wait() => false,
                _ = kill_rx => {
                    let _ = child.start_kill();
                    true
                }
            };
            let status = child.wait().await;
            this.live_workers.send_modify(|n| *n -= 1);
            this.worker_exited(&p, generation, status, killed).await;
        });
        Ok(())
    }

    async fn worker_exited(
        self: &Arc<Self>,
        p: &Arc<Pipeline>,
        generation: u64,
        status: std::io::Result<std::process::ExitStatus>,
        killed: bool,
    ) {
        // Let the worker's last reports (Finished, Stopped, Failed) land first.
        let done = {
            let worker = p.worker.lock().expect("worker lock");
            match worker.as_ref() {
                Some(w) if w.generation == generation => Some(w.reports_done.clone()),
                _ => None,
            }
        };
        let Some(mut done) = done else { return };
        let _ = tokio::time::timeout(REPORT_GRACE, done.wait_for(|d| *d)).await;
        let row = p.row();
        if row.generation != generation {
            return;
        }
        *p.worker.lock().expect("worker lock") = None;
        if is_terminal(&row.state) {
            return;
        }
        let status = match status {
            Ok(s) => s.to_string(),
            Err(e) => e.to_string(),
        };
        let result = if self.shutting_down.load(Ordering::SeqCst) {
            self.set_state(p, state::STOPPED, None, "stopped at daemon shutdown")
                .await
        } else if row.desired == DESIRED_STOPPED {
            let why = if killed {
                format!(
                    "worker killed to stop the pipeline; it resumes from checkpoint {} (the last completed)",
                    p.last_checkpoint()
                )
            } else {
                "worker exited while stopping".to_string()
            };
            self.set_state(p, state::STOPPED, None, &why).await
        } else {
            warn!(pipeline = %row.id, generation, %status, "worker exited unexpectedly");
            let failure = format!("worker exited unexpectedly ({status})");
            match p.restart_delay() {
                Some(delay) if !self.shutting_down.load(Ordering::SeqCst) => {
                    let message = format!("{failure}; restarting in {delay:?}");
                    let recovering = self.set_state(p, state::RECOVERING, None, &message).await;
                    tokio::spawn(self.clone().restart_later(p.clone(), generation, delay));
                    recovering
                }
                _ => {
                    let failure = format!(
                        "{failure}; {RESTART_BUDGET} restarts within {RESTART_WINDOW:?} used up"
                    );
                    self.set_state(p, state::FAILED, Some(&failure), &failure)
                        .await
                }
            }
        };
        if let Err(e) = result {
            warn!(pipeline = %row.id, error = %e, "recording a worker's exit failed");
        }
    }

    /// Schedules the next generation of `p` after `delay`, unless it was stopped meanwhile.
    /// Boxed: scheduling spawns the supervisor that may call this again.
    fn restart_later(
        self: Arc<Self>,
        p: Arc<Pipeline>,
        generation: u64,
        delay: Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            let row = p.row();
            if row.generation == generation
                && row.desired == DESIRED_RUNNING
                && row.state == state::RECOVERING
                && !self.shutting_down.load(Ordering::SeqCst)
                && let Err(e) = self.schedule(&p).await
            {
                let why = format!("restarting the worker failed: {e}");
                let _ = self.set_state(&p, state::FAILED, Some(&why), &why).await;
            }
        })
    }

    /// Handles a worker's Hello: returns the Start command and the channel for further commands,
    /// or an error for a stale or unknown worker.
    pub fn attach(
        &self,
        pipeline_id: &str,
        generation: u64,
    ) -> Result<(Arc<Pipeline>, CommandRx), tonic::Status> {
        let p = self
            .find(pipeline_id)
            .map_err(|e| tonic::Status::not_found(e.to_string()))?;
        let row = p.row();
        let mut worker = p.worker.lock().expect("worker lock");
        let Some(w) = worker.as_mut().filter(|w| w.generation == generation) else {
            return Err(tonic::Status::failed_precondition(format!(
                "generation {generation} of pipeline {pipeline_id} is not current"
            )));
        };
        let (tx, rx) = mpsc::channel(8);
        let start = WorkerCommand {
            command: Some(worker_command::Command::Start(arroyod_proto::Start {
                pipeline_id: row.id.clone(),
                name: row.name.clone(),
                query: row.query.clone(),
                parallelism: row.parallelism,
                state_url: row.state_url.clone(),
                checkpoint_interval_ms: row.checkpoint_interval_ms,
            })),
        };
        tx.try_send(Ok(start)).expect("fresh channel has room");
        if row.desired == DESIRED_STOPPED {
            let stop = stop_command(StopMode::Checkpoint);
            tx.try_send(Ok(stop)).expect("fresh channel has room");
        }
        w.commands = Some(tx);
        drop(worker);
        Ok((p, rx))
    }

    /// Applies one report of the worker of `generation`.
    pub async fn report(
        &self,
        p: &Pipeline,
        generation: u64,
        event: arroyod_proto::worker_event::Event,
    ) -> Result<(), StoreError> {
        use arroyod_proto::worker_event::Event;
        if p.row().generation != generation {
            return Ok(());
        }
        match event {
            Event::Hello(_) => Ok(()),
            Event::Running(_) => {
                if p.row().desired == DESIRED_STOPPED {
                    return Ok(());
                }
                self.set_state(p, state::RUNNING, None, "worker running")
                    .await
            }
            Event::Rows(rows) => {
                p.tail.append(rows.json);
                Ok(())
            }
            Event::Finished(_) => {
                self.set_state(p, state::FINISHED, None, "every source finished")
                    .await
            }
            Event::Stopped(_) => self.set_state(p, state::STOPPED, None, "stopped").await,
            Event::Failed(f) => {
                self.set_state(p, state::FAILED, Some(&f.message), &f.message)
                    .await
            }
            Event::CommitRequest(r) => {
                // Only the current generation reaches here: it may commit.
                let commands = p
                    .worker
                    .lock()
                    .expect("worker lock")
                    .as_ref()
                    .filter(|w| w.generation == generation)
                    .and_then(|w| w.commands.clone());
                if let Some(commands) = commands {
                    let commit = WorkerCommand {
                        command: Some(worker_command::Command::Commit(arroyod_proto::Commit {
                            epoch: r.epoch,
                            allowed: true,
                        })),
                    };
                    let _ = commands.send(Ok(commit)).await;
                }
                Ok(())
            }
            Event::CheckpointCompleted(c) => {
                let row = CheckpointRow {
                    epoch: c.epoch,
                    generation,
                    bytes: c.bytes,
                    duration_ms: c.duration_ms,
                    completed_at: now_rfc3339(),
                };
                self.store.insert_checkpoint(&p.row().id, &row).await?;
                p.last_checkpoint.fetch_max(c.epoch, Ordering::SeqCst);
                self.checkpointed.send_modify(|n| *n += 1);
                Ok(())
            }
        }
    }

    /// The worker of `generation` closed its report stream.
    pub fn reports_ended(&self, p: &Pipeline, generation: u64) {
        if let Some(w) = p
            .worker
            .lock()
            .expect("worker lock")
            .as_mut()
            .filter(|w| w.generation == generation)
        {
            // Ending the command stream lets the worker exit.
            w.commands = None;
            let _ = w.reports_done_tx.send(true);
        }
    }

    /// Requests a stop; with `wait`, returns once the pipeline is in a terminal state.
    pub async fn stop(
        self: &Arc<Self>,
        id_or_name: &str,
        mode: StopMode,
        wait: bool,
    ) -> Result<Arc<Pipeline>, ControllerError> {
        self.stop_with(id_or_name, mode, wait, false).await
    }

    /// [`Controller::stop`]; with `keep_desired` the pipeline stays desired Running (a daemon
    /// shutdown: it resumes at the next start).
    async fn stop_with(
        self: &Arc<Self>,
        id_or_name: &str,
        mode: StopMode,
        wait: bool,
        keep_desired: bool,
    ) -> Result<Arc<Pipeline>, ControllerError> {
        let p = self.find(id_or_name)?;
        if is_terminal(&p.row().state) {
            return Ok(p);
        }
        if !keep_desired {
            p.row.lock().expect("pipeline lock").desired = DESIRED_STOPPED.into();
        }
        self.set_state(
            &p,
            state::STOPPING,
            None,
            &format!("stop requested ({})", mode_name(mode)),
        )
        .await?;
        let (commands, kill) = {
            let mut worker = p.worker.lock().expect("worker lock");
            match worker.as_mut() {
                Some(w) => (
                    w.commands.clone(),
                    if mode == StopMode::Immediate || w.commands.is_none() {
                        w.kill.take()
                    } else {
                        None
                    },
                ),
                None => (None, None),
            }
        };
        if let Some(kill) = kill {
            let _ = kill.send(());
        } else if let Some(commands) = commands {
            let _ = commands.send(Ok(stop_command(mode))).await;
        } else {
            // No worker at all: nothing to wait for.
            self.set_state(&p, state::STOPPED, None, "stopped").await?;
        }
        // Escalate a stop that takes too long.
        let (this, esc) = (self.clone(), p.clone());
        tokio::spawn(async move {
            if tokio::time::timeout(STOP_TIMEOUT, esc.wait_terminal())
                .await
                .is_err()
            {
                warn!(
                    pipeline = %esc.row().id,
                    timeout = ?STOP_TIMEOUT,
                    last_checkpoint = esc.last_checkpoint(),
                    "the stop is taking too long; killing the worker (no final checkpoint: it resumes from the last completed one)"
                );
                let kill = esc
                    .worker
                    .lock()
                    .expect("worker lock")
                    .as_mut()
                    .and_then(|w| w.kill.take());
                match kill {
                    Some(kill) => {
                        let _ = kill.send(());
                    }
                    None => {
                        let _ = this
                            .set_state(&esc, state::STOPPED, None, "stop timed out")
                            .await;
                    }
                }
            }
        });
        if wait {
            p.wait_terminal().await;
        }
        Ok(p)
    }

    /// Stops every active pipeline (with a checkpoint) and waits for them, for shutdown. The
    /// store stays open (the daemon snapshots it last).
    pub async fn shutdown(self: &Arc<Self>) {
        self.shutting_down.store(true, Ordering::SeqCst);
        let active: Vec<_> = self
            .list()
            .into_iter()
            .filter(|p| !is_terminal(&p.row().state))
            .collect();
        let stops = active.iter().map(|p| {
            let id = p.row().id;
            let this = self.clone();
            async move {
                if let Err(e) = this.stop_with(&id, StopMode::Checkpoint, true, true).await {
                    warn!(pipeline = %id, error = %e, "stopping at shutdown failed");
                }
            }
        });
        futures::future::join_all(stops).await;
        // Reap every worker, so that none outlives the daemon (and its CPU time is ours).
        let mut live = self.live_workers.subscribe();
        if tokio::time::timeout(STOP_TIMEOUT, live.wait_for(|n| *n == 0))
            .await
            .is_err()
        {
            warn!(
                workers = *live.borrow(),
                "workers still running at shutdown"
            );
        }
    }
}

/// A stop mode as users spell it.
fn mode_name(mode: StopMode) -> &'static str {
    match mode {
        StopMode::Graceful => "graceful",
        StopMode::Immediate => "immediate",
        StopMode::Checkpoint | StopMode::Unspecified => "checkpoint",
    }
}

fn stop_command(mode: StopMode) -> WorkerCommand {
    WorkerCommand {
        command: Some(worker_command::Command::Stop(arroyod_proto::Stop {
            mode: mode as i32,
        })),
    }
}
