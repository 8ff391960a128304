//! Runs a [`Program`]: one tokio task per subtask, bounded channels between them.

use std::sync::Arc;
use std::time::Duration;

use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{Instrument, debug, info, info_span, warn};

use super::checkpointing::{self, CheckpointConfig, CompletedCheckpoint};
use super::error::DataflowError;
use super::layout::{self, TopologyNode};
use super::{EdgeKind, NodeKind, Program};
use crate::task::protocol::{Completions, Link, Report};
use crate::task::{
    Background, Barrier, Collector, JobContext, Message, NodeCounters, Operator, RestoredState,
    Route, Rx, Source, SourceContext, SourceEnd, StopMode, TaskError, TaskInfo, Tx, Watermark,
};

/// How long a run that ended waits for what its subtasks left behind.
const BACKGROUND_GRACE: Duration = Duration::from_secs(10);
/// Messages a subtask's input channels hold in all before its senders wait.
const CHANNEL_CAPACITY: usize = 16;
/// Messages each input slot's channel holds at least.
const MIN_SLOT_CAPACITY: usize = 2;

/// Asks a run to stop.
#[derive(Clone)]
pub struct Stopper(watch::Sender<Option<StopMode>>);

impl Stopper {
    /// Asks the run to stop in `mode`, unless a stronger stop is under way (immediate over
    /// graceful over checkpoint: a stop may escalate, never weaken). True if it took effect.
    pub fn request(&self, mode: StopMode) -> bool {
        self.0.send_if_modified(|current| {
            let stronger = match (*current, mode) {
                (None, _) => true,
                (Some(StopMode::Immediate), _) => false,
                (_, StopMode::Immediate) => true,
                (Some(StopMode::Checkpoint), StopMode::Graceful) => true,
                _ => false,
            };
            if stronger {
                *current = Some(mode);
            }
            stronger
        })
    }
}

/// Asks a run for a checkpoint now, besides the interval's.
#[derive(Clone)]
pub struct CheckpointTrigger(Option<mpsc::UnboundedSender<()>>);

impl CheckpointTrigger {
    /// Asks for a checkpoint now (after the one in flight, if any); it completes and is
    /// reported like the interval's. False when the run takes no checkpoints or its
    /// checkpoints ended (a stop under way).
    pub fn request(&self) -> bool {
        self.0.as_ref().is_some_and(|tx| tx.send(()).is_ok())
    }
}

/// The outcome of a run: every source reached its end, or a stop was requested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    Finished,
    Stopped,
}

/// One node of a running dataflow and its counters.
#[derive(Debug, Clone)]
pub struct NodeMetrics {
    /// The node's stable id (what its checkpoint state is keyed by).
    pub id: String,
    pub label: String,
    pub parallelism: usize,
    pub counters: Arc<NodeCounters>,
}

/// How long a subtask's `channel closed` waits for the failure that closed the channel.
const CAUSE_GRACE: Duration = Duration::from_secs(5);

/// Sleeps until `until`; never ends without one.
async fn sleep_until_some(until: Option<tokio::time::Instant>) {
    match until {
        Some(until) => tokio::time::sleep_until(until).await,
        None => std::future::pending().await,
    }
}

/// A running dataflow.
pub struct RunHandle {
    stop: watch::Sender<Option<StopMode>>,
    tasks: JoinSet<Result<(), DataflowError>>,
    /// What subtasks left behind (see [`TaskInfo::background`]).
    background: Background,
    checkpoints: watch::Receiver<Option<CompletedCheckpoint>>,
    restored: Option<u64>,
    nodes: Vec<NodeMetrics>,
    /// Asks the coordinator for a checkpoint now; None without checkpointing.
    on_demand: Option<mpsc::UnboundedSender<()>>,
}

impl RunHandle {
    /// The newest checkpoint this run completed.
    pub fn checkpoints(&self) -> watch::Receiver<Option<CompletedCheckpoint>> {
        self.checkpoints.clone()
    }

    /// The epoch this run was restored from.
    pub fn restored(&self) -> Option<u64> {
        self.restored
    }

    /// Its nodes in topological order, with their counters.
    pub fn nodes(&self) -> &[NodeMetrics] {
        &self.nodes
    }

    /// What asks for a checkpoint now, from anywhere.
    pub fn checkpoint_trigger(&self) -> CheckpointTrigger {
        CheckpointTrigger(self.on_demand.clone())
    }

    /// What asks the run to stop, from anywhere; [`RunHandle::wait`] then returns
    /// [`RunOutcome::Stopped`].
    pub fn stopper(&self) -> Stopper {
        Stopper(self.stop.clone())
    }

    /// Waits for every subtask; the first error aborts the rest and is returned. Then waits
    /// (a while) for what the subtasks left behind.
    pub async fn wait(mut self) -> Result<RunOutcome, DataflowError> {
        let outcome = self.join().await;
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        let left = self.background.wait(BACKGROUND_GRACE).await;
        if left > 0 {
            warn!(
                tasks = left,
                "tasks the run left behind did not end in time"
            );
        }
        outcome
    }

    /// The first error is the run's, unless it is only the consequence of another: a subtask
    /// whose downstream went away (`channel closed`) ends after the one that failed, but
    /// their results may be joined in either order. Such an error waits up to
    /// [`CAUSE_GRACE`] for its cause.
    async fn join(&mut self) -> Result<RunOutcome, DataflowError> {
        let mut stop_rx = self.stop.subscribe();
        let mut consequence: Option<(DataflowError, tokio::time::Instant)> = None;
        loop {
            let grace = consequence.as_ref().map(|(_, until)| *until);
            tokio::select! {
                joined = self.tasks.join_next() => match joined {
                    None => break,
                    Some(Ok(Ok(()))) => {}
                    Some(Ok(Err(DataflowError::Task(TaskError::ChannelClosed)))) => {
                        consequence.get_or_insert_with(|| {
                            let until = tokio::time::Instant::now() + CAUSE_GRACE;
                            (DataflowError::Task(TaskError::ChannelClosed), until)
                        });
                    }
                    Some(Ok(Err(e))) => {
                        self.tasks.abort_all();
                        return Err(e);
                    }
                    Some(Err(join)) => {
                        self.tasks.abort_all();
                        if join.is_cancelled() {
                            return Ok(RunOutcome::Stopped);
                        }
                        return Err(DataflowError::Panic(join.to_string()));
                    }
                },
                changed = stop_rx.changed() => {
                    if changed.is_ok() && *stop_rx.borrow() == Some(StopMode::Immediate) {
                        self.tasks.abort_all();
                        while self.tasks.join_next().await.is_some() {}
                        return Ok(RunOutcome::Stopped);
                    }
                }
                () = sleep_until_some(grace) => break,
            }
        }
        if let Some((e, _)) = consequence {
            self.tasks.abort_all();
            return Err(e);
        }
        Ok(if self.stop.borrow().is_some() {
            RunOutcome::Stopped
        } else {
            RunOutcome::Finished
        })
    }
}

/// Starts every subtask of `program` at `parallelism` on the current runtime; with
/// `checkpoints`, restores its checkpoint (if any) and takes checkpoints.
pub async fn run(
    program: &Program,
    parallelism: usize,
    job: Arc<JobContext>,
    checkpoints: Option<CheckpointConfig>,
) -> Result<RunHandle, DataflowError> {
    let parallelism = parallelism.max(1);
    let n = program.nodes.len();
    let par: Vec<usize> = program
        .nodes
        .iter()
        .map(|node| node.parallelism.unwrap_or(parallelism).max(1))
        .collect();

    // One input channel per input slot of each subtask, so that a slot waiting for the others'
    // barrier can be left unread (backpressure) while the others are read. The slots of a
    // subtask share the capacity one channel would have.
    let slot_count: Vec<usize> = (0..n)
        .map(|node| {
            program
                .in_edges(node)
                .map(|e| {
                    let forward = matches!(e.kind, EdgeKind::Forward) && par[e.from] == par[node];
                    if forward { 1 } else { par[e.from] }
                })
                .sum()
        })
        .collect();
    let capacity: Vec<usize> = slot_count
        .iter()
        .map(|&slots| {
            CHANNEL_CAPACITY
                .div_ceil(slots.max(1))
                .max(MIN_SLOT_CAPACITY)
        })
        .collect();
    let mut receivers: Vec<Vec<Vec<Rx>>> = par
        .iter()
        .map(|&p| (0..p).map(|_| Vec::new()).collect())
        .collect();

    // Input slots: per (node, subtask), the in-edge index of every slot; and per
    // (edge, upstream subtask, downstream subtask) the slot number.
    let mut slot_inputs: Vec<Vec<Vec<usize>>> = par.iter().map(|&p| vec![vec![]; p]).collect();
    let mut routes: Vec<Vec<Vec<Route>>> = par
        .iter()
        .map(|&p| (0..p).map(|_| Vec::new()).collect())
        .collect();
    for node in 0..n {
        for (input, edge) in program.in_edges(node).enumerate() {
            let (up, down) = (par[edge.from], par[node]);
            let forward = matches!(edge.kind, EdgeKind::Forward) && up == down;
            let mut open_slot = |j: usize| {
                let slot = slot_inputs[node][j].len() as u32;
                slot_inputs[node][j].push(input);
                let (tx, rx) = mpsc::channel(capacity[node]);
                receivers[node][j].push(rx);
                (tx, slot)
            };
            for (i, out) in routes[edge.from].iter_mut().enumerate() {
                if forward {
                    let (tx, slot) = open_slot(i);
                    out.push(Route::One(tx, slot));
                    continue;
                }
                let targets: Vec<(Tx, u32)> = (0..down).map(&mut open_slot).collect();
                out.push(match &edge.kind {
                    EdgeKind::Shuffle(keys) => Route::Hash(targets, keys.clone()),
                    // Start subtasks at different targets so small batches spread out.
                    _ => Route::RoundRobin(targets, i % down),
                });
            }
        }
    }

    let counters: Vec<Arc<NodeCounters>> = (0..n).map(|_| Arc::default()).collect();
    // Checkpointing: the state to restore, the coordinator and each subtask's link to it.
    let (stop, _) = watch::channel(None);
    let (trigger, _) = watch::channel(None::<Barrier>);
    let (published_tx, published) = watch::channel(None);
    let mut tasks = JoinSet::new();
    let background = Background::default();
    let mut restored_epoch = None;
    let mut restored: Vec<Option<RestoredState>> = vec![None; n];
    let mut links: Option<(mpsc::UnboundedSender<Report>, Completions)> = None;
    let mut on_demand = None;
    if let Some(config) = checkpoints {
        if let Some(manifest) = &config.restore {
            restored = layout::load(&config.store, manifest, program).await?;
            restored_epoch = Some(manifest.epoch);
            info!(epoch = manifest.epoch, state = %config.store.display(), "restoring checkpoint");
        }
        let first_epoch =
            config
                .store
                .next_epoch()
                .await
                .map_err(|source| DataflowError::Checkpoint {
                    what: format!("listing the checkpoints under {}", config.store.display()),
                    source,
                })?;
        let (reports_tx, reports) = mpsc::unbounded_channel();
        let (completed, completed_rx) = watch::channel((0u64, false));
        let (on_demand_tx, on_demand_rx) = mpsc::unbounded_channel();
        on_demand = Some(on_demand_tx);
        let all: Vec<(usize, usize)> = (0..n)
            .flat_map(|node| (0..par[node]).map(move |s| (node, s)))
            .collect();
        let sources = all
            .iter()
            .copied()
            .filter(|(node, _)| matches!(program.nodes[*node].kind, NodeKind::Source(_)))
            .collect();
        let coordinator = checkpointing::Coordinator {
            config,
            tasks: all,
            sources,
            topology: program
                .nodes
                .iter()
                .zip(&par)
                .map(|(node, p)| TopologyNode {
                    id: node.id.clone(),
                    label: node.label.clone(),
                    parallelism: *p,
                })
                .collect(),
            first_epoch,
            reports,
            trigger: trigger.clone(),
            stop: stop.subscribe(),
            completed,
            published: published_tx,
            on_demand: on_demand_rx,
            counters: counters.clone(),
        };
        tasks.spawn(coordinator.run().instrument(info_span!("checkpoints")));
        links = Some((reports_tx, completed_rx));
    }

    for (node_id, node) in program.nodes.iter().enumerate() {
        for subtask in (0..par[node_id]).rev() {
            let info = TaskInfo {
                node: node.label.clone(),
                subtask,
                parallelism: par[node_id],
                job: job.clone(),
                checkpointing: links.is_some(),
                background: background.clone(),
                counters: counters[node_id].clone(),
            };
            let out = Collector::new(
                node.label.clone(),
                routes[node_id].pop().expect("one route list per subtask"),
                counters[node_id].clone(),
            );
            let node_counters = counters[node_id].clone();
            let link = links.as_ref().map(|(reports, completed)| Link {
                task: (node_id, subtask),
                reports: reports.clone(),
                completed: completed.clone(),
            });
            let state = restored[node_id].as_ref();
            let name = format!("{}#{}", node.label, subtask);
            match &node.kind {
                NodeKind::Source(factory) => {
                    let mut source = factory.create(&info)?;
                    let mut watermark = None;
                    if let Some(state) = state {
                        source.restore(state)?;
                        watermark = state.watermark;
                    }
                    let ctx = SourceContext::new(
                        info,
                        out,
                        stop.subscribe(),
                        trigger.subscribe(),
                        link,
                        watermark,
                    );
                    let task = async move {
                        let ended = run_source(source, ctx).await;
                        node_counters.ended();
                        Ok(ended?)
                    };
                    tasks.spawn(task.instrument(info_span!("task", %name)));
                }
                NodeKind::Operator(factory) => {
                    let mut op = factory.create(&info)?;
                    let mut watermark = None;
                    if let Some(state) = state {
                        op.restore(state)?;
                        watermark = state.watermark;
                    }
                    let rx = std::mem::take(&mut receivers[node_id][subtask]);
                    let inputs = std::mem::take(&mut slot_inputs[node_id][subtask]);
                    let memory = job
                        .memory
                        .as_ref()
                        .map(|budget| MemoryConsumer::new(name.clone()).register(&budget.pool));
                    let task = OperatorTask {
                        op,
                        memory,
                        info,
                        slot_inputs: inputs,
                        out,
                        link,
                        current: watermark,
                    };
                    let task = async move {
                        let ended = task.run(rx).await;
                        node_counters.ended();
                        Ok(ended?)
                    };
                    tasks.spawn(task.instrument(info_span!("task", %name)));
                }
            }
        }
    }
    let nodes = program
        .nodes
        .iter()
        .zip(&par)
        .zip(counters)
        .map(|((node, p), counters)| NodeMetrics {
            id: node.id.clone(),
            label: node.label.clone(),
            parallelism: *p,
            counters,
        })
        .collect();
    Ok(RunHandle {
        stop,
        tasks,
        checkpoints: published,
        restored: restored_epoch,
        background,
        nodes,
        on_demand,
    })
}

async fn run_source(mut source: Box<dyn Source>, mut ctx: SourceContext) -> Result<(), TaskError> {
    let end = source.run(&mut ctx).await?;
    debug!(task = %ctx.info().node, subtask = ctx.info().subtask, ?end, "source ended");
    if end == SourceEnd::Checkpointed {
        // The stop's barrier went out last: nothing follows it.
        return Ok(());
    }
    if end == SourceEnd::Finished {
        // A bounded source that is done: everything it could ever send is before this.
        ctx.collector()
            .broadcast(Message::Watermark(Watermark::EventTime(i64::MAX)))
            .await?;
    }
    let state = source.snapshot()?;
    ctx.ended(state, end == SourceEnd::Finished)?;
    ctx.collector().broadcast(Message::EndOfData).await
}

/// One operator subtask and what it needs to run.
struct OperatorTask {
    op: Box<dyn Operator>,
    /// Its share of the run's memory pool: as large as the operator's state.
    memory: Option<MemoryReservation>,
    info: TaskInfo,
    /// Per input slot, the in-edge it belongs to.
    slot_inputs: Vec<usize>,
    out: Collector,
    link: Option<Link>,
    /// The combined watermark of the inputs.
    current: Option<i64>,
}

/// Per input slot of an operator subtask.
#[derive(Default)]
struct Slot {
    /// Its channel; None once its senders are gone.
    rx: Option<Rx>,
    /// Its last watermark (None: none yet).
    mark: Option<Watermark>,
    ended: bool,
    /// It delivered the barrier being aligned: it is not read until the others have (its
    /// senders wait once its channel is full).
    blocked: bool,
}

/// Receives the next message of a slot that is neither blocked nor ended, starting after the
/// slot read last so that every slot gets its turn. Err when a slot's senders went away
/// before its end of data.
fn poll_slots(
    slots: &mut [Slot],
    next: &mut usize,
    cx: &mut std::task::Context<'_>,
) -> std::task::Poll<Result<(usize, Message), TaskError>> {
    use std::task::Poll;
    let n = slots.len();
    for k in 0..n {
        let i = (*next + k) % n;
        let slot = &mut slots[i];
        if slot.blocked || slot.ended {
            continue;
        }
        let Some(rx) = slot.rx.as_mut() else {
            continue;
        };
        match rx.poll_recv(cx) {
            Poll::Ready(Some((_, msg))) => {
                *next = (i + 1) % n;
                return Poll::Ready(Ok((i, msg)));
            }
            Poll::Ready(None) => {
                slot.rx = None;
                return Poll::Ready(Err(TaskError::ChannelClosed));
            }
            Poll::Pending => {}
        }
    }
    Poll::Pending
}

impl OperatorTask {
    async fn run(mut self, rxs: Vec<Rx>) -> Result<(), TaskError> {
        let mut slots: Vec<Slot> = rxs
            .into_iter()
            .map(|rx| Slot {
                rx: Some(rx),
                mark: None,
                ended: false,
                blocked: false,
            })
            .collect();
        let mut idle = false;
        if slots.is_empty() {
            return self.close().await;
        }
        // What a restore brought back counts too.
        self.account()?;
        let mut aligning: Option<Barrier> = None;
        let mut next_slot = 0;
        let mut completed = self.link.as_ref().map(|l| l.completed.clone());
        let mut committed = 0u64;
        loop {
            let (slot, msg) = tokio::select! {
                biased;
                changed = async { completed.as_mut()?.changed().await.ok() }, if completed.is_some() => {
                    if changed.is_none() {
                        completed = None;
                        continue;
                    }
                    let (epoch, _) = *completed.as_ref().expect("checked").borrow();
                    if epoch > committed {
                        committed = epoch;
                        self.op.on_checkpoint_complete(epoch).await?;
                    }
                    continue;
                }
                received = std::future::poll_fn(|cx| poll_slots(&mut slots, &mut next_slot, cx)) => received?,
            };
            match msg {
                Message::Data(batch) => {
                    self.info.counters.received(&batch);
                    self.op
                        .process_batch(batch, self.slot_inputs[slot], &mut self.out)
                        .await?;
                    self.account()?;
                }
                Message::Watermark(wm) => {
                    slots[slot].mark = Some(wm);
                    self.combine_watermarks(&slots, &mut idle).await?;
                    self.account()?;
                }
                Message::Barrier(barrier) => {
                    aligning = Some(barrier);
                    slots[slot].blocked = true;
                }
                Message::EndOfData => {
                    slots[slot].ended = true;
                    slots[slot].rx = None;
                    if slots.iter().all(|s| s.ended) {
                        return self.close().await;
                    }
                    // An ended input no longer holds the watermark back.
                    self.combine_watermarks(&slots, &mut idle).await?;
                }
            }
            if let Some(barrier) = aligning
                && slots.iter().all(|s| s.blocked || s.ended)
            {
                aligning = None;
                if self.checkpoint(barrier).await? {
                    return Ok(());
                }
                for s in &mut slots {
                    s.blocked = false;
                }
            }
        }
    }

    /// Resizes the subtask's reservation to its operator's state; fails when the run's memory
    /// pool cannot grant it.
    fn account(&mut self) -> Result<(), TaskError> {
        let Some(reservation) = self.memory.as_mut() else {
            return Ok(());
        };
        let wanted = self.op.state_bytes();
        if wanted == reservation.size() {
            return Ok(());
        }
        reservation.try_resize(wanted).map_err(|source| {
            let budget = self.info.job.memory.as_ref();
            TaskError::MemoryLimit {
                node: self.info.node.clone(),
                limit: budget.map_or(0, |b| b.limit),
                state: budget.map_or(0, |b| b.state),
                wanted: wanted as u64,
                source,
            }
        })
    }

    /// The combined watermark: the minimum over open, non-idle slots; undefined while some
    /// open slot has sent none. Calls the operator when it advances.
    async fn combine_watermarks(
        &mut self,
        slots: &[Slot],
        idle: &mut bool,
    ) -> Result<(), TaskError> {
        let mut min: Option<i64> = None;
        let mut all_idle = true;
        for s in slots.iter().filter(|s| !s.ended) {
            match s.mark {
                None => return Ok(()),
                Some(Watermark::Idle) => {}
                Some(Watermark::EventTime(t)) => {
                    all_idle = false;
                    min = Some(min.map_or(t, |m: i64| m.min(t)));
                }
            }
        }
        if all_idle {
            if !*idle && slots.iter().any(|s| !s.ended) {
                *idle = true;
                self.out
                    .broadcast(Message::Watermark(Watermark::Idle))
                    .await?;
            }
        } else if let Some(t) = min {
            *idle = false;
            if self.current.is_none_or(|c| t > c) {
                self.current = Some(t);
                self.op.on_watermark(t, &mut self.out).await?;
            }
        }
        Ok(())
    }

    /// Every input delivered `barrier`: snapshot, report, forward. True when the run stops
    /// here.
    async fn checkpoint(&mut self, barrier: Barrier) -> Result<bool, TaskError> {
        let started = std::time::Instant::now();
        let state = self.op.snapshot().await?;
        debug!(
            task = %self.info.node,
            subtask = self.info.subtask,
            epoch = barrier.epoch,
            micros = started.elapsed().as_micros() as u64,
            "snapshot taken"
        );
        if let Some(link) = &self.link {
            let files = link.files(state, self.current)?;
            link.report(Report::Snapshot {
                task: link.task,
                epoch: barrier.epoch,
                files,
            });
        }
        self.out.broadcast(Message::Barrier(barrier)).await?;
        if !barrier.stop {
            return Ok(false);
        }
        // A sink commits what the stop's checkpoint covers before the run ends.
        if let Some(link) = self.link.as_mut()
            && link.wait_completed(barrier.epoch).await
        {
            self.op.on_checkpoint_complete(barrier.epoch).await?;
        }
        debug!(task = %self.info.node, subtask = self.info.subtask, epoch = barrier.epoch, "stopped at a checkpoint");
        Ok(true)
    }

    /// Every input ended: flush, report the final state, forward the end; then wait for the
    /// last epoch (written once every subtask ended, if the sources read to their end), so a
    /// sink commits what it staged at the end only when that epoch records it. A checkpoint
    /// that completes meanwhile is not the last one: it does not cover what came after its
    /// barrier, so it commits nothing here.
    async fn close(&mut self) -> Result<(), TaskError> {
        self.op.on_close(&mut self.out).await?;
        if let Some(link) = &self.link {
            let state = self.op.snapshot().await?;
            let files = link.files(state, Some(i64::MAX))?;
            link.report(Report::Ended {
                task: link.task,
                files,
                complete: true,
            });
        }
        debug!(task = %self.info.node, subtask = self.info.subtask, "operator ended");
        self.out.broadcast(Message::EndOfData).await?;
        let Some(link) = self.link.as_mut() else {
            return Ok(());
        };
        // Err: the coordinator ended without a last epoch (a stop without checkpoint).
        let last = link.completed.wait_for(|c| c.1).await.map(|c| c.0);
        if let Ok(epoch) = last {
            self.op.on_checkpoint_complete(epoch).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::arrow::record_batch::RecordBatch;

    /// Forwards what it gets.
    struct Forward;

    #[async_trait::async_trait]
    impl Operator for Forward {
        async fn process_batch(
            &mut self,
            batch: RecordBatch,
            _input: usize,
            out: &mut Collector,
        ) -> Result<(), TaskError> {
            out.collect(batch).await
        }
    }

    fn data() -> Message {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let column = Arc::new(Int64Array::from(vec![1i64]));
        Message::Data(RecordBatch::try_new(schema, vec![column]).unwrap())
    }

    #[tokio::test]
    async fn an_aligned_input_is_not_read_until_every_input_delivered_the_barrier() {
        let (tx0, rx0) = mpsc::channel(2);
        let (tx1, rx1) = mpsc::channel(2);
        let (out, mut forwarded) = Collector::for_test(64);
        let task = OperatorTask {
            op: Box::new(Forward),
            memory: None,
            info: TaskInfo::for_test(0, 1),
            slot_inputs: vec![0, 1],
            out,
            link: None,
            current: None,
        };
        let running = tokio::spawn(task.run(vec![rx0, rx1]));
        let barrier = Message::Barrier(Barrier {
            epoch: 1,
            stop: false,
        });
        tx0.send((0, barrier.clone())).await.unwrap();
        // Slot 0 is aligned: once its barrier is read, it is not read again, so its channel
        // fills up and its sender has to wait (backpressure, not memory).
        while tx0.capacity() < 2 {
            tokio::task::yield_now().await;
        }
        tx0.send((0, data())).await.unwrap();
        tx0.send((0, data())).await.unwrap();
        assert!(
            tx0.try_send((0, data())).is_err(),
            "an aligned slot was read"
        );
        // Slot 1 is read meanwhile.
        tx1.send((1, data())).await.unwrap();
        assert!(matches!(
            forwarded.recv().await,
            Some((_, Message::Data(_)))
        ));
        // Its barrier completes the alignment: the barrier goes on, then slot 0's rows.
        tx1.send((1, barrier)).await.unwrap();
        assert!(matches!(
            forwarded.recv().await,
            Some((_, Message::Barrier(_)))
        ));
        for _ in 0..2 {
            assert!(matches!(
                forwarded.recv().await,
                Some((_, Message::Data(_)))
            ));
        }
        for (tx, slot) in [(&tx0, 0), (&tx1, 1)] {
            tx.send((slot, Message::EndOfData)).await.unwrap();
        }
        running.await.unwrap().unwrap();
    }
}
