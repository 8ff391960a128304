//! Runs a [`Program`]: one tokio task per subtask, bounded channels between them.

use std::sync::Arc;

use datafusion::arrow::record_batch::RecordBatch;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{Instrument, debug, info_span};

use super::{EdgeKind, Message, NodeKind, Program, Watermark};
use crate::connector::{SourceContext, SourceEnd};
use crate::operator::{Operator, TaskInfo};

/// Messages a subtask's input channel holds before its senders wait.
const CHANNEL_CAPACITY: usize = 16;

/// Errors that end a run.
#[derive(Debug, thiserror::Error)]
pub enum DataflowError {
    /// A connector failed: bad input data, an unreachable file, a failed write.
    #[error("{node}: {message}")]
    Connector { node: String, message: String },
    /// Evaluating an expression failed on a batch.
    #[error("{node}: evaluating an expression failed")]
    Expression {
        node: String,
        #[source]
        source: datafusion::error::DataFusionError,
    },
    /// Setting up the dataflow failed.
    #[error("{0}")]
    Setup(String),
    /// A subtask panicked: a bug.
    #[error("subtask {0} panicked")]
    Panic(String),
    /// A downstream subtask went away while this one still had data for it.
    #[error("channel closed")]
    ChannelClosed,
}

impl DataflowError {
    /// Wraps a failed evaluation in node `node`: `.map_err(DataflowError::expression(&label))`.
    pub fn expression(
        node: &str,
    ) -> impl FnOnce(datafusion::error::DataFusionError) -> DataflowError + use<> {
        let node = node.to_string();
        move |source| DataflowError::Expression { node, source }
    }
}

/// How a run is asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Sources stop reading, everything in flight drains to the sinks.
    Graceful,
    /// Every task is aborted at once; in-flight data is lost (recovered from a checkpoint).
    Immediate,
}

/// The outcome of a run: every source reached its end, or a stop was requested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    Finished,
    Stopped,
}

/// A running dataflow.
pub struct RunHandle {
    stop: watch::Sender<Option<StopMode>>,
    tasks: JoinSet<Result<(), DataflowError>>,
}

impl RunHandle {
    /// Asks the run to stop; [`RunHandle::wait`] then returns [`RunOutcome::Stopped`].
    pub fn stop(&self, mode: StopMode) {
        let _ = self.stop.send(Some(mode));
    }

    /// A receiver that sees the stop request, for callers that wait elsewhere.
    pub fn stop_sender(&self) -> watch::Sender<Option<StopMode>> {
        self.stop.clone()
    }

    /// Waits for every subtask; the first error aborts the rest and is returned.
    pub async fn wait(mut self) -> Result<RunOutcome, DataflowError> {
        let mut stop_rx = self.stop.subscribe();
        loop {
            tokio::select! {
                joined = self.tasks.join_next() => match joined {
                    None => break,
                    Some(Ok(Ok(()))) => {}
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
            }
        }
        Ok(if self.stop.borrow().is_some() {
            RunOutcome::Stopped
        } else {
            RunOutcome::Finished
        })
    }
}

type Tx = mpsc::Sender<(u32, Message)>;
type Rx = mpsc::Receiver<(u32, Message)>;

/// Where a subtask's output goes.
enum Route {
    /// One downstream subtask.
    One(Tx, u32),
    /// Round-robin over all downstream subtasks.
    RoundRobin(Vec<(Tx, u32)>, usize),
    /// By key hash over all downstream subtasks.
    Hash(
        Vec<(Tx, u32)>,
        Vec<Arc<dyn datafusion::physical_expr::PhysicalExpr>>,
    ),
}

/// The output side of a subtask: routes batches and broadcasts control messages.
pub struct Collector {
    node: String,
    routes: Vec<Route>,
}

impl Collector {
    /// Sends a batch downstream (dropped if it has no rows).
    pub async fn collect(&mut self, batch: RecordBatch) -> Result<(), DataflowError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        for route in &mut self.routes {
            // Cloning a batch clones Arcs, not column data.
            let batch = batch.clone();
            match route {
                Route::One(tx, slot) => send(tx, *slot, Message::Data(batch)).await?,
                Route::RoundRobin(txs, next) => {
                    let (tx, slot) = &txs[*next];
                    *next = (*next + 1) % txs.len();
                    send(tx, *slot, Message::Data(batch)).await?
                }
                Route::Hash(txs, keys) => {
                    let parts = crate::operator::partition_by_hash(&batch, keys, txs.len())
                        .map_err(DataflowError::expression(&self.node))?;
                    for (part, (tx, slot)) in parts.into_iter().zip(txs.iter()) {
                        if let Some(part) = part {
                            send(tx, *slot, Message::Data(part)).await?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Sends a control message to every downstream subtask.
    pub async fn broadcast(&mut self, msg: Message) -> Result<(), DataflowError> {
        for route in &self.routes {
            match route {
                Route::One(tx, slot) => send(tx, *slot, msg.clone()).await?,
                Route::RoundRobin(txs, _) | Route::Hash(txs, _) => {
                    for (tx, slot) in txs {
                        send(tx, *slot, msg.clone()).await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// True when nothing is downstream (a sink).
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

async fn send(tx: &Tx, slot: u32, msg: Message) -> Result<(), DataflowError> {
    tx.send((slot, msg))
        .await
        .map_err(|_| DataflowError::ChannelClosed)
}

/// Starts every subtask of `program` at `parallelism` on the current runtime.
pub fn run(
    program: &Program,
    parallelism: usize,
    job: Arc<crate::connector::JobContext>,
) -> Result<RunHandle, DataflowError> {
    let parallelism = parallelism.max(1);
    let n = program.nodes.len();
    let par: Vec<usize> = program
        .nodes
        .iter()
        .map(|node| node.parallelism.unwrap_or(parallelism).max(1))
        .collect();

    // One input channel per subtask.
    let mut senders: Vec<Vec<Tx>> = Vec::with_capacity(n);
    let mut receivers: Vec<Vec<Option<Rx>>> = Vec::with_capacity(n);
    for &p in &par {
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..p)
            .map(|_| {
                let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
                (tx, Some(rx))
            })
            .unzip();
        senders.push(txs);
        receivers.push(rxs);
    }

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
            for i in 0..up {
                if forward {
                    let slot = slot_inputs[node][i].len() as u32;
                    slot_inputs[node][i].push(input);
                    routes[edge.from][i].push(Route::One(senders[node][i].clone(), slot));
                    continue;
                }
                let mut targets = Vec::with_capacity(down);
                for (j, inputs) in slot_inputs[node].iter_mut().enumerate() {
                    let slot = inputs.len() as u32;
                    inputs.push(input);
                    targets.push((senders[node][j].clone(), slot));
                }
                routes[edge.from][i].push(match &edge.kind {
                    EdgeKind::Shuffle(keys) => Route::Hash(targets, keys.clone()),
                    // Start subtasks at different targets so small batches spread out.
                    _ => Route::RoundRobin(targets, i % down),
                });
            }
        }
    }
    drop(senders);

    let (stop, _) = watch::channel(None);
    let mut tasks = JoinSet::new();
    for (node_id, node) in program.nodes.iter().enumerate() {
        for subtask in (0..par[node_id]).rev() {
            let info = TaskInfo {
                node: node.label.clone(),
                subtask,
                parallelism: par[node_id],
                job: job.clone(),
            };
            let out = Collector {
                node: node.label.clone(),
                routes: routes[node_id].pop().expect("one route list per subtask"),
            };
            let name = format!("{}#{}", node.label, subtask);
            match &node.kind {
                NodeKind::Source(factory) => {
                    let source = factory.create(&info)?;
                    let ctx = SourceContext::new(info, out, stop.subscribe());
                    tasks.spawn(run_source(source, ctx).instrument(info_span!("task", %name)));
                }
                NodeKind::Operator(factory) => {
                    let op = factory.create(&info)?;
                    let rx = receivers[node_id][subtask]
                        .take()
                        .expect("one receiver per subtask");
                    let inputs = std::mem::take(&mut slot_inputs[node_id][subtask]);
                    tasks.spawn(
                        run_operator(op, info, rx, inputs, out)
                            .instrument(info_span!("task", %name)),
                    );
                }
            }
        }
    }
    Ok(RunHandle { stop, tasks })
}

async fn run_source(
    mut source: Box<dyn crate::connector::Source>,
    mut ctx: SourceContext,
) -> Result<(), DataflowError> {
    let end = source.run(&mut ctx).await?;
    debug!(task = %ctx.info().node, subtask = ctx.info().subtask, ?end, "source ended");
    let out = ctx.collector();
    if end == SourceEnd::Finished {
        // A bounded source that is done: everything it could ever send is before this.
        out.broadcast(Message::Watermark(Watermark::EventTime(i64::MAX)))
            .await?;
    }
    out.broadcast(Message::EndOfData).await
}

async fn run_operator(
    mut op: Box<dyn Operator>,
    info: TaskInfo,
    mut rx: Rx,
    slot_inputs: Vec<usize>,
    mut out: Collector,
) -> Result<(), DataflowError> {
    let slots = slot_inputs.len();
    // Per slot: its last watermark (None = none yet), and whether it has ended.
    let mut marks: Vec<Option<Watermark>> = vec![None; slots];
    let mut ended = vec![false; slots];
    let mut open = slots;
    let mut current: Option<i64> = None;
    let mut idle = false;
    if slots == 0 {
        op.on_close(&mut out).await?;
        return out.broadcast(Message::EndOfData).await;
    }
    while let Some((slot, msg)) = rx.recv().await {
        let slot = slot as usize;
        match msg {
            Message::Data(batch) => {
                op.process_batch(batch, slot_inputs[slot], &mut out).await?;
            }
            Message::Watermark(wm) => {
                marks[slot] = Some(wm);
                // The combined watermark: the minimum over open, non-idle slots; undefined
                // while some open slot has sent none.
                let mut min: Option<i64> = None;
                let mut all_idle = true;
                let mut defined = true;
                for s in 0..slots {
                    if ended[s] {
                        continue;
                    }
                    match marks[s] {
                        None => defined = false,
                        Some(Watermark::Idle) => {}
                        Some(Watermark::EventTime(t)) => {
                            all_idle = false;
                            min = Some(min.map_or(t, |m: i64| m.min(t)));
                        }
                    }
                }
                if !defined {
                    continue;
                }
                if all_idle {
                    if !idle {
                        idle = true;
                        out.broadcast(Message::Watermark(Watermark::Idle)).await?;
                    }
                } else if let Some(t) = min {
                    idle = false;
                    if current.is_none_or(|c| t > c) {
                        current = Some(t);
                        op.on_watermark(t, &mut out).await?;
                    }
                }
            }
            Message::EndOfData => {
                if !ended[slot] {
                    ended[slot] = true;
                    open -= 1;
                }
                if open == 0 {
                    op.on_close(&mut out).await?;
                    debug!(task = %info.node, subtask = info.subtask, "operator ended");
                    return out.broadcast(Message::EndOfData).await;
                }
            }
        }
    }
    Err(DataflowError::ChannelClosed)
}
