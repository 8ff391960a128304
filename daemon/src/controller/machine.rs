//! The pipeline state machine: one pipeline's actual state ([`State`]), what its user wants
//! ([`Desired`]), its generation and its current worker, and the one transition function
//! [`Machine::apply`] that takes an [`Event`] to a new machine and a list of [`Effect`]s.
//!
//! It is pure: no I/O, no clock (the caller passes `now`), no randomness; the same machine and
//! event always give the same machine and effects, and a refused command leaves the machine as
//! it was. The pipeline's task (the `pipeline` module) carries the effects out in order.
//!
//! States (Arroyo's spelling) and what moves them:
//!
//! ```text
//!  Created ──Start──▶ Scheduling ──worker Running──▶ Running ──worker Finished──▶ Finished
//!                        ▲   │                          │
//!            Timer(Restart)  └──────── Stop ────────────┴──▶ Stopping ──worker Stopped / exit──▶ Stopped
//!                        │                                      (Kill after the stop timeout)
//!                   Recovering ◀── worker exited unexpectedly (budget left; else Failed)
//!  Stopped / Finished / Failed ──Resume / Restart / Update──▶ Scheduling
//!  Stopped / Finished / Failed ──Delete──▶ (gone)
//! ```
//!
//! Invariants it keeps (checked by the seeded random tests below):
//!
//! 1. At most one worker process lives: a new generation is spawned only once the previous
//!    one has exited (a resume while it exits kills it and waits).
//! 2. Every spawn is preceded by a [`Effect::Persist`] of its generation, and only the current,
//!    attached, unkilled generation is allowed to commit; reports of other generations are
//!    ignored.
//! 3. A terminal state (Stopped, Finished, Failed) is left only by a command: Resume, Restart
//!    (and Update) or Delete. Worker events and timers never move it.
//! 4. A pipeline its user stopped stays stopped: after a Stop, nothing but a Resume or Restart
//!    schedules a worker.

use std::time::Duration;

use crate::settings::RestartPolicy;

mod vocabulary;

pub use vocabulary::{
    Changes, CheckpointInfo, Command, Desired, Effect, Event, EventKind, Refusal, Report, Spec,
    State, StopEnd, StopMode, Timeouts, Timer, WorkerSlot,
};

/// One pipeline's state machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    pub state: State,
    pub desired: Desired,
    /// Bumped (and persisted) before each worker is spawned.
    pub generation: u64,
    /// Why it failed; empty unless Failed.
    pub failure: String,
    pub spec: Spec,
    /// The newest completed checkpoint (0: none): the epoch its next worker must find.
    pub last_checkpoint: u64,
    pub worker: Option<WorkerSlot>,
    /// How the last stop ended.
    pub last_stop: Option<StopEnd>,
    /// Crashed workers restarted since the daemon started.
    pub restart_count: u64,
    /// The strongest stop sent to the current worker.
    stop: Option<StopMode>,
    /// The stop under way: its strongest mode and the newest checkpoint when it began.
    stopping: Option<(StopMode, u64)>,
    /// The next run starts without state.
    fresh: bool,
    /// When crashed workers were restarted (the caller's clock).
    restarts: Vec<Duration>,
    /// A generation waits for the previous worker to exit.
    pending_spawn: bool,
    /// A restart under way: once stopped, start again with these changes.
    then: Option<Changes>,
    shutting_down: bool,
    deleted: bool,
    policy: RestartPolicy,
    timeouts: Timeouts,
}

impl Machine {
    /// A pipeline as stored: `state`, `desired`, `generation` as persisted.
    pub fn new(
        spec: Spec,
        state: State,
        desired: Desired,
        generation: u64,
        policy: RestartPolicy,
        timeouts: Timeouts,
    ) -> Machine {
        Machine {
            state,
            desired,
            generation,
            failure: String::new(),
            spec,
            last_checkpoint: 0,
            worker: None,
            last_stop: None,
            restart_count: 0,
            stop: None,
            stopping: None,
            fresh: false,
            restarts: Vec::new(),
            pending_spawn: false,
            then: None,
            shutting_down: false,
            deleted: false,
            policy,
            timeouts,
        }
    }

    /// True once a Delete was applied: the pipeline is gone.
    pub fn is_deleted(&self) -> bool {
        self.deleted
    }

    /// Applies `event` at time `now` (any monotonic clock); returns the effects, or why a
    /// command was refused (then nothing changed).
    pub fn apply(&mut self, event: Event, now: Duration) -> Result<Vec<Effect>, Refusal> {
        if self.deleted {
            return Err(Refusal::Deleted);
        }
        let mut fx = Vec::new();
        match event {
            Event::Start => {
                self.check_not_shutting_down()?;
                if self.state != State::Created {
                    return Err(Refusal::NotStopped(self.state));
                }
                self.desired = Desired::Running;
                self.schedule(&mut fx, "scheduling the first worker");
            }
            Event::Resume(changes) => {
                self.check_not_shutting_down()?;
                if !self.state.is_terminal() {
                    return Err(Refusal::NotStopped(self.state));
                }
                self.resume(changes, &mut fx, "resuming from the newest checkpoint");
            }
            Event::Restart(changes) => {
                self.check_not_shutting_down()?;
                self.restart(changes, &mut fx)?;
            }
            Event::Stop(mode) => self.stop_requested(mode, &mut fx),
            Event::Shutdown => {
                self.shutting_down = true;
                self.then = None;
                if !self.state.is_terminal() {
                    self.begin_stop(StopMode::Checkpoint, &mut fx, "stopping at daemon shutdown");
                }
            }
            Event::DaemonRestarted => {
                if !self.state.is_terminal() {
                    self.state = State::Stopped;
                    self.worker = None;
                    fx.push(persist("the daemon restarted while the pipeline ran"));
                    fx.push(Effect::CloseOutput);
                }
            }
            Event::Delete => {
                if !self.state.is_terminal() {
                    return Err(Refusal::NotStopped(self.state));
                }
                if self.worker.is_some() {
                    return Err(Refusal::WorkerExiting);
                }
                self.deleted = true;
                fx.push(Effect::Forget);
            }
            Event::CheckpointNow => match self.attached_worker() {
                Some(generation) if self.state == State::Running => fx.push(Effect::Send {
                    generation,
                    command: Command::Checkpoint,
                }),
                _ => return Err(Refusal::NotRunning(self.state)),
            },
            Event::Attached { generation } => self.attached(generation, &mut fx),
            Event::Reported { generation, report } => {
                if self.attached_worker() == Some(generation) {
                    self.report(generation, report, &mut fx);
                }
            }
            Event::ReportsEnded { generation } => {
                if let Some(w) = self.worker_of(generation) {
                    w.reports_ended = true;
                    let exited = w.exited.is_some();
                    fx.push(Effect::CloseCommands { generation });
                    if exited {
                        self.finish_exit(now, &mut fx);
                    }
                }
            }
            Event::Exited { generation, status } => {
                if let Some(w) = self.worker_of(generation) {
                    w.exited = Some(status);
                    if w.reports_ended || !w.attached {
                        self.finish_exit(now, &mut fx);
                    } else {
                        fx.push(Effect::Arm {
                            timer: Timer::ReportGrace { generation },
                            after: self.timeouts.report_grace,
                        });
                    }
                }
            }
            Event::SpawnFailed { generation, error } => {
                if self.worker_of(generation).is_some() {
                    self.worker = None;
                    if !self.state.is_terminal() {
                        self.pending_spawn = false;
                        self.fail(format!("starting a worker process: {error}"), &mut fx);
                    }
                }
            }
            Event::StoreFailed { error, unspawned } => {
                match &mut self.worker {
                    Some(w) if Some(w.generation) == unspawned => self.worker = None,
                    Some(w) if w.exited.is_none() && !w.killed => {
                        w.killed = true;
                        fx.push(Effect::Kill {
                            generation: w.generation,
                        });
                    }
                    _ => {}
                }
                self.pending_spawn = false;
                let failure = format!("recording the pipeline failed: {error}");
                if self.state.is_terminal() {
                    fx.push(Effect::Warn(failure));
                } else {
                    self.fail(failure, &mut fx);
                }
            }
            Event::Fired(timer) => self.fired(timer, now, &mut fx),
        }
        Ok(fx)
    }

    fn check_not_shutting_down(&self) -> Result<(), Refusal> {
        if self.shutting_down {
            return Err(Refusal::ShuttingDown);
        }
        Ok(())
    }

    /// The live worker of `generation`.
    fn worker_of(&mut self, generation: u64) -> Option<&mut WorkerSlot> {
        self.worker.as_mut().filter(|w| w.generation == generation)
    }

    /// The generation of the worker that may report: attached and current (not the previous
    /// run's, which a pending spawn waits for).
    fn attached_worker(&self) -> Option<u64> {
        self.worker
            .as_ref()
            .filter(|w| w.attached && w.generation == self.generation && !self.pending_spawn)
            .map(|w| w.generation)
    }

    fn apply_changes(&mut self, changes: Changes, fx: &mut Vec<Effect>) {
        if let Some((query, plan_hash)) = changes.query {
            self.spec.query = query;
            self.spec.plan_hash = plan_hash;
        }
        if let Some(p) = changes.parallelism {
            self.spec.parallelism = p;
        }
        if let Some(i) = changes.checkpoint_interval {
            self.spec.checkpoint_interval = i;
        }
        if let Some(limit) = changes.memory_limit {
            self.spec.memory_limit = limit;
        }
        if let Some(location) = changes.fresh_state {
            self.spec.state_location = location;
            self.last_checkpoint = 0;
            self.fresh = true;
            fx.push(Effect::ForgetCheckpoints);
        }
    }

    fn resume(&mut self, changes: Changes, fx: &mut Vec<Effect>, message: &str) {
        self.desired = Desired::Running;
        self.then = None;
        self.restarts.clear();
        self.apply_changes(changes, fx);
        self.schedule(fx, message);
    }

    fn restart(&mut self, changes: Changes, fx: &mut Vec<Effect>) -> Result<(), Refusal> {
        match self.state {
            s if s.is_terminal() => self.resume(changes, fx, "restarting"),
            State::Created | State::Recovering if self.worker.is_none() => {
                self.resume(changes, fx, "restarting")
            }
            State::Stopping if self.desired == Desired::Stopped => {
                return Err(Refusal::NotRunning(self.state));
            }
            _ => {
                self.then = Some(changes);
                self.begin_stop(
                    StopMode::Checkpoint,
                    fx,
                    "stopping with a checkpoint to restart",
                );
            }
        }
        Ok(())
    }

    /// Starts the next generation, or (while the previous worker still exits) kills that one
    /// and starts once it has exited.
    fn schedule(&mut self, fx: &mut Vec<Effect>, message: &str) {
        self.state = State::Scheduling;
        self.failure.clear();
        if let Some(w) = &mut self.worker {
            self.pending_spawn = true;
            if !w.killed {
                w.killed = true;
                fx.push(Effect::Kill {
                    generation: w.generation,
                });
            }
            fx.push(persist(&format!(
                "{message}, once the previous worker has exited"
            )));
            return;
        }
        self.pending_spawn = false;
        self.generation += 1;
        self.stop = None;
        self.stopping = None;
        self.worker = Some(WorkerSlot::new(self.generation));
        fx.push(Effect::OpenOutput);
        fx.push(persist(&format!(
            "{message} (generation {})",
            self.generation
        )));
        fx.push(Effect::Spawn {
            generation: self.generation,
        });
    }

    fn stop_requested(&mut self, mode: StopMode, fx: &mut Vec<Effect>) {
        self.then = None;
        if self.state.is_terminal() {
            if self.desired != Desired::Stopped {
                self.desired = Desired::Stopped;
                fx.push(persist(&format!("stop requested; it was {}", self.state)));
            }
            return;
        }
        self.desired = Desired::Stopped;
        self.begin_stop(mode, fx, &format!("stop requested ({})", mode.name()));
    }

    fn begin_stop(&mut self, mode: StopMode, fx: &mut Vec<Effect>, message: &str) {
        let no_worker = match &self.worker {
            None => true,
            // Scheduling waits for the previous worker to exit: nothing of this run started.
            Some(_) => self.pending_spawn,
        };
        if no_worker {
            self.pending_spawn = false;
            self.state = State::Stopped;
            self.last_stop = Some(StopEnd {
                mode,
                clean: true,
                epoch: self.last_checkpoint,
                message: format!(
                    "no worker was running: nothing to stop (it resumes from {})",
                    self.resume_point()
                ),
            });
            fx.push(persist(&format!(
                "{message}: stopped, no worker was running"
            )));
            fx.push(Effect::CloseOutput);
            return;
        }
        self.state = State::Stopping;
        self.stopping = Some(match self.stopping {
            Some((old, from)) => (old.max(mode), from),
            None => (mode, self.last_checkpoint),
        });
        let timeout = self.timeouts.stop;
        let w = self.worker.as_mut().expect("a worker, checked above");
        if mode == StopMode::Immediate || !w.attached {
            if !w.killed {
                w.killed = true;
                fx.push(Effect::Kill {
                    generation: w.generation,
                });
            }
        } else if self.stop.is_none_or(|sent| mode > sent) {
            self.stop = Some(mode);
            fx.push(Effect::Send {
                generation: w.generation,
                command: Command::Stop(mode),
            });
        }
        if !w.deadline && !w.killed {
            w.deadline = true;
            fx.push(Effect::Arm {
                timer: Timer::StopDeadline {
                    generation: w.generation,
                },
                after: timeout,
            });
        }
        fx.push(persist(message));
    }

    fn attached(&mut self, generation: u64, fx: &mut Vec<Effect>) {
        let current = generation == self.generation;
        let stop = self.stop;
        match self.worker_of(generation) {
            Some(w) if current && !w.attached && !w.killed && w.exited.is_none() => {
                w.attached = true;
                fx.push(Effect::Accept {
                    generation,
                    then_stop: stop,
                });
            }
            _ => fx.push(Effect::Refuse { generation }),
        }
    }

    fn report(&mut self, generation: u64, report: Report, fx: &mut Vec<Effect>) {
        let terminal = self.state.is_terminal();
        match report {
            Report::Running { restored } => {
                if self.state == State::Scheduling {
                    self.state = State::Running;
                    let fresh = std::mem::take(&mut self.fresh);
                    fx.push(Effect::StartOutput {
                        generation,
                        restored,
                        fresh,
                    });
                    let message = match restored {
                        Some(epoch) => format!("worker running, restored from checkpoint {epoch}"),
                        None if fresh => "worker running, without state".to_string(),
                        None => "worker running".to_string(),
                    };
                    fx.push(persist(&message));
                }
            }
            Report::Rows { sink, rows } => {
                if !terminal {
                    fx.push(Effect::AppendRows { sink, rows });
                }
            }
            Report::Metrics(m) => fx.push(Effect::RecordMetrics(m)),
            Report::Finished if !terminal => {
                if let Some((mode, _)) = self.stopping {
                    self.last_stop = Some(StopEnd {
                        mode,
                        clean: true,
                        epoch: self.last_checkpoint,
                        message: "every source finished before the stop completed".into(),
                    });
                }
                self.state = State::Finished;
                // Nothing is left to run: a daemon restart does not start it again.
                self.desired = Desired::Stopped;
                self.then = None;
                fx.push(persist("every source finished"));
                fx.push(Effect::CloseOutput);
            }
            Report::Stopped if !terminal => match self.then.take() {
                Some(changes) => self.resume(changes, fx, "stopped; restarting"),
                None => {
                    self.state = State::Stopped;
                    let end = self.stopped_cleanly();
                    let message = end.message.clone();
                    self.last_stop = Some(end);
                    fx.push(persist(&format!("stopped: {message}")));
                    fx.push(Effect::CloseOutput);
                }
            },
            Report::Failed(message) if !terminal => {
                if let Some((mode, _)) = self.stopping {
                    self.last_stop = Some(StopEnd {
                        mode,
                        clean: false,
                        epoch: self.last_checkpoint,
                        message: format!(
                            "it failed while stopping: {message} (it resumes from {})",
                            self.resume_point()
                        ),
                    });
                }
                self.fail(message, fx)
            }
            Report::Finished | Report::Stopped | Report::Failed(_) => {}
            Report::CommitRequest(epoch) => {
                // A worker being killed, or one whose exit was seen, commits nothing more.
                let live = self
                    .worker
                    .as_ref()
                    .is_some_and(|w| !w.killed && w.exited.is_none());
                fx.push(Effect::Send {
                    generation,
                    command: Command::Commit {
                        epoch,
                        allowed: live,
                    },
                });
            }
            Report::CheckpointCompleted(info) => {
                self.last_checkpoint = self.last_checkpoint.max(info.epoch);
                fx.push(Effect::RecordCheckpoint(info));
            }
        }
    }

    /// Where a pipeline resumes from, in words.
    fn resume_point(&self) -> String {
        match self.last_checkpoint {
            0 => "the start: no checkpoint completed".to_string(),
            n => format!("checkpoint {n}"),
        }
    }

    /// How a stop the worker reported as done ended.
    fn stopped_cleanly(&self) -> StopEnd {
        let (mode, from) = self
            .stopping
            .unwrap_or((StopMode::Checkpoint, self.last_checkpoint));
        let epoch = self.last_checkpoint;
        let (clean, message) = match mode {
            StopMode::Checkpoint if epoch > from => {
                (true, format!("with a final checkpoint ({epoch})"))
            }
            StopMode::Checkpoint => (
                false,
                format!(
                    "no final checkpoint completed: it resumes from {}",
                    self.resume_point()
                ),
            ),
            StopMode::Graceful => (
                true,
                format!(
                    "drained (graceful: no final checkpoint, it resumes from {})",
                    self.resume_point()
                ),
            ),
            StopMode::Immediate => (
                true,
                format!("at once (it resumes from {})", self.resume_point()),
            ),
        };
        StopEnd {
            mode,
            clean,
            epoch,
            message,
        }
    }

    fn fail(&mut self, failure: String, fx: &mut Vec<Effect>) {
        self.state = State::Failed;
        self.then = None;
        fx.push(Effect::Persist {
            message: format!("pipeline failed: {failure}"),
            kind: EventKind::Error,
        });
        self.failure = failure;
        fx.push(Effect::CloseOutput);
    }

    /// The current worker exited and its reports are in (or their grace is over).
    fn finish_exit(&mut self, now: Duration, fx: &mut Vec<Effect>) {
        let Some(w) = self.worker.take() else { return };
        let status = w.exited.unwrap_or_default();
        let pending = std::mem::take(&mut self.pending_spawn);
        if pending && !self.shutting_down {
            self.schedule(fx, "starting the next worker");
        } else if self.state.is_terminal() {
        } else if self.shutting_down {
            self.state = State::Stopped;
            fx.push(persist("stopped at daemon shutdown"));
            fx.push(Effect::CloseOutput);
        } else if self.state == State::Stopping {
            if let Some(changes) = self.then.take() {
                self.resume(changes, fx, "stopped; restarting");
                return;
            }
            self.state = State::Stopped;
            let mode = self.stopping.map_or(StopMode::Immediate, |(m, _)| m);
            let message = if w.killed {
                format!(
                    "worker killed to stop the pipeline: no final checkpoint, it resumes from {}",
                    self.resume_point()
                )
            } else {
                format!(
                    "worker exited while stopping ({status}): no final checkpoint, it resumes from {}",
                    self.resume_point()
                )
            };
            self.last_stop = Some(StopEnd {
                mode,
                clean: mode == StopMode::Immediate && w.killed,
                epoch: self.last_checkpoint,
                message: message.clone(),
            });
            fx.push(persist(&message));
            fx.push(Effect::CloseOutput);
        } else {
            self.crashed(&status, now, fx);
        }
    }

    /// A worker exited while it should run: restart it with backoff, or fail once the budget
    /// is used up.
    fn crashed(&mut self, status: &str, now: Duration, fx: &mut Vec<Effect>) {
        let failure = format!("worker exited unexpectedly ({status})");
        let policy = self.policy;
        self.restarts
            .retain(|t| now.saturating_sub(*t) < policy.window);
        let used = self.restarts.len() as u32;
        if used >= policy.budget {
            self.fail(
                format!(
                    "{failure}; {} restarts within {} used up",
                    policy.budget,
                    humantime::format_duration(policy.window)
                ),
                fx,
            );
            return;
        }
        let delay = policy
            .backoff
            .saturating_mul(1 << used.min(20))
            .min(policy.backoff_max);
        self.restarts.push(now);
        self.restart_count += 1;
        self.state = State::Recovering;
        fx.push(Effect::Restarted);
        fx.push(Effect::Persist {
            message: format!("{failure}; restarting in {delay:?}"),
            kind: EventKind::Restart,
        });
        fx.push(Effect::Arm {
            timer: Timer::Restart {
                generation: self.generation,
            },
            after: delay,
        });
    }

    fn fired(&mut self, timer: Timer, now: Duration, fx: &mut Vec<Effect>) {
        match timer {
            Timer::Restart { generation } => {
                if generation == self.generation
                    && self.state == State::Recovering
                    && self.desired == Desired::Running
                    && !self.shutting_down
                    && self.worker.is_none()
                {
                    self.schedule(fx, "restarting after a crash");
                }
            }
            Timer::StopDeadline { generation } => {
                let last = self.last_checkpoint;
                if self.state != State::Stopping {
                    return;
                }
                if let Some(w) = self.worker_of(generation)
                    && !w.killed
                {
                    w.killed = true;
                    fx.push(Effect::Warn(format!(
                        "the stop is taking too long; killing the worker (no final checkpoint: it resumes from checkpoint {last}, the last completed)"
                    )));
                    fx.push(Effect::Kill { generation });
                }
            }
            Timer::ReportGrace { generation } => {
                if self
                    .worker
                    .as_ref()
                    .is_some_and(|w| w.generation == generation && w.exited.is_some())
                {
                    self.finish_exit(now, fx);
                }
            }
        }
    }
}

fn persist(message: &str) -> Effect {
    Effect::Persist {
        message: message.to_string(),
        kind: EventKind::State,
    }
}

#[cfg(test)]
mod tests;
