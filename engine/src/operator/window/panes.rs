//! The window aggregate of TUMBLE, HOP and instant windows: per open window (a *pane*,
//! keyed by its end), DataFusion's `GroupValues` and one `GroupsAccumulator` per aggregate,
//! updated batch by batch and emitted when the watermark passes the end.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int64Array, TimestampNanosecondArray, UInt32Array,
};
use datafusion::arrow::datatypes::Int64Type;
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::error::Result;
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_plan::aggregates::group_values::{GroupValues, new_group_values};
use datafusion::physical_plan::aggregates::order::GroupOrdering;
use tracing::debug;

use super::{Rows, WindowAggregate, WindowKind, take_all, timestamps, window_struct};
use crate::operator::aggregate::AggregateSpec;
use crate::operator::aggregate::{bad_state, state_batch, state_keys, state_widths};
use crate::task::{Collector, Message, Operator, TaskError, TaskInfo, Watermark};
use crate::task::{RestoredState, StateError, TaskState};

/// State table of a window aggregate: one row per group of an open pane (see [`Pane::snapshot`]).
const PANES: &str = "panes";
/// State table (JSON): the number of late rows dropped so far.
const LATE: &str = "late";
/// The open groups of one window.
struct Pane {
    groups: Box<dyn GroupValues>,
    accumulators: Vec<Box<dyn GroupsAccumulator>>,
}

impl Pane {
    fn new(plan: &WindowAggregate) -> Result<Pane> {
        let groups = new_group_values(plan.key_schema.clone(), &GroupOrdering::None)?;
        let accumulators = plan
            .aggregates
            .iter()
            .map(AggregateSpec::groups_accumulator)
            .collect::<Result<_>>()?;
        Ok(Pane {
            groups,
            accumulators,
        })
    }

    /// Merges groups given by their key values and their accumulators' intermediate states
    /// (`widths[i]` columns for aggregate `i`).
    fn merge(&mut self, keys: &[ArrayRef], states: &[ArrayRef], widths: &[usize]) -> Result<()> {
        if states.len() != widths.iter().sum::<usize>() {
            return Err(bad_state(PANES));
        }
        let mut group_ids = Vec::new();
        self.groups.intern(keys, &mut group_ids)?;
        let total = self.groups.len();
        let mut offset = 0;
        for (acc, width) in self.accumulators.iter_mut().zip(widths) {
            acc.merge_batch(&states[offset..offset + width], &group_ids, total)?;
            offset += width;
        }
        Ok(())
    }

    /// The pane's groups as rows of the [`PANES`] table: key columns, `_end`, then every
    /// accumulator's state columns. Reading DataFusion's group state drains it, so the pane is
    /// rebuilt from what was read (as a restore would rebuild it).
    fn snapshot(
        &mut self,
        plan: &WindowAggregate,
        end: i64,
        widths: &[usize],
    ) -> Result<Option<RecordBatch>> {
        if self.groups.is_empty() {
            return Ok(None);
        }
        let keys = self.groups.emit(EmitTo::All)?;
        let mut states = Vec::new();
        for acc in &mut self.accumulators {
            states.extend(acc.state(EmitTo::All)?);
        }
        let mut rebuilt = Pane::new(plan)?;
        rebuilt.merge(&keys, &states, widths)?;
        *self = rebuilt;
        let rows = keys.first().map_or(0, |k| k.len());
        let mut names: Vec<String> = plan
            .key_schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        names.push("_end".to_string());
        names.extend((0..states.len()).map(|i| format!("state{i}")));
        let mut columns = keys;
        columns.push(Arc::new(Int64Array::from(vec![end; rows])));
        columns.extend(states);
        state_batch(names, columns).map(Some)
    }
}

/// A window aggregate subtask.
pub(super) struct WindowAggregateOp {
    plan: WindowAggregate,
    info: TaskInfo,
    /// Per aggregate, the number of its state columns.
    state_widths: Vec<usize>,
    /// Open windows by end.
    panes: BTreeMap<i64, Pane>,
    watermark: Option<i64>,
    late: u64,
}

impl WindowAggregateOp {
    pub(super) fn new(plan: &WindowAggregate, info: &TaskInfo) -> Result<Self, TaskError> {
        let state_widths = state_widths(&plan.aggregates).map_err(TaskError::setup(&plan.label))?;
        Ok(WindowAggregateOp {
            plan: plan.clone(),
            info: info.clone(),
            state_widths,
            panes: BTreeMap::new(),
            watermark: None,
            late: 0,
        })
    }
}

/// Rows grouped by `ends[i]`. Input in event-time order (the usual case) gives contiguous
/// runs, which need no copy; otherwise rows are gathered per end, in first-seen order.
fn group_by_end(ends: &[i64]) -> Vec<(i64, Rows)> {
    let Some(&first) = ends.first() else {
        return vec![];
    };
    if ends.iter().all(|&e| e == first) {
        return vec![(first, Rows::All)];
    }
    if ends.windows(2).all(|w| w[0] <= w[1]) {
        let mut runs = Vec::new();
        let mut start = 0;
        for i in 1..=ends.len() {
            if i == ends.len() || ends[i] != ends[start] {
                runs.push((ends[start], Rows::Range(start, i - start)));
                start = i;
            }
        }
        return runs;
    }
    let mut order = Vec::new();
    let mut by_end: HashMap<i64, Vec<u32>> = HashMap::new();
    for (i, &e) in ends.iter().enumerate() {
        by_end
            .entry(e)
            .or_insert_with(|| {
                order.push(e);
                Vec::new()
            })
            .push(i as u32);
    }
    order
        .into_iter()
        .map(|e| {
            let rows = by_end.remove(&e).unwrap_or_default();
            (e, Rows::Indices(UInt32Array::from(rows)))
        })
        .collect()
}

impl WindowAggregateOp {
    /// Merges rows of the [`PANES`] table into the open panes.
    fn load(&mut self, batch: &RecordBatch) -> Result<()> {
        let key_count = self.plan.key_schema.fields().len();
        let columns = batch.columns();
        if columns.len() != key_count + 1 + self.state_widths.iter().sum::<usize>() {
            return Err(bad_state(PANES));
        }
        let ends = columns[key_count]
            .as_primitive_opt::<Int64Type>()
            .ok_or_else(|| bad_state(PANES))?;
        for (end, rows) in group_by_end(ends.values()) {
            let keys = take_all(&columns[..key_count], &rows)?;
            let states = take_all(&columns[key_count + 1..], &rows)?;
            let pane = match self.panes.entry(end) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => e.insert(Pane::new(&self.plan)?),
            };
            pane.merge(&keys, &states, &self.state_widths)?;
        }
        Ok(())
    }

    /// `batch` without its late rows, counted: those whose first window has closed. A hop
    /// window's row is dropped from every window, the open ones included, as Arroyo drops it
    /// (a row whose slide has passed the watermark's); a tumble's from its one window.
    fn drop_late(&mut self, batch: &RecordBatch) -> Result<Option<RecordBatch>> {
        let Some(watermark) = self.watermark else {
            return Ok(None);
        };
        let step = match self.plan.window {
            WindowKind::Tumble { width } => width,
            WindowKind::Hop { slide, .. } => slide,
            WindowKind::Instant { .. } => 1,
            WindowKind::Session { .. } => unreachable!("sessions have their own operator"),
        };
        let on_time = |t: &i64| t - t.rem_euclid(step) + step > watermark;
        let ts = timestamps(batch);
        // The common case, every row on time, allocates nothing.
        if ts.iter().all(on_time) {
            return Ok(None);
        }
        let keep: BooleanArray = ts.iter().map(|t| Some(on_time(t))).collect();
        let late = (batch.num_rows() - keep.true_count()) as u64;
        if late == 0 {
            return Ok(None);
        }
        self.late += late;
        self.info.counters.late(late);
        Ok(Some(datafusion::arrow::compute::filter_record_batch(
            batch, &keep,
        )?))
    }

    fn update(&mut self, batch: &RecordBatch) -> Result<()> {
        let on_time = self.drop_late(batch)?;
        let batch = on_time.as_ref().unwrap_or(batch);
        let keys = crate::operator::group_keys(&self.plan.keys, batch)?;
        let mut args: Vec<Vec<ArrayRef>> = Vec::with_capacity(self.plan.aggregates.len());
        let mut filters: Vec<Option<ArrayRef>> = Vec::with_capacity(self.plan.aggregates.len());
        for a in &self.plan.aggregates {
            args.push(a.arguments(batch)?);
            filters.push(a.filter_column(batch)?);
        }
        let ts = timestamps(batch);
        let assignments: Vec<Vec<i64>> = match self.plan.window {
            WindowKind::Tumble { width } => {
                vec![ts.iter().map(|t| t - t.rem_euclid(width) + width).collect()]
            }
            WindowKind::Hop { slide, width } => (0..width / slide)
                .map(|k| {
                    ts.iter()
                        .map(|t| t - t.rem_euclid(slide) + slide + k * slide)
                        .collect()
                })
                .collect(),
            WindowKind::Instant { .. } => vec![ts.iter().map(|t| t + 1).collect()],
            WindowKind::Session { .. } => unreachable!("sessions have their own operator"),
        };
        for ends in assignments {
            for (end, idx) in group_by_end(&ends) {
                let key_slice = take_all(&keys, &idx)?;
                let pane = match self.panes.entry(end) {
                    Entry::Occupied(e) => e.into_mut(),
                    Entry::Vacant(e) => e.insert(Pane::new(&self.plan)?),
                };
                let mut group_ids = Vec::new();
                pane.groups.intern(&key_slice, &mut group_ids)?;
                let total = pane.groups.len();
                for (i, acc) in pane.accumulators.iter_mut().enumerate() {
                    let arg_slice = take_all(&args[i], &idx)?;
                    let filter = match &filters[i] {
                        Some(f) => Some(take_all(std::slice::from_ref(f), &idx)?.remove(0)),
                        None => None,
                    };
                    let filter = filter
                        .as_ref()
                        .and_then(|f| f.as_any().downcast_ref::<BooleanArray>());
                    acc.update_batch(&arg_slice, &group_ids, filter, total)?;
                }
            }
        }
        Ok(())
    }

    fn emit(&self, end: i64, mut pane: Pane) -> Result<Option<RecordBatch>> {
        let rows = pane.groups.len();
        if rows == 0 {
            return Ok(None);
        }
        let mut keys = pane.groups.emit(EmitTo::All)?.into_iter();
        if self.plan.keys.is_empty() {
            keys.next();
        }
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.plan.schema.fields().len());
        let group_count = self.plan.keys.len() + usize::from(self.plan.window_position.is_some());
        for i in 0..group_count {
            if Some(i) == self.plan.window_position {
                let width = match self.plan.window {
                    WindowKind::Tumble { width }
                    | WindowKind::Hop { width, .. }
                    | WindowKind::Instant { width } => width,
                    WindowKind::Session { .. } => 1,
                };
                columns.push(window_struct(end - width, end, rows));
            } else {
                columns.push(keys.next().expect("one key column per key"));
            }
        }
        for acc in &mut pane.accumulators {
            columns.push(acc.evaluate(EmitTo::All)?);
        }
        columns.push(Arc::new(TimestampNanosecondArray::from(vec![
            end - 1;
            rows
        ])));
        let batch = RecordBatch::try_new_with_options(
            self.plan.schema.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )?;
        Ok(Some(batch))
    }
}

#[async_trait]
impl Operator for WindowAggregateOp {
    async fn process_batch(
        &mut self,
        batch: RecordBatch,
        _input: usize,
        _out: &mut Collector,
    ) -> Result<(), TaskError> {
        self.update(&batch)
            .map_err(TaskError::expression(&self.plan.label))
    }

    /// What DataFusion's group values and accumulators of every open window say they hold.
    fn state_bytes(&self) -> usize {
        self.panes
            .values()
            .map(|pane| {
                pane.groups.size() + pane.accumulators.iter().map(|a| a.size()).sum::<usize>()
            })
            .sum()
    }

    async fn on_watermark(&mut self, watermark: i64, out: &mut Collector) -> Result<(), TaskError> {
        self.watermark = Some(watermark);
        let open = match watermark.checked_add(1) {
            Some(w) => self.panes.split_off(&w),
            None => BTreeMap::new(),
        };
        let closed = std::mem::replace(&mut self.panes, open);
        for (end, pane) in closed {
            let batch = self
                .emit(end, pane)
                .map_err(TaskError::expression(&self.plan.label))?;
            if let Some(batch) = batch {
                out.collect(batch).await?;
            }
        }
        out.broadcast(Message::Watermark(Watermark::EventTime(watermark)))
            .await
    }

    async fn on_close(&mut self, _out: &mut Collector) -> Result<(), TaskError> {
        if self.late > 0 {
            debug!(node = %self.plan.label, late = self.late, "late rows dropped");
        }
        Ok(())
    }

    /// The open panes (table [`PANES`]) and the late-row count (table [`LATE`]); the
    /// watermark that decides lateness is the subtask's, which the runtime saves.
    async fn snapshot(&mut self) -> Result<TaskState, TaskError> {
        let mut state = TaskState::new();
        let mut batches = Vec::with_capacity(self.panes.len());
        for (&end, pane) in &mut self.panes {
            let batch = pane
                .snapshot(&self.plan, end, &self.state_widths)
                .map_err(StateError::operator(&self.plan.label, PANES))?;
            batches.extend(batch);
        }
        state.put(PANES, batches);
        state.put_json(LATE, &self.late)?;
        Ok(state)
    }

    /// Takes the groups whose keys hash to this subtask, from every old subtask's panes.
    fn restore(&mut self, state: &RestoredState) -> Result<(), TaskError> {
        self.watermark = state.watermark;
        self.late = restored_late(state, &self.info)?;
        let keys = state_keys(&self.plan.keys, &self.plan.key_schema);
        for batch in state.owned_rows(PANES, &keys, &self.info)? {
            self.load(&batch)
                .map_err(StateError::operator(&self.plan.label, PANES))?;
        }
        Ok(())
    }
}

/// The late-row count of a restored subtask: old subtask `j`'s count goes to new subtask
/// `j mod parallelism`, which keeps the total (and, at the same parallelism, each count).
fn restored_late(state: &RestoredState, info: &TaskInfo) -> Result<u64, TaskError> {
    let counts: Vec<Vec<u64>> = state.json(LATE)?;
    Ok(counts
        .iter()
        .enumerate()
        .filter(|(j, _)| j % info.parallelism.max(1) == info.subtask)
        .flat_map(|(_, c)| c)
        .sum())
}
