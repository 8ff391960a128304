//! One pipeline's task: it owns the pipeline's [`Machine`], its worker process, the worker's
//! report stream and command channel, and its timers, and applies every event in the order it
//! comes. Commands from callers arrive in its inbox; worker reports, the process exit and
//! timers come from what it owns. So two racing commands are applied one after the other, and
//! an event of another generation meets a machine that ignores it.
//!
//! Each event, in order:
//!
//! 1. [`Machine::apply`] gives the effects (or refuses a command, replying why).
//! 2. The effects run in order. A failed [`Effect::Persist`] skips the [`Effect::Spawn`]s
//!    after it (a worker never runs under a generation the store does not hold) and feeds
//!    [`Event::StoreFailed`] back; a failed spawn feeds [`Event::SpawnFailed`].
//! 3. The pipeline's [`PipelineView`] is published; the caller's reply follows.
//!
//! It never blocks the runtime: SQLite through sqlx, the process through tokio.

use std::collections::VecDeque;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use tokio::process::{Child, Command as Process};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use super::location;
use super::machine::{Command, Effect, Event, EventKind, Machine, Refusal, StopMode, Timer};
use super::protocol::{Attachment, Envelope, PipelineView, Rejected, ReportStream, StartSpec};
use crate::engine::{error_chain, failpoint};
use crate::metrics::Metrics;
use crate::output::{GenerationStart, OutputLog};
use crate::sandbox::Grant;
use crate::settings::ControllerSettings;
use crate::store::{CheckpointRow, EventRow, PipelineRow, Store, StoreError, now_rfc3339};

/// What every pipeline task shares.
pub struct Context {
    pub store: Store,
    /// The `arroyod` binary, started as `arroyod worker`.
    pub exe: PathBuf,
    pub worker_socket: PathBuf,
    pub settings: ControllerSettings,
    /// Counts completed checkpoints, so that a metadata snapshot follows them.
    pub checkpointed: watch::Sender<u64>,
    /// The origin of the machines' clock.
    pub clock: Instant,
    pub metrics: Arc<Metrics>,
    /// The log filter and format workers are started with.
    pub worker_log: (String, String),
}

/// Who a pipeline is: what never changes.
#[derive(Debug, Clone)]
pub struct Identity {
    pub id: String,
    pub name: String,
    pub created_at: String,
    /// The uid that submitted it; None: the daemon's own user.
    pub submitter: Option<u32>,
}

/// The variables a foreign user's worker keeps of the daemon's environment: none that can hold
/// a credential (`ARROYO_TEST_*` are the tests' pacing hooks).
fn worker_may_inherit(name: &str) -> bool {
    matches!(
        name,
        "PATH" | "LANG" | "LC_ALL" | "TZ" | "TMPDIR" | "RUST_LOG" | "RUST_BACKTRACE"
            // Test builds' crash and pause points (inert in a shipped binary).
            | "FAILPOINTS"
    ) || name.starts_with("ARROYO_TEST_")
}

/// The task of one pipeline.
pub struct PipelineTask {
    ctx: Arc<Context>,
    who: Identity,
    machine: Machine,
    updated_at: String,
    output: Arc<OutputLog>,
    events: broadcast::Sender<EventRow>,
    /// The current worker's subtasks, and how many ended, as it last reported.
    progress: (u32, u32),
    view: watch::Sender<PipelineView>,
    inbox: mpsc::Receiver<Envelope>,
    /// The worker process and its generation.
    child: Option<(u64, Child)>,
    /// Commands to the attached worker.
    commands: Option<(u64, mpsc::UnboundedSender<Command>)>,
    /// Reports of the attached worker.
    reports: Option<(u64, ReportStream)>,
    /// A Hello waiting for the machine's answer.
    attaching: Option<(ReportStream, oneshot::Sender<Option<Attachment>>)>,
    /// Commands refused only because the previous worker is still exiting: applied again
    /// once it has exited, so `stop` then `delete` works without the caller retrying.
    parked: Vec<(Event, oneshot::Sender<Result<PipelineView, Rejected>>)>,
    timers: Vec<(tokio::time::Instant, Timer)>,
}

impl PipelineTask {
    pub fn new(
        ctx: Arc<Context>,
        who: Identity,
        machine: Machine,
        updated_at: String,
        output: Arc<OutputLog>,
        events: broadcast::Sender<EventRow>,
        inbox: mpsc::Receiver<Envelope>,
    ) -> (PipelineTask, watch::Receiver<PipelineView>) {
        let view = make_view(&ctx, &who, &machine, &updated_at, 0, (0, 0));
        let task = PipelineTask {
            ctx,
            who,
            machine,
            updated_at,
            output,
            events,
            progress: (0, 0),
            view: watch::Sender::new(view),
            inbox,
            child: None,
            commands: None,
            reports: None,
            attaching: None,
            parked: Vec::new(),
            timers: Vec::new(),
        };
        let rx = task.view.subscribe();
        (task, rx)
    }

    fn snapshot(&self) -> PipelineView {
        let pid = self
            .child
            .as_ref()
            .and_then(|(_, c)| c.id())
            .unwrap_or_default();
        make_view(
            &self.ctx,
            &self.who,
            &self.machine,
            &self.updated_at,
            pid,
            self.progress,
        )
    }

    fn now(&self) -> std::time::Duration {
        self.ctx.clock.elapsed()
    }

    /// Applies events until the pipeline is deleted or every handle to it is gone.
    pub async fn run(mut self) {
        loop {
            let next_timer = self.timers.iter().map(|(at, _)| *at).min();
            let event = tokio::select! {
                envelope = self.inbox.recv() => match envelope {
                    Some(envelope) => {
                        self.on_envelope(envelope).await;
                        None
                    }
                    // The controller let go: dropping the child kills a worker left.
                    None => break,
                },
                report = next_report(&mut self.reports, &self.output), if self.reports.is_some() => Some(report),
                (generation, status) = wait_child(&mut self.child), if self.child.is_some() => {
                    self.child = None;
                    let status = match status {
                        Ok(s) => s.to_string(),
                        Err(e) => e.to_string(),
                    };
                    debug!(generation, %status, "worker exited");
                    self.ctx.metrics.idle(&self.who.id);
                    self.progress = (0, 0);
                    Some(Event::Exited { generation, status })
                }
                _ = sleep_until(next_timer), if next_timer.is_some() => {
                    let now = tokio::time::Instant::now();
                    let due = self.timers.iter().position(|(at, _)| *at <= now);
                    due.map(|i| Event::Fired(self.timers.swap_remove(i).1))
                }
            };
            let exited = matches!(event, Some(Event::Exited { .. }));
            if let Some(event) = event
                && let Err(e) = self.handle(event).await
            {
                debug!(error = %e, "an internal event was refused");
            }
            if exited {
                for (event, reply) in std::mem::take(&mut self.parked) {
                    self.command(event, reply).await;
                }
            }
            if self.machine.is_deleted() {
                break;
            }
        }
    }

    /// Applies a caller's command and replies, or parks it until the previous worker exits.
    async fn command(
        &mut self,
        event: Event,
        reply: oneshot::Sender<Result<PipelineView, Rejected>>,
    ) {
        let result = self.handle(event.clone()).await;
        if matches!(result, Err(Rejected::Refused(Refusal::WorkerExiting))) && self.child.is_some()
        {
            self.parked.push((event, reply));
            return;
        }
        let _ = reply.send(result.map(|()| self.snapshot()));
    }

    async fn on_envelope(&mut self, envelope: Envelope) {
        match envelope {
            Envelope::Command { event, reply } => self.command(event, reply).await,
            Envelope::Attach {
                generation,
                reports,
                reply,
                unconfined,
            } => {
                if let Some((_, old)) = self.attaching.replace((reports, reply)) {
                    let _ = old.send(None);
                }
                if let Err(e) = self.handle(Event::Attached { generation }).await {
                    debug!(error = %e, "a Hello was refused");
                }
                if let Some((_, reply)) = self.attaching.take() {
                    let _ = reply.send(None);
                } else if let Some(warning) = unconfined {
                    warn!(generation, "{warning}");
                    self.record(EventKind::Warning, warning).await;
                }
            }
            Envelope::Probe { reply } => {
                let _ = reply.send(());
            }
        }
    }

    /// Applies `event` and what its effects feed back; Err when the event itself was refused
    /// or recording it failed.
    async fn handle(&mut self, event: Event) -> Result<(), Rejected> {
        let mut queue = VecDeque::from([event]);
        let mut outcome = Ok(());
        let mut first = true;
        while let Some(event) = queue.pop_front() {
            match self.machine.apply(event, self.now()) {
                Ok(effects) => {
                    if let Some(follow) = self.execute(effects).await {
                        if let (true, Event::StoreFailed { error, .. }) = (first, &follow) {
                            outcome = Err(Rejected::Store(error.clone()));
                        }
                        queue.push_back(follow);
                    }
                }
                Err(refusal) if first => outcome = Err(refusal.into()),
                Err(refusal) => warn!(error = %refusal, "an event the controller made was refused"),
            }
            first = false;
            self.view.send_replace(self.snapshot());
        }
        outcome
    }

    /// Carries out `effects` in order; returns the event a failure feeds back.
    async fn execute(&mut self, effects: Vec<Effect>) -> Option<Event> {
        let mut store_failed: Option<String> = None;
        let mut unspawned = None;
        let mut follow = None;
        for effect in effects {
            match effect {
                Effect::Persist { message, kind } => {
                    if let Err(e) = self.persist(&message, kind).await {
                        store_failed.get_or_insert(error_chain(&e));
                    }
                }
                Effect::Spawn { generation } if store_failed.is_some() => {
                    unspawned = Some(generation);
                }
                Effect::Spawn { generation } => {
                    if let Err(e) = self.spawn(generation) {
                        follow = Some(Event::SpawnFailed {
                            generation,
                            error: e.to_string(),
                        });
                    }
                }
                Effect::Accept {
                    generation,
                    then_stop,
                } => self.accept(generation, then_stop),
                Effect::Refuse { .. } => {
                    if let Some((_, reply)) = self.attaching.take() {
                        let _ = reply.send(None);
                    }
                }
                Effect::Send {
                    generation,
                    command,
                } => {
                    if let Some((g, commands)) = &self.commands
                        && *g == generation
                    {
                        let _ = commands.send(command);
                    }
                }
                Effect::Kill { generation } => {
                    if let Some((g, child)) = &mut self.child
                        && *g == generation
                        && let Err(e) = child.start_kill()
                    {
                        warn!(generation, error = %e, "killing the worker failed");
                    }
                }
                Effect::CloseCommands { generation } => {
                    if self
                        .commands
                        .as_ref()
                        .is_some_and(|(g, _)| *g == generation)
                    {
                        self.commands = None;
                    }
                }
                Effect::Arm { timer, after } => {
                    self.timers
                        .push((tokio::time::Instant::now() + after, timer));
                }
                Effect::AppendRows { sink, rows } => {
                    // A log that cannot be written (a full disk) fails the pipeline, naming
                    // the file and the reason; the rows are counted as lost in the log.
                    if let Err(e) = self.output.append(&sink, &rows) {
                        store_failed.get_or_insert(error_chain(&e));
                    }
                    self.ctx
                        .metrics
                        .output_rows(&self.who.id, &self.who.name, rows.len() as u64);
                }
                Effect::OpenOutput => self.output.reopen(),
                Effect::StartOutput {
                    generation,
                    restored,
                    fresh,
                } => self.start_output(generation, restored, fresh).await,
                Effect::CloseOutput => self.output.close(),
                Effect::RecordCheckpoint(info) => {
                    let row = CheckpointRow {
                        epoch: info.epoch,
                        generation: self.machine.generation,
                        bytes: info.bytes,
                        duration_ms: info.duration_ms,
                        completed_at: now_rfc3339(),
                        output_offset: self.output.next_offset(),
                    };
                    failpoint::point("checkpoint_recording");
                    match self.ctx.store.insert_checkpoint(&self.who.id, &row).await {
                        Ok(()) => {
                            failpoint::point("checkpoint_recorded");
                            self.ctx.checkpointed.send_modify(|n| *n += 1)
                        }
                        Err(e) => {
                            warn!(epoch = info.epoch, error = %error_chain(&e), "recording a completed checkpoint failed")
                        }
                    }
                    self.ctx.metrics.checkpoint(
                        &self.who.id,
                        &self.who.name,
                        info.bytes,
                        info.duration_ms,
                    );
                    let message = format!(
                        "checkpoint {} completed: {} bytes in {} ms",
                        info.epoch, info.bytes, info.duration_ms
                    );
                    self.record(EventKind::Checkpoint, message).await;
                }
                Effect::RecordMetrics(report) => {
                    self.progress = (report.subtasks, report.subtasks_ended);
                    self.ctx
                        .metrics
                        .report(&self.who.id, &self.who.name, &report);
                }
                Effect::Restarted => self.ctx.metrics.restarted(&self.who.id, &self.who.name),
                Effect::ForgetCheckpoints => {
                    if let Err(e) = self.ctx.store.delete_checkpoints(&self.who.id).await {
                        store_failed.get_or_insert(error_chain(&e));
                    }
                }
                Effect::Forget => {
                    if let Err(e) = self.ctx.store.delete(&self.who.id).await {
                        store_failed.get_or_insert(error_chain(&e));
                    }
                    self.output.close();
                }
                Effect::Warn(message) => {
                    warn!("{message}");
                    self.record(EventKind::Warning, message).await;
                }
            }
        }
        match store_failed {
            Some(error) => Some(Event::StoreFailed { error, unspawned }),
            None => follow,
        }
    }

    /// Marks the run of `generation` in the output log: the checkpoint it restored, and the
    /// rows the previous run wrote after that checkpoint, which it may write again.
    async fn start_output(&mut self, generation: u64, restored: Option<u64>, fresh: bool) {
        let end = self.output.next_offset();
        let replayed = match restored {
            Some(epoch) => match self.ctx.store.checkpoints(&self.who.id).await {
                Ok(rows) => rows
                    .iter()
                    .find(|c| c.epoch == epoch)
                    .map(|c| (c.output_offset.min(end), end))
                    .filter(|(from, to)| from < to),
                Err(e) => {
                    warn!(error = %error_chain(&e), "reading the checkpoints to mark a restore in the output log failed");
                    Some((self.output.first_offset(), end)).filter(|(from, to)| from < to)
                }
            },
            None => None,
        };
        self.output.start_generation(GenerationStart {
            generation,
            restored,
            replayed,
            fresh,
        });
    }

    /// Records an event that changes nothing else, and feeds it to followers.
    async fn record(&mut self, kind: EventKind, message: String) {
        let event = EventRow {
            at: now_rfc3339(),
            kind: kind.as_str().to_string(),
            state: self.machine.state.as_str().to_string(),
            generation: self.machine.generation,
            message,
        };
        if let Err(e) = self.ctx.store.insert_event(&self.who.id, &event).await {
            warn!(error = %error_chain(&e), "recording an event failed");
        }
        let _ = self.events.send(event);
    }

    /// Writes the machine's persisted fields and an event of `kind`.
    async fn persist(&mut self, message: &str, kind: EventKind) -> Result<(), StoreError> {
        self.updated_at = now_rfc3339();
        let m = &self.machine;
        let row = PipelineRow {
            id: self.who.id.clone(),
            name: self.who.name.clone(),
            query: m.spec.query.clone(),
            parallelism: m.spec.parallelism,
            desired: m.desired.as_str().to_string(),
            state: m.state.as_str().to_string(),
            failure: m.failure.clone(),
            generation: m.generation,
            created_at: self.who.created_at.clone(),
            updated_at: self.updated_at.clone(),
            submitter_uid: self.who.submitter,
            checkpoint_interval_ms: m.spec.checkpoint_interval.as_millis().max(1) as u64,
            plan_hash: m.spec.plan_hash.clone(),
            state_url: m.spec.state_location.clone(),
            memory_limit_bytes: m.spec.memory_limit,
        };
        match kind {
            EventKind::Error | EventKind::Restart => {
                warn!(state = %m.state, generation = m.generation, "{message}")
            }
            _ => info!(state = %m.state, generation = m.generation, "{message}"),
        }
        let result = self.ctx.store.update(&row, kind.as_str(), message).await;
        let _ = self.events.send(EventRow {
            at: self.updated_at.clone(),
            kind: kind.as_str().to_string(),
            state: row.state,
            generation: row.generation,
            message: message.to_string(),
        });
        result
    }

    /// Starts `arroyod worker` for `generation`.
    fn spawn(&mut self, generation: u64) -> std::io::Result<()> {
        let mut process = Process::new(&self.ctx.exe);
        if self.ctx.settings.access.foreign(self.who.submitter) {
            // Another user's pipeline gets nothing of the daemon's environment: no
            // credentials, no `{{ VAR }}` values.
            process.env_clear().envs(
                std::env::vars_os().filter(|(k, _)| worker_may_inherit(&k.to_string_lossy())),
            );
        }
        // A foreign pipeline's worker restricts itself with this before its first thread.
        let grant = self.grant().map(|g| g.args()).unwrap_or_default();
        let child = process
            .arg("worker")
            .arg("--socket")
            .arg(&self.ctx.worker_socket)
            .arg("--pipeline")
            .arg(&self.who.id)
            .arg("--generation")
            .arg(generation.to_string())
            .arg("--log")
            .arg(&self.ctx.worker_log.0)
            .arg("--log-format")
            .arg(&self.ctx.worker_log.1)
            .args(grant)
            // The service manager hears from the daemon only.
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .stdin(Stdio::null())
            // Its own process group: a Ctrl-C at the terminal reaches the daemon (or `run`),
            // which stops the worker properly, not the worker directly.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()?;
        info!(
            generation,
            pid = child.id().unwrap_or_default(),
            "worker started"
        );
        self.child = Some((generation, child));
        Ok(())
    }

    /// What a foreign pipeline's worker may reach (None for the daemon's own user's): the
    /// `allowed_paths` and its own local state directory, created here (0700) so that the
    /// kernel's rule has a directory to hold on to.
    fn grant(&self) -> Option<Grant> {
        let access = &self.ctx.settings.access;
        if !access.foreign(self.who.submitter) {
            return None;
        }
        let state = location::resolve(
            &self.ctx.settings.state_root,
            &self.machine.spec.state_location,
        );
        let state = match state.split_once("://") {
            None => Some(PathBuf::from(state)),
            Some(("file", path)) => Some(PathBuf::from(path)),
            Some(_) => None,
        };
        if let Some(dir) = &state
            && let Err(e) = std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
        {
            warn!(dir = %dir.display(), error = %e, "creating the pipeline's state directory failed");
        }
        Some(Grant {
            allowed: access.allowed_paths.clone(),
            state,
        })
    }

    /// Answers the waiting Hello of `generation` with its start (and a stop under way).
    fn accept(&mut self, generation: u64, then_stop: Option<StopMode>) {
        let Some((reports, reply)) = self.attaching.take() else {
            return;
        };
        let m = &self.machine;
        let start = StartSpec {
            pipeline_id: self.who.id.clone(),
            name: self.who.name.clone(),
            query: m.spec.query.clone(),
            parallelism: m.spec.parallelism,
            state_url: location::resolve(&self.ctx.settings.state_root, &m.spec.state_location),
            checkpoint_interval: m.spec.checkpoint_interval,
            expected_epoch: m.last_checkpoint,
            memory_limit: m.spec.memory_limit,
            confinement: self.ctx.settings.access.confinement(self.who.submitter),
        };
        let (tx, rx) = mpsc::unbounded_channel();
        if let Some(mode) = then_stop {
            let _ = tx.send(Command::Stop(mode));
        }
        self.commands = Some((generation, tx));
        self.reports = Some((generation, reports));
        let attachment = Attachment {
            start,
            commands: rx,
        };
        if reply.send(Some(attachment)).is_err() {
            // The worker's call went away: its reports end at once.
            debug!(generation, "the attaching worker went away");
        }
    }
}

fn make_view(
    ctx: &Context,
    who: &Identity,
    m: &Machine,
    updated_at: &str,
    worker_pid: u32,
    progress: (u32, u32),
) -> PipelineView {
    let dropped = ctx.metrics.dropped(&who.id);
    PipelineView {
        id: who.id.clone(),
        name: who.name.clone(),
        created_at: who.created_at.clone(),
        updated_at: updated_at.to_string(),
        submitter: who.submitter,
        state: m.state,
        desired: m.desired,
        failure: m.failure.clone(),
        generation: m.generation,
        spec: m.spec.clone(),
        state_url: location::resolve(&ctx.settings.state_root, &m.spec.state_location),
        last_checkpoint: m.last_checkpoint,
        worker_pid,
        last_stop: m.last_stop.clone(),
        restarts: m.restart_count,
        bad_rows_dropped: dropped.bad,
        late_rows_dropped: dropped.late,
        subtasks: progress.0,
        subtasks_ended: progress.1,
    }
}

/// The next event of the attached worker's report stream, once the output log has room for
/// its rows (a held log's reader sets the pace: the worker waits on the stream meanwhile).
async fn next_report(reports: &mut Option<(u64, ReportStream)>, output: &OutputLog) -> Event {
    let Some((generation, stream)) = reports.as_mut() else {
        return std::future::pending().await;
    };
    output.room().await;
    let generation = *generation;
    match stream.next().await {
        Some(Ok(report)) => Event::Reported { generation, report },
        Some(Err(e)) => {
            warn!(generation, error = %e, "worker connection broke");
            *reports = None;
            Event::ReportsEnded { generation }
        }
        None => {
            *reports = None;
            Event::ReportsEnded { generation }
        }
    }
}

async fn wait_child(child: &mut Option<(u64, Child)>) -> (u64, std::io::Result<ExitStatus>) {
    match child.as_mut() {
        Some((generation, c)) => (*generation, c.wait().await),
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
