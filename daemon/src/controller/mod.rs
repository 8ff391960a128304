//! The controller: every pipeline the daemon knows, each driven by its own task.
//!
//! It owns the registry of pipelines (id → the inbox, published view, output log and event
//! feed of its task) and the tasks themselves, in one [`TaskTracker`], each inside a `pipeline` tracing span
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

mod fresh;
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

use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

use crate::engine::{CheckpointError, PlannedQuery, SqlError, StateRootError, retained_epochs};
use crate::metrics::Metrics;
use crate::output::{OutputError, OutputLog};
use crate::settings::ControllerSettings;
use crate::store::{CheckpointRow, EventRow, PipelineRow, Store, StoreError, now_rfc3339};
use machine::{Changes, Desired, Event, Machine, Refusal, Spec, State, StopMode, Timeouts};
use name::NameError;
use pipeline::{Context, Identity, PipelineTask};
use protocol::{Attachment, Envelope, PipelineView, Rejected, ReportStream};

/// How long to wait, after a worker exited, for its last reports to arrive.
const REPORT_GRACE: Duration = Duration::from_secs(5);
/// Commands a pipeline's inbox holds before callers wait.
const INBOX: usize = 64;
/// Events a follower of `logs` may fall behind by before it misses some.
const EVENT_FEED: usize = 256;
/// How long `checkpoint` waits for the checkpoint it asked for.
const CHECKPOINT_WAIT: Duration = Duration::from_secs(120);

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
    /// An on-demand checkpoint did not complete.
    #[error("pipeline '{pipeline}': the checkpoint did not complete: {reason}")]
    CheckpointFailed { pipeline: String, reason: String },
    /// A pipeline's output log cannot be used.
    #[error(transparent)]
    Output(#[from] OutputError),
    /// A pipeline's state could not be removed.
    #[error(transparent)]
    RemoveState(#[from] StateRootError),
    /// A restart without state would mix two runs' output in exactly-once sinks, each
    /// described, and was not forced.
    #[error(
        "pipeline '{pipeline}': a restart without state would mix two runs' output in its exactly-once sinks:\n  {}\nrestart it with --force to do so anyway, or delete it and submit its query again with new sink paths or topics",
        sinks.join("\n  ")
    )]
    WouldMixOutput {
        pipeline: String,
        sinks: Vec<String>,
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
    /// The most memory its worker may use, in bytes; None or 0: no limit.
    pub memory_limit: Option<u64>,
    /// The caller's uid; None: the daemon's own user (`arroyod run`).
    pub submitter: Option<u32>,
}

/// What a delete keeps.
#[derive(Debug, Clone, Copy, Default)]
pub struct Keep {
    pub checkpoints: bool,
    pub output: bool,
}

/// What a delete did.
#[derive(Debug, Clone)]
pub struct Deleted {
    pub view: PipelineView,
    /// Locations removed, and kept.
    pub removed: Vec<String>,
    pub kept: Vec<String>,
}

/// A pipeline: its task's inbox, its published view, its output log and its event feed.
#[derive(Clone)]
pub struct Pipeline {
    inbox: mpsc::Sender<Envelope>,
    view: watch::Receiver<PipelineView>,
    output: Arc<OutputLog>,
    events: broadcast::Sender<EventRow>,
}

impl Pipeline {
    /// What it looks like now.
    pub fn view(&self) -> PipelineView {
        self.view.borrow().clone()
    }

    pub fn id(&self) -> String {
        self.view.borrow().id.clone()
    }

    /// The rows of its readable sinks.
    pub fn output(&self) -> Arc<OutputLog> {
        self.output.clone()
    }

    /// Its events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<EventRow> {
        self.events.subscribe()
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
        worker_log: (String, String),
    ) -> Result<Arc<Controller>, ControllerError> {
        let rows = store.list().await?;
        let controller = Arc::new(Controller {
            ctx: Arc::new(Context {
                store,
                exe,
                worker_socket,
                settings,
                checkpointed: watch::channel(0).0,
                clock: Instant::now(),
                metrics: Metrics::new(),
                worker_log,
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
                controller.ctx.store.update(&row, "state", &message).await?;
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
            let p = controller.start_task(&row, machine)?;
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
                memory_limit: row.memory_limit_bytes,
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
    fn start_task(&self, row: &PipelineRow, machine: Machine) -> Result<Pipeline, OutputError> {
        let (tx, rx) = mpsc::channel(INBOX);
        let settings = &self.ctx.settings;
        let output = Arc::new(OutputLog::open(
            &settings.output_root.join(&row.id),
            settings.output_log_bytes,
        )?);
        if settings.output_held {
            output.hold();
        }
        if machine.state.is_terminal() {
            output.close();
        }
        let events = broadcast::channel(EVENT_FEED).0;
        let who = Identity {
            id: row.id.clone(),
            name: row.name.clone(),
            created_at: row.created_at.clone(),
            submitter: row.submitter_uid,
        };
        let span = info_span!("pipeline", id = %row.id, name = %row.name);
        let (task, view) = PipelineTask::new(
            self.ctx.clone(),
            who,
            machine,
            row.updated_at.clone(),
            output.clone(),
            events.clone(),
            rx,
        );
        self.tasks.spawn(task.run().instrument(span));
        let p = Pipeline {
            inbox: tx,
            view,
            output,
            events,
        };
        self.pipelines
            .lock()
            .expect("pipelines lock")
            .insert(row.id.clone(), p.clone());
        Ok(p)
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

    /// Every pipeline's metrics.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.ctx.metrics.clone()
    }

    /// Pipelines per state, every state named (0 when none).
    pub fn state_counts(&self) -> Vec<(&'static str, i64)> {
        let views: Vec<PipelineView> = self.list().iter().map(Pipeline::view).collect();
        State::ALL
            .iter()
            .map(|s| {
                (
                    s.as_str(),
                    views.iter().filter(|v| v.state == *s).count() as i64,
                )
            })
            .collect()
    }

    /// Asks every pipeline's task to answer within `patience`: false when one did not (the
    /// controller is stuck, and the service manager's watchdog should restart the daemon).
    pub async fn probe(&self, patience: Duration) -> bool {
        let all = self.list();
        let probes = all.iter().map(|p| async move {
            let (reply, answer) = oneshot::channel();
            if p.inbox.send(Envelope::Probe { reply }).await.is_err() {
                // Its task ended (a deleted pipeline): nothing is stuck.
                return true;
            }
            answer.await.is_ok()
        });
        tokio::time::timeout(patience, futures::future::join_all(probes))
            .await
            .is_ok_and(|answers| answers.into_iter().all(|ok| ok))
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
        let planned = self
            .plan_for(submission.query.clone(), submission.submitter)
            .await
            .map_err(ControllerError::InvalidQuery)?;
        self.submit_planned(submission, planned.fingerprint).await
    }

    /// Plans `query` for `submitter`: a foreign user's `{{ VAR }}`s take nothing from the
    /// daemon's environment, and a plan whose tables reach what the submitter may not is
    /// refused, with every reason and its position.
    pub async fn plan_for(
        &self,
        query: String,
        submitter: Option<u32>,
    ) -> Result<PlannedQuery, Vec<SqlError>> {
        let policy = &self.ctx.settings.access;
        let planned =
            crate::engine::plan_with_env(query.clone(), !policy.foreign(submitter)).await?;
        let confinement = policy.confinement(submitter);
        let refused = crate::access::refusals(&confinement, &planned.host_access, &query);
        if !refused.is_empty() {
            return Err(refused);
        }
        Ok(planned)
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
            memory_limit_bytes: submission.memory_limit.unwrap_or(0),
            submitter_uid: submission.submitter,
        };
        self.ctx.store.insert(&row).await?;
        info!(pipeline = %row.id, name = %row.name, parallelism, submitter = ?row.submitter_uid, "pipeline submitted");
        let p = self.start_task(&row, self.machine(&row))?;
        self.command(&p, Event::Start).await?;
        Ok(p)
    }

    /// Starts a stopped, failed or finished pipeline again from its newest checkpoint, with
    /// `changes` (a new query of the same plan, a parallelism).
    pub async fn resume(
        &self,
        id_or_name: &str,
        changes: Changes,
    ) -> Result<Pipeline, ControllerError> {
        self.start_again(id_or_name, changes, Event::Resume).await
    }

    /// Checks `changes` (a parallelism within bounds) and sends the event `to_event` makes of
    /// them to the pipeline.
    async fn start_again(
        &self,
        id_or_name: &str,
        mut changes: Changes,
        to_event: fn(Changes) -> Event,
    ) -> Result<Pipeline, ControllerError> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(ControllerError::ShuttingDown);
        }
        if let Some(p) = changes.parallelism {
            changes.parallelism = Some(self.parallelism(Some(p))?);
        }
        let p = self.find(id_or_name)?;
        self.command(&p, to_event(changes)).await?;
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

    /// Deletes a stopped, failed or finished pipeline: its rows and events, and unless kept
    /// its checkpoints (the whole location of its state, with what earlier restarts without
    /// state left there) and its output log.
    pub async fn delete(&self, id_or_name: &str, keep: Keep) -> Result<Deleted, ControllerError> {
        let p = self.find(id_or_name)?;
        let view = p.view();
        self.command(&p, Event::Delete).await?;
        self.pipelines
            .lock()
            .expect("pipelines lock")
            .remove(&view.id);
        self.ctx.metrics.forget(&view.id);
        let mut deleted = Deleted {
            view: view.clone(),
            removed: Vec::new(),
            kept: Vec::new(),
        };
        let state = location::resolve(
            &self.ctx.settings.state_root,
            location::owned_by(&view.id, &view.spec.state_location),
        );
        if keep.checkpoints {
            deleted.kept.push(state);
        } else {
            crate::engine::remove_state(&state).await?;
            deleted.removed.push(state);
        }
        let output = p.output.dir().display().to_string();
        if keep.output {
            p.output.close();
            deleted.kept.push(output);
        } else {
            p.output.remove()?;
            deleted.removed.push(output);
        }
        info!(pipeline = %view.id, name = %view.name, removed = ?deleted.removed, kept = ?deleted.kept, "pipeline deleted");
        Ok(deleted)
    }

    /// Stops the pipeline with a checkpoint (when it runs) and starts it again with `changes`
    /// (without state: [`Controller::restart_without_state`]).
    pub async fn restart(
        &self,
        id_or_name: &str,
        changes: Changes,
    ) -> Result<Pipeline, ControllerError> {
        self.start_again(id_or_name, changes, Event::Restart).await
    }

    /// Asks a running pipeline for a checkpoint now and waits until one newer than the last
    /// completed; returns it.
    pub async fn checkpoint_now(&self, id_or_name: &str) -> Result<CheckpointRow, ControllerError> {
        let p = self.find(id_or_name)?;
        let before = p.view().last_checkpoint;
        let name = p.view().name;
        self.command(&p, Event::CheckpointNow).await?;
        let failed = |reason: String| ControllerError::CheckpointFailed {
            pipeline: name.clone(),
            reason,
        };
        let mut view = p.view.clone();
        let waited = tokio::time::timeout(CHECKPOINT_WAIT, async move {
            view.wait_for(|v| v.last_checkpoint > before || v.state != State::Running)
                .await
                .map(|v| v.clone())
        })
        .await;
        let v = match waited {
            Err(_) => return Err(failed(format!("none completed within {CHECKPOINT_WAIT:?}"))),
            Ok(Err(_)) => return Err(ControllerError::NotFound(name)),
            Ok(Ok(v)) => v,
        };
        if v.last_checkpoint <= before {
            return Err(failed(format!("the pipeline became {}", v.state)));
        }
        let rows = self.ctx.store.checkpoints(&v.id).await?;
        rows.into_iter()
            .find(|c| c.epoch == v.last_checkpoint)
            .ok_or_else(|| failed("it completed but was not recorded".into()))
    }

    /// A pipeline's recorded events (the newest `last` when given), and a feed of the next
    /// ones, subscribed before they were read so that none falls between.
    pub async fn events(
        &self,
        id_or_name: &str,
        last: Option<u32>,
    ) -> Result<(Vec<EventRow>, broadcast::Receiver<EventRow>), ControllerError> {
        let p = self.find(id_or_name)?;
        let feed = p.subscribe();
        let events = self.ctx.store.events(&p.id(), last).await?;
        Ok((events, feed))
    }

    /// Handles a worker's Hello: its start and commands, or None for a stale or unknown one.
    /// `unconfined`: why the kernel does not confine the worker (recorded as a warning).
    pub async fn attach(
        &self,
        pipeline_id: &str,
        generation: u64,
        reports: ReportStream,
        unconfined: Option<String>,
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
            unconfined,
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
