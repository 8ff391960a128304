//! The output side of a subtask: it routes batches to the downstream subtasks (one, round
//! robin, or by key hash) and broadcasts control messages to all of them. This is the hot
//! path: a batch is cloned (Arcs, not data) per route and split only for a hash route.

use std::sync::Arc;

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::physical_expr::PhysicalExpr;
use tokio::sync::mpsc;

use super::error::TaskError;
use super::hash::partition_by_hash;
use super::message::{Message, Watermark};
use super::metrics::NodeCounters;

/// The sending side of a subtask's input slot: messages tagged with the slot number.
pub(crate) type Tx = mpsc::Sender<(u32, Message)>;
/// The receiving side of a subtask's input slot.
pub(crate) type Rx = mpsc::Receiver<(u32, Message)>;

/// Where a subtask's output goes.
pub(crate) enum Route {
    /// One downstream subtask.
    One(Tx, u32),
    /// Round-robin over all downstream subtasks.
    RoundRobin(Vec<(Tx, u32)>, usize),
    /// By key hash over all downstream subtasks.
    Hash(Vec<(Tx, u32)>, Vec<Arc<dyn PhysicalExpr>>),
}

/// The output side of a subtask: routes batches and broadcasts control messages.
pub struct Collector {
    node: String,
    routes: Vec<Route>,
    /// The node's counters: rows and bytes out, time blocked, output watermark.
    counters: Arc<NodeCounters>,
}

impl Collector {
    /// The output of node `node` along `routes` (one per out-edge), counted in `counters`.
    pub(crate) fn new(node: String, routes: Vec<Route>, counters: Arc<NodeCounters>) -> Self {
        Collector {
            node,
            routes,
            counters,
        }
    }

    /// Sends a batch downstream (dropped if it has no rows).
    pub async fn collect(&mut self, batch: RecordBatch) -> Result<(), TaskError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.counters.sent(&batch);
        let counters = &self.counters;
        for route in &mut self.routes {
            // Cloning a batch clones Arcs, not column data.
            let batch = batch.clone();
            match route {
                Route::One(tx, slot) => send(tx, *slot, Message::Data(batch), counters).await?,
                Route::RoundRobin(txs, next) => {
                    let (tx, slot) = &txs[*next];
                    *next = (*next + 1) % txs.len();
                    send(tx, *slot, Message::Data(batch), counters).await?
                }
                Route::Hash(txs, keys) => {
                    let parts = partition_by_hash(&batch, keys, txs.len())
                        .map_err(TaskError::expression(&self.node))?;
                    for (part, (tx, slot)) in parts.into_iter().zip(txs.iter()) {
                        if let Some(part) = part {
                            send(tx, *slot, Message::Data(part), counters).await?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Sends a control message to every downstream subtask.
    pub async fn broadcast(&mut self, msg: Message) -> Result<(), TaskError> {
        if let Message::Watermark(Watermark::EventTime(t)) = &msg {
            self.counters.watermark(*t);
        }
        let counters = &self.counters;
        for route in &self.routes {
            match route {
                Route::One(tx, slot) => send(tx, *slot, msg.clone(), counters).await?,
                Route::RoundRobin(txs, _) | Route::Hash(txs, _) => {
                    for (tx, slot) in txs {
                        send(tx, *slot, msg.clone(), counters).await?;
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

#[cfg(test)]
impl Collector {
    /// A collector into one channel of `capacity` messages, for operator tests.
    pub(crate) fn for_test(capacity: usize) -> (Collector, Rx) {
        let (tx, rx) = mpsc::channel(capacity);
        let routes = vec![Route::One(tx, 0)];
        let counters = Arc::default();
        (Collector::new("test".to_string(), routes, counters), rx)
    }
}

/// Sends `msg` into `slot`; the time spent waiting for room (backpressure) is counted, and
/// only taken when the channel is full.
async fn send(tx: &Tx, slot: u32, msg: Message, counters: &NodeCounters) -> Result<(), TaskError> {
    let msg = match tx.try_send((slot, msg)) {
        Ok(()) => return Ok(()),
        Err(mpsc::error::TrySendError::Closed(_)) => return Err(TaskError::ChannelClosed),
        Err(mpsc::error::TrySendError::Full(msg)) => msg,
    };
    let waiting = std::time::Instant::now();
    let sent = tx.send(msg).await.map_err(|_| TaskError::ChannelClosed);
    counters.blocked(waiting.elapsed());
    sent
}
