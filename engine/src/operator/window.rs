//! The window aggregate: GROUP BY keys and a TUMBLE or HOP window (or the window column of an
//! upstream windowed result, an *instant* window), aggregates computed incrementally.
//!
//! Per open window (keyed by its end) it keeps DataFusion's own vectorized group machinery: a
//! `GroupValues` that interns key rows to group indices, and one `GroupsAccumulator` per
//! aggregate. A batch is split by window and each slice updates that window's groups. When the
//! watermark reaches a window's end, the window emits one row per group, with the window struct
//! `{start, end}` and event time `end - 1ns`, and is dropped. Rows for a window that has already
//! been emitted are late and dropped (and counted).
//!
//! Checkpoints: a window aggregate snapshots its open panes as one table of rows (the group's
//! key values, the pane's end, every accumulator's intermediate state), a session operator its
//! buffered input rows. Both are re-partitioned on restore by their key columns, exactly as the
//! shuffle that feeds the operator partitions its input.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int64Array, StructArray, TimestampNanosecondArray,
    UInt32Array,
};
use datafusion::arrow::compute::{take, take_record_batch};
use datafusion::arrow::datatypes::{
    DataType, Field, Fields, Int64Type, Schema, SchemaRef, TimeUnit,
};
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::{GroupsAccumulatorAdapter, PhysicalExpr};
use datafusion::physical_plan::aggregates::group_values::{GroupValues, new_group_values};
use datafusion::physical_plan::aggregates::order::GroupOrdering;
use tracing::debug;

use crate::task::{Collector, Message, TaskError, Watermark};
use crate::task::{Operator, OperatorFactory, TaskInfo};
use crate::task::{RestoredState, StateError, TaskState};

/// State table of a window aggregate: one row per group of an open pane (see [`Pane::snapshot`]).
const PANES: &str = "panes";
/// State table (JSON): the number of late rows dropped so far.
const LATE: &str = "late";
/// State table of a session operator: the buffered rows of open sessions, as they came in.
const SESSION_ROWS: &str = "rows";

/// Which windows a row falls in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    /// `[start, start + width)`, aligned to the epoch.
    Tumble { width: i64 },
    /// Every window of `width` starting at a multiple of `slide` that holds the row.
    Hop { slide: i64, width: i64 },
    /// Rows grouped by their event time: the input is itself windowed, and its window column
    /// is one of the keys.
    Instant,
    /// Per key, rows closer than `gap` to each other form one session
    /// `[first, last + gap)`.
    Session { gap: i64 },
}

/// One aggregate of the GROUP BY.
#[derive(Clone)]
pub struct AggregateSpec {
    pub expr: Arc<AggregateFunctionExpr>,
    pub filter: Option<Arc<dyn PhysicalExpr>>,
}

impl AggregateSpec {
    /// A vectorized accumulator for many groups (DataFusion's adapter for aggregates that only
    /// have a per-group one).
    pub fn groups_accumulator(&self) -> Result<Box<dyn GroupsAccumulator>> {
        if self.expr.groups_accumulator_supported() {
            return self.expr.create_groups_accumulator();
        }
        let expr = self.expr.clone();
        Ok(Box::new(GroupsAccumulatorAdapter::new(move || {
            expr.create_accumulator()
        })))
    }

    /// The aggregate's input columns over `batch`: its arguments, then the columns of its
    /// ORDER BY (`array_agg(x ORDER BY y)`), as DataFusion's accumulators expect them.
    pub fn arguments(&self, batch: &RecordBatch) -> Result<Vec<ArrayRef>> {
        let mut exprs = self.expr.expressions();
        exprs.extend(self.expr.order_bys().iter().map(|s| s.expr.clone()));
        super::evaluate_all(&exprs, batch)
    }

    /// The FILTER (WHERE ...) column over `batch`, if any.
    pub fn filter_column(&self, batch: &RecordBatch) -> Result<Option<ArrayRef>> {
        self.filter
            .as_ref()
            .map(|f| f.evaluate(batch)?.into_array(batch.num_rows()))
            .transpose()
    }
}

/// The plan of a window aggregate.
#[derive(Clone)]
pub struct WindowAggregate {
    pub label: String,
    pub window: WindowKind,
    /// Group keys other than the window, on the input.
    pub keys: Vec<Arc<dyn PhysicalExpr>>,
    /// The schema of the key values.
    pub key_schema: SchemaRef,
    pub aggregates: Vec<AggregateSpec>,
    /// Where the window struct goes among the group columns (None for an instant window).
    pub window_position: Option<usize>,
    /// Output: group columns, aggregates, event time.
    pub schema: SchemaRef,
}

impl OperatorFactory for WindowAggregate {
    fn create(&self, info: &TaskInfo) -> Result<Box<dyn Operator>, TaskError> {
        if let WindowKind::Session { gap } = self.window {
            return Ok(Box::new(SessionOp {
                plan: self.clone(),
                info: info.clone(),
                gap,
                buffer: Vec::new(),
                watermark: None,
            }));
        }
        let state_widths = state_widths(&self.aggregates).map_err(TaskError::setup(&self.label))?;
        Ok(Box::new(WindowAggregateOp {
            plan: self.clone(),
            info: info.clone(),
            state_widths,
            panes: BTreeMap::new(),
            watermark: None,
            late: 0,
        }))
    }
}

/// Per aggregate, how many columns its intermediate state has.
pub(crate) fn state_widths(aggregates: &[AggregateSpec]) -> Result<Vec<usize>> {
    aggregates
        .iter()
        .map(|a| Ok(a.expr.state_fields()?.len()))
        .collect()
}

/// The key columns of a state table whose first columns are the group keys (named as in
/// `key_schema`), as expressions to re-partition it on: they hash like the shuffle's key
/// expressions over the input. None for a global aggregate, whose one group is subtask 0's.
pub(crate) fn state_keys(
    keys: &[Arc<dyn PhysicalExpr>],
    key_schema: &Schema,
) -> Vec<Arc<dyn PhysicalExpr>> {
    if keys.is_empty() {
        return vec![];
    }
    key_schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| Arc::new(Column::new(f.name(), i)) as Arc<dyn PhysicalExpr>)
        .collect()
}

/// A state table batch of `columns` named `names`, every column nullable.
pub(crate) fn state_batch(names: Vec<String>, columns: Vec<ArrayRef>) -> Result<RecordBatch> {
    let fields: Vec<Field> = names
        .into_iter()
        .zip(&columns)
        .map(|(name, c)| Field::new(name, c.data_type().clone(), true))
        .collect();
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

/// A state table that does not have the expected columns.
pub(crate) fn bad_state(table: &str) -> DataFusionError {
    DataFusionError::Execution(format!("state table '{table}' has unexpected columns"))
}

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

struct WindowAggregateOp {
    plan: WindowAggregate,
    info: TaskInfo,
    /// Per aggregate, the number of its state columns.
    state_widths: Vec<usize>,
    /// Open windows by end.
    panes: BTreeMap<i64, Pane>,
    watermark: Option<i64>,
    late: u64,
}

fn timestamps(batch: &RecordBatch) -> &[i64] {
    batch
        .column(batch.num_columns() - 1)
        .as_any()
        .downcast_ref::<TimestampNanosecondArray>()
        .expect("the event-time column is last")
        .values()
}

/// Which rows of a batch belong to one window.
enum Rows {
    All,
    /// A contiguous run: sliced without copying.
    Range(usize, usize),
    Indices(UInt32Array),
}

impl Rows {
    fn len(&self, total: usize) -> usize {
        match self {
            Rows::All => total,
            Rows::Range(_, len) => *len,
            Rows::Indices(idx) => idx.len(),
        }
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

fn take_all(arrays: &[ArrayRef], rows: &Rows) -> Result<Vec<ArrayRef>> {
    match rows {
        Rows::All => Ok(arrays.to_vec()),
        Rows::Range(offset, len) => Ok(arrays.iter().map(|a| a.slice(*offset, *len)).collect()),
        Rows::Indices(idx) => arrays
            .iter()
            .map(|a| take(a.as_ref(), idx, None).map_err(DataFusionError::from))
            .collect(),
    }
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

    fn update(&mut self, batch: &RecordBatch) -> Result<()> {
        let keys = super::group_keys(&self.plan.keys, batch)?;
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
            WindowKind::Instant => vec![ts.iter().map(|t| t + 1).collect()],
            WindowKind::Session { .. } => unreachable!("sessions have their own operator"),
        };
        for ends in assignments {
            for (end, idx) in group_by_end(&ends) {
                if self.watermark.is_some_and(|w| end <= w) {
                    self.late += idx.len(ends.len()) as u64;
                    continue;
                }
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
                    WindowKind::Tumble { width } | WindowKind::Hop { width, .. } => width,
                    WindowKind::Instant | WindowKind::Session { .. } => 1,
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

/// A struct column `{start, end}` with the same window on every row.
pub fn window_struct(start: i64, end: i64, rows: usize) -> ArrayRef {
    window_structs(vec![start; rows], vec![end; rows])
}

/// A struct column `{start, end}` of the given windows.
pub fn window_structs(starts: Vec<i64>, ends: Vec<i64>) -> ArrayRef {
    let ts = DataType::Timestamp(TimeUnit::Nanosecond, None);
    let fields = Fields::from(vec![
        Field::new("start", ts.clone(), false),
        Field::new("end", ts, false),
    ]);
    Arc::new(StructArray::new(
        fields,
        vec![
            Arc::new(TimestampNanosecondArray::from(starts)),
            Arc::new(TimestampNanosecondArray::from(ends)),
        ],
        None,
    ))
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

/// The key schema for `keys` evaluated over `input`; a constant column when there is no key.
pub fn key_schema(keys: &[Arc<dyn PhysicalExpr>], input: &Schema) -> Result<SchemaRef> {
    if keys.is_empty() {
        return Ok(Arc::new(Schema::new(vec![Field::new(
            "_const",
            DataType::UInt8,
            false,
        )])));
    }
    let fields = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            Ok(Field::new(
                format!("k{i}"),
                k.data_type(input)?,
                k.nullable(input)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Arc::new(Schema::new(fields)))
}

/// Session windows: rows are kept until the watermark closes their session; then each closed
/// session is aggregated with DataFusion's accumulators (one group per session).
struct SessionOp {
    plan: WindowAggregate,
    info: TaskInfo,
    gap: i64,
    /// Rows of sessions still open.
    buffer: Vec<RecordBatch>,
    watermark: Option<i64>,
}

impl SessionOp {
    /// Emits the sessions that end at or before `watermark`; keeps the rest.
    fn close(&mut self, watermark: i64) -> Result<Option<RecordBatch>> {
        if self.buffer.is_empty() {
            return Ok(None);
        }
        let schema = self.buffer[0].schema();
        let batch = datafusion::arrow::compute::concat_batches(&schema, &self.buffer)?;
        self.buffer.clear();
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
                open_rows.extend(order[i..j].iter().map(|&r| r as u32));
            }
            i = j;
        }
        if !open_rows.is_empty() {
            self.buffer
                .push(take_record_batch(&batch, &UInt32Array::from(open_rows))?);
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
                datafusion::arrow::compute::filter_record_batch(&batch, &keep)
                    .map_err(|e| TaskError::expression(&self.plan.label)(e.into()))?
            }
            None => batch,
        };
        if batch.num_rows() > 0 {
            self.buffer.push(batch);
        }
        Ok(())
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
        self.buffer = state.owned_rows(SESSION_ROWS, &self.plan.keys, &self.info)?;
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::task::partition_by_hash;
    use datafusion::arrow::array::StringArray;
    use datafusion::arrow::util::display::array_value_to_string;
    use datafusion::functions_aggregate::average::avg_udaf;
    use datafusion::functions_aggregate::count::count_udaf;
    use datafusion::functions_aggregate::sum::sum_udaf;
    use datafusion::logical_expr::AggregateUDF;
    use datafusion::physical_expr::aggregate::AggregateExprBuilder;
    use datafusion::physical_expr::expressions::{cast, col};
    use tokio::sync::mpsc;

    /// One input event of a test run.
    pub(crate) enum Step {
        Rows(RecordBatch),
        Watermark(i64),
    }

    fn timestamp_type() -> DataType {
        DataType::Timestamp(TimeUnit::Nanosecond, None)
    }

    /// The input of the tests: `k`, `tag`, `v`, then (when `updating`) the retraction flag,
    /// then the event time.
    pub(crate) fn input_schema(updating: bool) -> SchemaRef {
        let mut fields = vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("tag", DataType::Utf8, false),
            Field::new("v", DataType::Int64, false),
        ];
        if updating {
            fields.push(Field::new("_retract", DataType::Boolean, false));
        }
        fields.push(Field::new("_timestamp", timestamp_type(), false));
        Arc::new(Schema::new(fields))
    }

    /// Rows `(k, v, event time, retracted)`; `tag` is derived from `v`.
    pub(crate) fn rows(schema: &SchemaRef, rows: &[(&str, i64, i64, bool)]) -> Step {
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| format!("t{}", r.1 % 3)),
            )),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
        ];
        if schema.fields().len() == 5 {
            columns.push(Arc::new(BooleanArray::from_iter(
                rows.iter().map(|r| Some(r.3)),
            )));
        }
        columns.push(Arc::new(TimestampNanosecondArray::from_iter_values(
            rows.iter().map(|r| r.2),
        )));
        Step::Rows(RecordBatch::try_new(schema.clone(), columns).unwrap())
    }

    /// `udaf(arg)` over `schema`, named `name`.
    pub(crate) fn aggregate(
        udaf: Arc<AggregateUDF>,
        arg: Arc<dyn PhysicalExpr>,
        schema: &SchemaRef,
        name: &str,
        distinct: bool,
    ) -> AggregateSpec {
        let expr = AggregateExprBuilder::new(udaf, vec![arg])
            .schema(schema.clone())
            .alias(name)
            .with_distinct(distinct)
            .build()
            .unwrap();
        AggregateSpec {
            expr: Arc::new(expr),
            filter: None,
        }
    }

    /// `sum(v)`, `count(v)`, `avg(CAST(v AS DOUBLE))` and `count(DISTINCT tag)` (which has
    /// no vectorized accumulator for strings: it runs through DataFusion's adapter).
    pub(crate) fn aggregates(schema: &SchemaRef) -> Vec<AggregateSpec> {
        let v = col("v", schema).unwrap();
        let v_double = cast(v.clone(), schema, DataType::Float64).unwrap();
        vec![
            aggregate(sum_udaf(), v.clone(), schema, "sum", false),
            aggregate(count_udaf(), v, schema, "count", false),
            aggregate(avg_udaf(), v_double, schema, "avg", false),
            aggregate(
                count_udaf(),
                col("tag", schema).unwrap(),
                schema,
                "tags",
                true,
            ),
        ]
    }

    /// The output fields of `aggregates`.
    pub(crate) fn aggregate_fields(aggregates: &[AggregateSpec]) -> Vec<Field> {
        aggregates
            .iter()
            .map(|a| Field::new(a.expr.name(), a.expr.field().data_type().clone(), true))
            .collect()
    }

    /// One subtask under test and what it sent.
    struct Task {
        op: Box<dyn Operator>,
        out: Collector,
        rx: mpsc::Receiver<(u32, Message)>,
        sent: Vec<RecordBatch>,
    }

    impl Task {
        fn new(factory: &dyn OperatorFactory, subtask: usize, parallelism: usize) -> Task {
            let info = TaskInfo::for_test(subtask, parallelism);
            let (out, rx) = Collector::for_test(64);
            Task {
                op: factory.create(&info).unwrap(),
                out,
                rx,
                sent: Vec::new(),
            }
        }

        fn drain(&mut self) {
            while let Ok((_, msg)) = self.rx.try_recv() {
                if let Message::Data(batch) = msg {
                    self.sent.push(batch);
                }
            }
        }
    }

    /// Feeds `steps` to `tasks`, routing rows as the hash shuffle on `keys` does.
    async fn feed(tasks: &mut [Task], keys: &[Arc<dyn PhysicalExpr>], steps: &[Step]) {
        for step in steps {
            match step {
                Step::Rows(batch) => {
                    let parts = partition_by_hash(batch, keys, tasks.len()).unwrap();
                    for (task, part) in tasks.iter_mut().zip(parts) {
                        if let Some(part) = part {
                            task.op.process_batch(part, 0, &mut task.out).await.unwrap();
                        }
                    }
                }
                Step::Watermark(w) => {
                    for task in tasks.iter_mut() {
                        task.op.on_watermark(*w, &mut task.out).await.unwrap();
                    }
                }
            }
            tasks.iter_mut().for_each(Task::drain);
        }
    }

    async fn close(tasks: &mut [Task]) {
        for task in tasks.iter_mut() {
            task.op.on_close(&mut task.out).await.unwrap();
            task.drain();
        }
    }

    /// Every row sent, formatted, sorted; without the event time when `skip_time`.
    fn sorted_rows(batches: &[RecordBatch], skip_time: bool) -> Vec<String> {
        let mut rows = Vec::new();
        for batch in batches {
            let columns = batch.num_columns() - usize::from(skip_time);
            for row in 0..batch.num_rows() {
                let values: Vec<String> = (0..columns)
                    .map(|c| array_value_to_string(batch.column(c), row).unwrap())
                    .collect();
                rows.push(values.join(" | "));
            }
        }
        rows.sort();
        rows
    }

    /// For a checkpoint after every prefix of `steps`, taken at parallelism 1 or 2 and
    /// restored (through Arrow IPC) at 1 or 2: the run that took the checkpoint goes on
    /// unharmed, and the restored run sends what an uninterrupted run sends. The event time
    /// is compared only without a change of parallelism when `time_per_subtask` (an
    /// operator that stamps rows with what its subtask saw).
    pub(crate) async fn check_checkpoints(
        factory: &dyn OperatorFactory,
        keys: &[Arc<dyn PhysicalExpr>],
        steps: &[Step],
        time_per_subtask: bool,
    ) {
        let mut plain = vec![Task::new(factory, 0, 1)];
        feed(&mut plain, keys, steps).await;
        close(&mut plain).await;
        let expected = &plain[0].sent;
        assert!(!expected.is_empty(), "the run sends rows");
        for cut in 0..=steps.len() {
            for (before, after) in [(1, 1), (1, 2), (2, 1), (2, 2)] {
                let skip_time = time_per_subtask && (before != 1 || after != 1);
                let context =
                    format!("checkpoint after {cut} steps, parallelism {before} -> {after}");
                let mut old: Vec<Task> =
                    (0..before).map(|s| Task::new(factory, s, before)).collect();
                feed(&mut old, keys, &steps[..cut]).await;
                let mut subtasks = Vec::new();
                for task in &mut old {
                    let files = task.op.snapshot().await.unwrap().encode().unwrap();
                    let mut decoded = TaskState::new();
                    for (name, bytes) in files {
                        decoded.decode_into(&name, bytes).unwrap();
                    }
                    subtasks.push(decoded);
                }
                let sent_before: Vec<RecordBatch> =
                    old.iter().flat_map(|t| t.sent.iter().cloned()).collect();
                let watermark = steps[..cut].iter().rev().find_map(|s| match s {
                    Step::Watermark(w) => Some(*w),
                    Step::Rows(_) => None,
                });
                let state = RestoredState {
                    parallelism: before,
                    subtasks,
                    watermark,
                    epoch: 1,
                };

                // The snapshot left the live state as it was.
                feed(&mut old, keys, &steps[cut..]).await;
                close(&mut old).await;
                let went_on: Vec<RecordBatch> =
                    old.iter().flat_map(|t| t.sent.iter().cloned()).collect();
                assert_eq!(
                    sorted_rows(&went_on, skip_time),
                    sorted_rows(expected, skip_time),
                    "{context}: the run that took it"
                );

                let mut new: Vec<Task> = (0..after).map(|s| Task::new(factory, s, after)).collect();
                for task in &mut new {
                    task.op.restore(&state).unwrap();
                }
                feed(&mut new, keys, &steps[cut..]).await;
                close(&mut new).await;
                let mut restored = sent_before;
                restored.extend(new.iter().flat_map(|t| t.sent.iter().cloned()));
                assert_eq!(
                    sorted_rows(&restored, skip_time),
                    sorted_rows(expected, skip_time),
                    "{context}: the restored run"
                );
            }
        }
    }

    /// Rows over a few keys, out of order within batches, some late.
    fn steps(schema: &SchemaRef) -> Vec<Step> {
        let r = |rs: &[(&str, i64, i64)]| {
            let rs: Vec<_> = rs.iter().map(|&(k, v, t)| (k, v, t, false)).collect();
            rows(schema, &rs)
        };
        vec![
            r(&[
                ("a", 1, 1),
                ("b", 2, 3),
                ("c", 3, 7),
                ("a", 4, 12),
                ("d", 5, 15),
                ("e", 6, 2),
            ]),
            Step::Watermark(9),
            r(&[
                ("a", 6, 8),
                ("b", 7, 14),
                ("c", 8, 18),
                ("a", 9, 21),
                ("b", 1, 5),
            ]),
            r(&[("d", 10, 19), ("b", 11, 25), ("a", 12, 11), ("e", 3, 16)]),
            Step::Watermark(19),
            r(&[("c", 13, 3), ("a", 14, 27), ("f", 2, 33), ("c", 4, 24)]),
            Step::Watermark(29),
            r(&[("b", 5, 35), ("a", 1, 31), ("f", 7, 29)]),
            Step::Watermark(100),
        ]
    }

    fn window_field() -> Field {
        let ts = timestamp_type();
        let fields = Fields::from(vec![
            Field::new("start", ts.clone(), false),
            Field::new("end", ts, false),
        ]);
        Field::new("window", DataType::Struct(fields), false)
    }

    /// A window aggregate of [`aggregates`] by `window`, keyed by `k` unless `global`; the
    /// window column goes at `window_position` among the group columns.
    fn window_plan(
        window: WindowKind,
        global: bool,
        window_position: Option<usize>,
    ) -> (WindowAggregate, Vec<Arc<dyn PhysicalExpr>>, Vec<Step>) {
        let input = input_schema(false);
        let keys = if global {
            vec![]
        } else {
            vec![col("k", &input).unwrap()]
        };
        let aggregates = aggregates(&input);
        let mut fields = Vec::new();
        if !global {
            fields.push(Field::new("k", DataType::Utf8, false));
        }
        if let Some(p) = window_position {
            fields.insert(p, window_field());
        }
        fields.extend(aggregate_fields(&aggregates));
        fields.push(Field::new("_timestamp", timestamp_type(), false));
        let plan = WindowAggregate {
            label: "window".to_string(),
            window,
            keys: keys.clone(),
            key_schema: key_schema(&keys, &input).unwrap(),
            aggregates,
            window_position,
            schema: Arc::new(Schema::new(fields)),
        };
        (plan, keys, steps(&input))
    }

    #[tokio::test]
    async fn tumbling_windows_restore_from_checkpoints() {
        let (plan, keys, steps) = window_plan(WindowKind::Tumble { width: 10 }, false, Some(0));
        check_checkpoints(&plan, &keys, &steps, false).await;
    }

    #[tokio::test]
    async fn hopping_windows_restore_from_checkpoints() {
        let hop = WindowKind::Hop {
            slide: 5,
            width: 10,
        };
        let (plan, keys, steps) = window_plan(hop, false, Some(1));
        check_checkpoints(&plan, &keys, &steps, false).await;
    }

    #[tokio::test]
    async fn global_windows_restore_on_subtask_zero() {
        let (plan, keys, steps) = window_plan(WindowKind::Tumble { width: 10 }, true, Some(0));
        check_checkpoints(&plan, &keys, &steps, false).await;
    }

    #[tokio::test]
    async fn instant_windows_restore_from_checkpoints() {
        let (plan, keys, steps) = window_plan(WindowKind::Instant, false, None);
        check_checkpoints(&plan, &keys, &steps, false).await;
    }

    #[tokio::test]
    async fn sessions_restore_from_checkpoints() {
        let (plan, keys, steps) = window_plan(WindowKind::Session { gap: 4 }, false, Some(1));
        check_checkpoints(&plan, &keys, &steps, false).await;
        let (plan, keys, steps) = window_plan(WindowKind::Session { gap: 4 }, true, Some(0));
        check_checkpoints(&plan, &keys, &steps, false).await;
    }
}
