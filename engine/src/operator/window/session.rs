//! SESSION windows: per key, rows closer than the gap to each other form one session. Rows
//! are kept until the watermark closes their session; then each closed session is aggregated
//! with DataFusion's accumulators (one group per session).

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, TimestampNanosecondArray, UInt32Array,
};
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::error::Result;
use datafusion::logical_expr::EmitTo;

use super::{Rows, WindowAggregate, take_all, timestamps, window_structs};
use crate::task::{Collector, Message, Operator, TaskError, TaskInfo, Watermark};
use crate::task::{RestoredState, TaskState};

/// State table of a session operator: the buffered rows of open sessions, as they came in.
const SESSION_ROWS: &str = "rows";

/// Session windows: rows are kept until the watermark closes their session; then each closed
/// session is aggregated with DataFusion's accumulators (one group per session).
pub(super) struct SessionOp {
    plan: WindowAggregate,
    info: TaskInfo,
    gap: i64,
    /// Rows of sessions still open.
    buffer: Vec<RecordBatch>,
    /// The bytes `buffer` takes, as Arrow counts them: the operator's state size.
    buffered_bytes: usize,
    /// No session can end before this: a watermark below it closes nothing, and the buffer
    /// is not sorted again for it. New rows only extend or merge sessions, or start new
    /// ones, so only a new row lowers it (to its time plus the gap).
    next_close: i64,
    watermark: Option<i64>,
}

impl SessionOp {
    pub(super) fn new(plan: &WindowAggregate, info: &TaskInfo, gap: i64) -> Self {
        SessionOp {
            plan: plan.clone(),
            info: info.clone(),
            gap,
            buffer: Vec::new(),
            buffered_bytes: 0,
            next_close: i64::MAX,
            watermark: None,
        }
    }

    fn keep(&mut self, batch: RecordBatch) {
        self.buffered_bytes += batch.get_array_memory_size();
        self.buffer.push(batch);
    }

    /// Emits the sessions that end at or before `watermark`; keeps the rest.
    fn close(&mut self, watermark: i64) -> Result<Option<RecordBatch>> {
        if self.buffer.is_empty() || watermark < self.next_close {
            return Ok(None);
        }
        let schema = self.buffer[0].schema();
        let batch = datafusion::arrow::compute::concat_batches(&schema, &self.buffer)?;
        self.buffer.clear();
        self.buffered_bytes = 0;
        let rows = batch.num_rows();
        let keys: Vec<ArrayRef> = self
            .plan
            .keys
            .iter()
            .map(|k| k.evaluate(&batch)?.into_array(rows))
            .collect::<Result<_>>()?;
        let ts = timestamps(&batch);
        // Order rows by key, then time.
        let key_rows = if keys.is_empty() {
            None
        } else {
            let converter = datafusion::arrow::row::RowConverter::new(
                keys.iter()
                    .map(|k| datafusion::arrow::row::SortField::new(k.data_type().clone()))
                    .collect(),
            )?;
            Some(converter.convert_columns(&keys)?)
        };
        let mut order: Vec<usize> = (0..rows).collect();
        order.sort_by(|&a, &b| {
            let by_key = match &key_rows {
                Some(r) => r.row(a).cmp(&r.row(b)),
                None => std::cmp::Ordering::Equal,
            };
            by_key.then(ts[a].cmp(&ts[b]))
        });
        // Sessions as runs of `order`.
        let same_key = |a: usize, b: usize| key_rows.as_ref().is_none_or(|r| r.row(a) == r.row(b));
        let mut closed_rows: Vec<u32> = Vec::new();
        let mut closed_groups: Vec<usize> = Vec::new();
        let mut firsts: Vec<u32> = Vec::new();
        let (mut starts, mut ends) = (Vec::new(), Vec::new());
        let mut open_rows: Vec<u32> = Vec::new();
        self.next_close = i64::MAX;
        let mut i = 0;
        while i < rows {
            let mut j = i + 1;
            while j < rows
                && same_key(order[i], order[j])
                && ts[order[j]] < ts[order[j - 1]] + self.gap
            {
                j += 1;
            }
            let (start, end) = (ts[order[i]], ts[order[j - 1]] + self.gap);
            if end <= watermark {
                let group = starts.len();
                starts.push(start);
                ends.push(end);
                firsts.push(order[i] as u32);
                for &r in &order[i..j] {
                    closed_rows.push(r as u32);
                    closed_groups.push(group);
                }
            } else {
                self.next_close = self.next_close.min(end);
                open_rows.extend(order[i..j].iter().map(|&r| r as u32));
            }
            i = j;
        }
        if !open_rows.is_empty() {
            self.keep(take_record_batch(&batch, &UInt32Array::from(open_rows))?);
        }
        if starts.is_empty() {
            return Ok(None);
        }
        let sessions = starts.len();
        let idx = Rows::Indices(UInt32Array::from(closed_rows));
        let mut agg_columns = Vec::with_capacity(self.plan.aggregates.len());
        for a in &self.plan.aggregates {
            let mut acc = a.groups_accumulator()?;
            let args = take_all(&a.arguments(&batch)?, &idx)?;
            let filter = match a.filter_column(&batch)? {
                Some(f) => Some(take_all(&[f], &idx)?.remove(0)),
                None => None,
            };
            let filter = filter
                .as_ref()
                .and_then(|f| f.as_any().downcast_ref::<BooleanArray>());
            acc.update_batch(&args, &closed_groups, filter, sessions)?;
            agg_columns.push(acc.evaluate(EmitTo::All)?);
        }
        let first_keys = take_all(&keys, &Rows::Indices(UInt32Array::from(firsts)))?;
        let mut keys = first_keys.into_iter();
        let mut columns: Vec<ArrayRef> = Vec::new();
        let group_count = self.plan.keys.len() + 1;
        let event_times: Vec<i64> = ends.iter().map(|e| e - 1).collect();
        let mut window = Some(window_structs(starts, ends));
        for i in 0..group_count {
            if Some(i) == self.plan.window_position {
                columns.push(window.take().expect("one window column"));
            } else {
                columns.push(keys.next().expect("one key column per key"));
            }
        }
        columns.extend(agg_columns);
        columns.push(Arc::new(TimestampNanosecondArray::from(event_times)));
        Ok(Some(RecordBatch::try_new_with_options(
            self.plan.schema.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(sessions)),
        )?))
    }
}

#[async_trait]
impl Operator for SessionOp {
    async fn process_batch(
        &mut self,
        batch: RecordBatch,
        _input: usize,
        _out: &mut Collector,
    ) -> Result<(), TaskError> {
        // A row whose whole session would already be closed is late.
        let batch = match self.watermark {
            Some(w) => {
                let ts = timestamps(&batch);
                let keep: BooleanArray = ts.iter().map(|t| Some(t + self.gap > w)).collect();
                let late = (batch.num_rows() - keep.true_count()) as u64;
                self.info.counters.late(late);
                datafusion::arrow::compute::filter_record_batch(&batch, &keep)
                    .map_err(|e| TaskError::expression(&self.plan.label)(e.into()))?
            }
            None => batch,
        };
        if let Some(&first) = timestamps(&batch).iter().min() {
            self.next_close = self.next_close.min(first.saturating_add(self.gap));
            self.keep(batch);
        }
        Ok(())
    }

    /// The rows of the sessions still open.
    fn state_bytes(&self) -> usize {
        self.buffered_bytes
    }

    async fn on_watermark(&mut self, watermark: i64, out: &mut Collector) -> Result<(), TaskError> {
        self.watermark = Some(watermark);
        let closed = self
            .close(watermark)
            .map_err(TaskError::expression(&self.plan.label))?;
        if let Some(batch) = closed {
            out.collect(batch).await?;
        }
        out.broadcast(Message::Watermark(Watermark::EventTime(watermark)))
            .await
    }

    /// The buffered rows of open sessions (table [`SESSION_ROWS`]); sessions are only formed
    /// when the watermark closes them, so the rows are the whole state.
    async fn snapshot(&mut self) -> Result<TaskState, TaskError> {
        let mut state = TaskState::new();
        state.put(SESSION_ROWS, self.buffer.iter().cloned());
        Ok(state)
    }

    /// Takes the buffered rows whose keys hash to this subtask: the stored rows are input
    /// rows, so the shuffle's own key expressions pick them.
    fn restore(&mut self, state: &RestoredState) -> Result<(), TaskError> {
        self.watermark = state.watermark;
        for batch in state.owned_rows(SESSION_ROWS, &self.plan.keys, &self.info)? {
            self.keep(batch);
        }
        // Unknown until the sessions are formed again: the next watermark does so.
        self.next_close = i64::MIN;
        Ok(())
    }
}
