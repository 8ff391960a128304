//! The controller: every pipeline the daemon knows, each driven by its own task.
//!
//! It owns the registry of pipelines (id → the inbox, published view and tail buffer of its
//! task) and the tasks themselves, in one [`TaskTracker`], each inside a `pipeline` tracing span
//! naming its id and name. It speaks domain types only ([`PipelineView`], [`StopMode`],
//! [`Report`], [`Command`]): `api` translates gRPC, `run` calls it directly. It never blocks the
//! runtime.
//!
//! A pipeline's life is its [`machine::Machine`]; its task ([`pipeline`]) applies events one at
//! a time, so commands on one pipeline are serialised and a stale generation never wins.
//! Protocol with a worker:
//!
//! 1. Scheduling persists generation + 1, then spawns
//!    `arroyod worker --socket S --pipeline ID --generation G`.
//! 2. The worker attaches and says Hello; only the current generation's is accepted: it gets
//!    its start (query, parallelism, state URL, interval, the epoch it must find).
//! 3. It reports Running, streams rows of the default sink, asks before each commit, reports
//!    completed checkpoints, and ends with Finished, Stopped or Failed.
//! 4. A stop is sent in-band; a worker that has not stopped after the stop timeout is killed.
//!    A worker that exits without a final report is restarted (with backoff, within a budget)
//!    unless a stop was asked for.

mod location;
pub mod machine;
pub mod name;
mod pipeline;
pub mod protocol;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

use crate::engine::{CheckpointError, SqlError, retained_epochs};
use crate::settings::ControllerSettings;
use crate::store::{CheckpointRow, PipelineRow, Store, StoreError, now_rfc3339};
use crate::tail::TailBuffer;
use machine::{Changes, Desired, Event, Machine, Refusal, Spec, State, StopMode, Timeouts};
use name::NameError;
use pipeline::{Context, Identity, PipelineTask};
use protocol::{Attachment, Envelope, PipelineView, Rejected, ReportStream};

/// How long to wait, after a worker exited, for its last reports to arrive.
const REPORT_GRACE: Duration = Duration::from_secs(5);
/// Commands a pipeline's inbox holds before callers wait.
const INBOX: usize = 64;

/// Errors of the controller's operations; each says whose fault it is.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The query does not plan; every error is listed (the user's).
    #[error("the query has errors")]
    InvalidQuery(Vec<SqlError>),
    /// The name cannot be used (the user's).
    #[error(transparent)]
    InvalidName(#[from] NameError),
    /// The parallelism is above the daemon's bound (the user's).
    #[error(
        "parallelism {given} is above max_parallelism {max} (set by the config file's \
         max_parallelism or ARROYO_MAX_PARALLELISM)"
    )]
    Parallelism { given: u32, max: u32 },
    /// No pipeline has this id, name or id prefix.
    #[error("no pipeline with id or name '{0}'")]
    NotFound(String),
    /// More than one pipeline id starts with this prefix.
    #[error("'{prefix}' is the start of several pipeline ids: {ids}")]
    Ambiguous { prefix: String, ids: String },
    /// A pipeline with this name exists.
    #[error("a pipeline named '{0}' already exists")]
    NameTaken(String),
    /// The pipeline's state does not allow the command.
    #[error("pipeline '{pipeline}': {refusal}")]
    Refused { pipeline: String, refusal: Refusal },
    /// The daemon is shutting down and takes no new work.
    #[error("the daemon is shutting down")]
    ShuttingDown,
    /// The command was applied but recording it failed; the pipeline failed.
    #[error("pipeline '{pipeline}': recording it failed: {reason}")]
    Recording { pipeline: String, reason: String },
    /// The checkpoints under a pipeline's state URL cannot be listed.
    #[error("listing the checkpoints of pipeline '{pipeline}'")]
    StateUnreachable {
        pipeline: String,
        #[source]
        source: Box<CheckpointError>,
    },
    /// The metadata store failed.
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for ControllerError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NameTaken(name) => ControllerError::NameTaken(name),
            other => ControllerError::Store(other),
        }
    }
}

/// A new pipeline as its user asks for it.
#[derive(Debug, Clone, Default)]
pub struct Submission {
    pub query: String,
    /// None or empty: `pipeline-<id prefix>`.
    pub name: Option<String>,
    /// None or 0: 1.
    pub parallelism: Option<u32>,
    /// None: the daemon's.
    pub checkpoint_interval: Option<Duration>,
}

/// A pipeline: its task's inbox, its published view and its tail buffer.
#[derive(Clone)]
pub struct Pipeline {
    inbox: mpsc::Sender<Envelope>,
    view: watch::Receiver<PipelineView>,
    tail: Arc<TailBuffer>,
}

impl Pipeline {
    /// What it looks like now.
    pub fn view(&self) -> PipelineView {
        self.view.borrow().clone()
    }

    pub fn id(&self) -> String {
        self.view.borrow().id.clone()
    }

    /// The rows of its default sink.
    pub fn tail(&self) -> Arc<TailBuffer> {
        self.tail.clone()
    }

    /// Waits until it is in a terminal state; returns its view then.
    pub async fn wait_terminal(&self) -> PipelineView {
        let mut rx = self.view.clone();
        let view = rx
            .wait_for(|v| v.state.is_terminal())
            .await
            .map(|v| v.clone());
        view.unwrap_or_else(|_| self.view())
    }
}

pub struct Controller {
    ctx: Arc<Context>,
    pipelines: Mutex<BTreeMap<String, Pipeline>>,
    tasks: TaskTracker,
    shutting_down: AtomicBool,
    ids: AtomicU64,
}

impl Controller {
    /// Loads every stored pipeline and starts its task; those that were active when the daemon
    /// went away are found Stopped (see [`Controller::resume_all`]).
    pub async fn load(
        store: Store,
        exe: PathBuf,
        worker_socket: PathBuf,
        settings: ControllerSettings,
    ) -> Result<Arc<Controller>, StoreError> {
        let rows = store.list().await?;
        let controller = Arc::new(Controller {
            ctx: Arc::new(Context {
                store,
                exe,
                worker_socket,
                settings,
                checkpointed: watch::channel(0).0,
                clock: Instant::now(),
            }),
            pipelines: Mutex::new(BTreeMap::new()),
            tasks: TaskTracker::new(),
            shutting_down: AtomicBool::new(false),
            ids: AtomicU64::new(0),
        });
        for mut row in rows {
            let (stored, moved) =
                location::from_stored(&controller.ctx.settings.state_root, &row.id, &row.state_url);
            if let Some(message) = moved {
                row.state_url = stored;
                controller.ctx.store.update(&row, &message).await?;
            }
            let last = controller
                .ctx
                .store
                .checkpoints(&row.id)
                .await?
                .first()
                .map_or(0, |c| c.epoch);
            let mut machine = controller.machine(&row);
            machine.last_checkpoint = last;
            let p = controller.start_task(&row, machine);
            if let Err(e) = controller.command(&p, Event::DaemonRestarted).await {
                warn!(pipeline = %row.id, error = %e, "marking a pipeline stopped after a restart failed");
            }
        }
        Ok(controller)
    }

    /// The machine of a stored pipeline.
    fn machine(&self, row: &PipelineRow) -> Machine {
        let settings = &self.ctx.settings;
        let mut m = Machine::new(
            Spec {
                query: row.query.clone(),
                plan_hash: row.plan_hash.clone(),
                parallelism: row.parallelism.max(1),
                checkpoint_interval: Duration::from_millis(row.checkpoint_interval_ms.max(1)),
                state_location: row.state_url.clone(),
            },
            // A state this binary does not know was written by a newer one: treat as stopped.
            State::parse(&row.state).unwrap_or(State::Stopped),
            Desired::parse(&row.desired).unwrap_or(Desired::Stopped),
            row.generation,
            settings.restarts,
            Timeouts {
                stop: settings.stop_timeout,
                report_grace: REPORT_GRACE,
            },
        );
        m.failure = row.failure.clone();
        m
    }

    /// Starts the task of a pipeline and registers it.
    fn start_task(&self, row: &PipelineRow, machine: Machine) -> Pipeline {
        let (tx, rx) = mpsc::channel(INBOX);
        let bytes = self.ctx.settings.tail_buffer_bytes;
        let tail = Arc::new(match self.ctx.settings.tail_held {
            true => TailBuffer::held(bytes),
            false => TailBuffer::new(bytes),
        });
        if machine.state.is_terminal() {
            tail.close();
        }
        let who = Identity {
            id: row.id.clone(),
            name: row.name.clone(),
            created_at: row.created_at.clone(),
        };
        let span = info_span!("pipeline", id = %row.id, name = %row.name);
        let (task, view) = PipelineTask::new(
            self.ctx.clone(),
            who,
            machine,
            row.updated_at.clone(),
            tail.clone(),
            rx,
        );
        self.tasks.spawn(task.run().instrument(span));
        let p = Pipeline {
            inbox: tx,
            view,
            tail,
        };
        self.pipelines
            .lock()
            .expect("pipelines lock")
            .insert(row.id.clone(), p.clone());
        p
    }

    /// Sends a command to a pipeline's task and waits for its effects.
    async fn command(&self, p: &Pipeline, event: Event) -> Result<PipelineView, ControllerError> {
        let name = p.view().name;
        let gone = || ControllerError::NotFound(name.clone());
        let (reply, answer) = oneshot::channel();
        p.inbox
            .send(Envelope::Command { event, reply })
            .await
            .map_err(|_| gone())?;
        match answer.await.map_err(|_| gone())? {
            Ok(view) => Ok(view),
            Err(Rejected::Refused(Refusal::ShuttingDown)) => Err(ControllerError::ShuttingDown),
            Err(Rejected::Refused(refusal)) => Err(ControllerError::Refused {
                pipeline: name,
                refusal,
            }),
            Err(Rejected::Store(reason)) => Err(ControllerError::Recording {
                pipeline: name,
                reason,
            }),
        }
    }

    /// Changes with every completed checkpoint of any pipeline.
    pub fn checkpointed(&self) -> watch::Receiver<u64> {
        self.ctx.checkpointed.subscribe()
    }

    /// The metadata store; the daemon closes it after [`Controller::shutdown`].
    pub fn store(&self) -> &Store {
        &self.ctx.store
    }

    /// Schedules every pipeline that should run but does not: after a daemon restart (also
    /// after kill -9). Each worker restores the pipeline's newest checkpoint.
    pub async fn resume_all(&self) {
        for p in self.list() {
            let v = p.view();
            let resumable = v.desired == Desired::Running
                && v.state != State::Finished
                && v.state != State::Failed;
            if resumable {
                info!(pipeline = %v.id, name = %v.name, "resuming after a daemon restart");
                if let Err(e) = self.command(&p, Event::Resume(Changes::default())).await {
                    warn!(pipeline = %v.id, error = %e, "resuming after a daemon restart failed");
                }
            }
        }
    }

    /// A pipeline by exact id, exact name, or unique id prefix (in that order).
    pub fn find(&self, id_or_name: &str) -> Result<Pipeline, ControllerError> {
        let pipelines = self.pipelines.lock().expect("pipelines lock");
        if let Some(p) = pipelines.get(id_or_name) {
            return Ok(p.clone());
        }
        if let Some(p) = pipelines
            .values()
            .find(|p| p.view.borrow().name == id_or_name)
        {
            return Ok(p.clone());
        }
        let matching: Vec<&String> = if id_or_name.is_empty() {
            vec![]
        } else {
            pipelines
                .range(id_or_name.to_string()..)
                .take_while(|(id, _)| id.starts_with(id_or_name))
                .map(|(id, _)| id)
                .collect()
        };
        match matching.as_slice() {
            [] => Err(ControllerError::NotFound(id_or_name.to_string())),
            [id] => Ok(pipelines[*id].clone()),
            ids => Err(ControllerError::Ambiguous {
                prefix: id_or_name.to_string(),
                ids: ids
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// Every pipeline, oldest first.
    pub fn list(&self) -> Vec<Pipeline> {
        let mut all: Vec<Pipeline> = self
            .pipelines
            .lock()
            .expect("pipelines lock")
            .values()
            .cloned()
            .collect();
        all.sort_by_key(|p| {
            let v = p.view.borrow();
            (v.created_at.clone(), v.id.clone())
        });
        all
    }

    /// Plans, stores and schedules a new pipeline.
    pub async fn submit(&self, submission: Submission) -> Result<Pipeline, ControllerError> {
        let planned = crate::engine::plan(submission.query.clone())
            .await
            .map_err(ControllerError::InvalidQuery)?;
        self.submit_planned(submission, planned.fingerprint).await
    }

    /// Checks a parallelism against the bound; 0 is 1.
    fn parallelism(&self, given: Option<u32>) -> Result<u32, ControllerError> {
        let p = given.unwrap_or(1).max(1);
        let max = self.ctx.settings.max_parallelism;
        if p > max {
            return Err(ControllerError::Parallelism { given: p, max });
        }
        Ok(p)
    }

    /// [`Controller::submit`] of a query already planned, whose plan fingerprint is
    /// `plan_hash`.
    pub async fn submit_planned(
        &self,
        submission: Submission,
        plan_hash: String,
    ) -> Result<Pipeline, ControllerError> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(ControllerError::ShuttingDown);
        }
        let parallelism = self.parallelism(submission.parallelism)?;
        let id = name::new_id(self.ids.fetch_add(1, Ordering::Relaxed));
        let name = match submission.name.as_deref().map(str::trim) {
            None | Some("") => format!("pipeline-{}", &id[..6]),
            Some(given) => {
                name::validate(given)?;
                given.to_string()
            }
        };
        let now = now_rfc3339();
        let interval = submission
            .checkpoint_interval
            .unwrap_or(self.ctx.settings.checkpoint_interval);
        let row = PipelineRow {
            id: id.clone(),
            name,
            query: submission.query,
            parallelism,
            desired: Desired::Running.as_str().into(),
            state: State::Created.as_str().into(),
            failure: String::new(),
            generation: 0,
            created_at: now.clone(),
            updated_at: now,
            checkpoint_interval_ms: interval.as_millis().max(1) as u64,
            plan_hash,
            state_url: id.clone(),
        };
        self.ctx.store.insert(&row).await?;
        info!(pipeline = %row.id, name = %row.name, parallelism, "pipeline submitted");
        let p = self.start_task(&row, self.machine(&row));
        self.command(&p, Event::Start).await?;
        Ok(p)
    }

    /// Starts a stopped, failed or finished pipeline again from its newest checkpoint, with
    /// `changes` (a new query of the same plan, a parallelism).
    pub async fn resume(
        &self,
        id_or_name: &str,
        mut changes: Changes,
    ) -> Result<Pipeline, ControllerError> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(ControllerError::ShuttingDown);
        }
        if let Some(p) = changes.parallelism {
            changes.parallelism = Some(self.parallelism(Some(p))?);
        }
        let p = self.find(id_or_name)?;
        self.command(&p, Event::Resume(changes)).await?;
        Ok(p)
    }

    /// The checkpoints a pipeline's workers completed, newest first, and which of them still
    /// have their files under its state URL (garbage collection keeps the newest few).
    pub async fn checkpoints(
        &self,
        id_or_name: &str,
    ) -> Result<(Pipeline, Vec<CheckpointRow>, Vec<u64>), ControllerError> {
        let p = self.find(id_or_name)?;
        let v = p.view();
        let rows = self.ctx.store.checkpoints(&v.id).await?;
        let retained = retained_epochs(&v.state_url).await.map_err(|source| {
            ControllerError::StateUnreachable {
                pipeline: v.name.clone(),
                source: Box::new(source),
            }
        })?;
        Ok((p, rows, retained))
    }

    /// Deletes a stopped, failed or finished pipeline (its rows; its checkpoints stay).
    pub async fn delete(&self, id_or_name: &str) -> Result<(), ControllerError> {
        let p = self.find(id_or_name)?;
        let id = p.id();
        self.command(&p, Event::Delete).await?;
        self.pipelines.lock().expect("pipelines lock").remove(&id);
        Ok(())
    }

    /// Handles a worker's Hello: its start and commands, or None for a stale or unknown one.
    pub async fn attach(
        &self,
        pipeline_id: &str,
        generation: u64,
        reports: ReportStream,
    ) -> Option<Attachment> {
        let p = self
            .pipelines
            .lock()
            .expect("pipelines lock")
            .get(pipeline_id)
            .cloned()?;
        let (reply, answer) = oneshot::channel();
        let envelope = Envelope::Attach {
            generation,
            reports,
            reply,
        };
        p.inbox.send(envelope).await.ok()?;
        answer.await.ok().flatten()
    }

    /// Requests a stop; with `wait`, returns once the pipeline is in a terminal state.
    pub async fn stop(
        &self,
        id_or_name: &str,
        mode: StopMode,
        wait: bool,
    ) -> Result<Pipeline, ControllerError> {
        let p = self.find(id_or_name)?;
        self.command(&p, Event::Stop(mode)).await?;
        if wait {
            p.wait_terminal().await;
        }
        Ok(p)
    }

    /// Stops every active pipeline (with a checkpoint, keeping what their users want), waits
    /// for their workers to exit, then ends every task. The store stays open (the daemon
    /// snapshots it last).
    pub async fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        let all = self.list();
        for p in &all {
            if let Err(e) = self.command(p, Event::Shutdown).await {
                warn!(pipeline = %p.id(), error = %e, "stopping at shutdown failed");
            }
        }
        let patience = self.ctx.settings.stop_timeout + REPORT_GRACE + Duration::from_secs(5);
        let stopped = all.iter().map(|p| {
            let mut view = p.view.clone();
            async move {
                tokio::time::timeout(
                    patience,
                    view.wait_for(|v| v.state.is_terminal() && v.worker_pid == 0),
                )
                .await
                .is_ok()
            }
        });
        let left = futures::future::join_all(stopped)
            .await
            .into_iter()
            .filter(|done| !done)
            .count();
        if left > 0 {
            warn!(pipelines = left, "workers still running at shutdown");
        }
        drop(all);
        self.pipelines.lock().expect("pipelines lock").clear();
        self.tasks.close();
        if tokio::time::timeout(Duration::from_secs(5), self.tasks.wait())
            .await
            .is_err()
        {
            warn!(
                tasks = self.tasks.len(),
                "pipeline tasks still held at shutdown"
            );
        }
    }
}
