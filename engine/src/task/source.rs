//! What runs inside a source subtask, and the context it emits through.
//!
//! A source keeps its position (offsets, counters, the files done) in itself, and between two
//! batches asks [`SourceContext::barrier_due`]; when a barrier is due it passes
//! [`Source::snapshot`] to [`SourceContext::checkpoint`], which reports the position and sends
//! the barrier. A source waiting for time or data selects on [`SourceContext::stopped`].

use async_trait::async_trait;
use datafusion::arrow::record_batch::RecordBatch;
use tokio::sync::watch;

use super::collector::Collector;
use super::context::{StopMode, TaskInfo};
use super::error::TaskError;
use super::message::{Barrier, Message, Watermark};
use super::protocol::{Link, Report};
use super::state::{RestoredState, TaskState};

/// How a source ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceEnd {
    /// All its data was read (a bounded source): the final watermark follows.
    Finished,
    /// It was asked to stop.
    Stopped,
    /// It stopped at a checkpoint ([`SourceContext::checkpoint`] returned true): its barrier
    /// was the last thing it sent.
    Checkpointed,
}

/// Builds one source instance per subtask.
pub trait SourceFactory: Send + Sync {
    fn create(&self, info: &TaskInfo) -> Result<Box<dyn Source>, TaskError>;
}

/// One subtask of a source.
#[async_trait]
pub trait Source: Send {
    /// Reads until the input ends or a stop is requested.
    async fn run(&mut self, ctx: &mut SourceContext) -> Result<SourceEnd, TaskError>;

    /// Its position: exactly what it has emitted so far.
    fn snapshot(&self) -> Result<TaskState, TaskError>;

    /// Called before [`Source::run`] when the run restores a checkpoint: continue after what
    /// the old subtasks (every one of them: the parallelism may differ) had emitted.
    fn restore(&mut self, state: &RestoredState) -> Result<(), TaskError>;
}

/// What a source subtask can do: emit batches and watermarks, inject checkpoint barriers, and
/// learn it should stop.
pub struct SourceContext {
    info: TaskInfo,
    out: Collector,
    stop: watch::Receiver<Option<StopMode>>,
    trigger: watch::Receiver<Option<Barrier>>,
    link: Option<Link>,
    /// The epoch of the last barrier sent.
    injected: u64,
    watermark: Option<i64>,
    /// Idleness was announced and no watermark sent since.
    idle: bool,
}

impl SourceContext {
    pub(crate) fn new(
        info: TaskInfo,
        out: Collector,
        stop: watch::Receiver<Option<StopMode>>,
        trigger: watch::Receiver<Option<Barrier>>,
        link: Option<Link>,
        watermark: Option<i64>,
    ) -> Self {
        SourceContext {
            info,
            out,
            stop,
            trigger,
            link,
            injected: 0,
            watermark,
            idle: false,
        }
    }

    pub fn info(&self) -> &TaskInfo {
        &self.info
    }

    pub(crate) fn collector(&mut self) -> &mut Collector {
        &mut self.out
    }

    /// Sends a batch (columns then the event-time column) downstream.
    pub async fn collect(&mut self, batch: RecordBatch) -> Result<(), TaskError> {
        self.out.collect(batch).await
    }

    /// Advances the watermark to `t` (ignored unless it moves forward, or the subtask was idle:
    /// then its watermark, at least the last one, is sent again and it is no longer idle).
    pub async fn watermark(&mut self, t: i64) -> Result<(), TaskError> {
        if !self.idle && self.watermark.is_some_and(|w| w >= t) {
            return Ok(());
        }
        self.idle = false;
        let t = self.watermark.map_or(t, |w| w.max(t));
        self.watermark = Some(t);
        self.out
            .broadcast(Message::Watermark(Watermark::EventTime(t)))
            .await
    }

    /// Tells downstream this subtask has no data for now (a subtask with nothing to read).
    pub async fn idle(&mut self) -> Result<(), TaskError> {
        self.idle = true;
        self.out
            .broadcast(Message::Watermark(Watermark::Idle))
            .await
    }

    /// True once a stop without checkpoint was requested (graceful or immediate; also a
    /// checkpoint stop in a run without checkpointing).
    pub fn should_stop(&self) -> bool {
        match *self.stop.borrow() {
            None => false,
            Some(StopMode::Checkpoint) => self.link.is_none(),
            Some(_) => true,
        }
    }

    /// The epoch of the barrier waiting to be sent, if one is.
    pub fn due_epoch(&self) -> Option<u64> {
        self.barrier_due()
            .then(|| self.trigger.borrow().map(|b| b.epoch))
            .flatten()
    }

    /// The completed epochs (newest, and whether it is the run's last), for a source that
    /// acts once a checkpoint it took part in is complete (commits its position elsewhere).
    /// None without checkpointing.
    pub(crate) fn completions(&self) -> Option<super::protocol::Completions> {
        self.link.as_ref().map(|l| l.completed.clone())
    }

    /// True when a checkpoint barrier is waiting to be sent.
    pub fn barrier_due(&self) -> bool {
        self.link.is_some()
            && self
                .trigger
                .borrow()
                .is_some_and(|b| b.epoch > self.injected)
    }

    /// Reports `state` (the source's position after everything it sent) for the due
    /// checkpoint and sends its barrier. True when the run stops at this checkpoint: the
    /// source must then return [`SourceEnd::Checkpointed`] without sending anything more.
    pub async fn checkpoint(&mut self, state: TaskState) -> Result<bool, TaskError> {
        let (Some(barrier), Some(link)) = (*self.trigger.borrow(), self.link.as_ref()) else {
            return Ok(false);
        };
        self.injected = barrier.epoch;
        let files = link.files(state, self.watermark)?;
        link.report(Report::Snapshot {
            task: link.task,
            epoch: barrier.epoch,
            files,
        });
        self.out.broadcast(Message::Barrier(barrier)).await?;
        Ok(barrier.stop)
    }

    /// Sends the due barrier if there is one: `Some(end)` when the source must return `end`.
    pub async fn checkpoint_if_due(
        &mut self,
        snapshot: impl FnOnce() -> Result<TaskState, TaskError>,
    ) -> Result<Option<SourceEnd>, TaskError> {
        if !self.barrier_due() {
            return Ok(None);
        }
        Ok(self
            .checkpoint(snapshot()?)
            .await?
            .then_some(SourceEnd::Checkpointed))
    }

    /// The source ended: its final state stands for it in later checkpoints.
    pub(crate) fn ended(&mut self, state: TaskState, complete: bool) -> Result<(), TaskError> {
        if let Some(link) = &self.link {
            let watermark = if complete {
                Some(i64::MAX)
            } else {
                self.watermark
            };
            let files = link.files(state, watermark)?;
            link.report(Report::Ended {
                task: link.task,
                files,
                complete,
            });
        }
        Ok(())
    }

    /// Resolves when a stop is requested or a checkpoint barrier is due (at once if so):
    /// a source waiting for time or data selects on this, then checks both.
    pub async fn stopped(&mut self) {
        if self.should_stop() || self.barrier_due() {
            return;
        }
        let checkpointing = self.link.is_some();
        let stop = self.stop.wait_for(|s| match s {
            None => false,
            Some(StopMode::Checkpoint) => !checkpointing,
            Some(_) => true,
        });
        if !checkpointing {
            let _ = stop.await;
            return;
        }
        let injected = self.injected;
        let barrier = self
            .trigger
            .wait_for(|b| b.is_some_and(|b| b.epoch > injected));
        tokio::select! {
            _ = stop => {}
            _ = barrier => {}
        }
    }
}
