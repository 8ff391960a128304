//! The window aggregate: GROUP BY keys and a TUMBLE or HOP window (or the window column of an
//! upstream windowed result, an *instant* window), aggregates computed incrementally.
//!
//! Per open window (keyed by its end) it keeps DataFusion's own vectorized group machinery: a
//! `GroupValues` that interns key rows to group indices, and one `GroupsAccumulator` per
//! aggregate. A batch is split by window and each slice updates that window's groups. When the
//! watermark reaches a window's end, the window emits one row per group, with the window struct
//! `{start, end}` and event time `end - 1ns`, and is dropped. Rows for a window that has already
//! been emitted are late and dropped (and counted).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, StructArray, TimestampNanosecondArray, UInt32Array,
};
use datafusion::arrow::compute::{take, take_record_batch};
use datafusion::arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_expr::{GroupsAccumulatorAdapter, PhysicalExpr};
use datafusion::physical_plan::aggregates::group_values::{GroupValues, new_group_values};
use datafusion::physical_plan::aggregates::order::GroupOrdering;
use tracing::debug;

use super::{Operator, OperatorFactory, TaskInfo};
use crate::dataflow::{Collector, DataflowError, Message, Watermark};

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
    fn create(&self, _info: &TaskInfo) -> Result<Box<dyn Operator>, DataflowError> {
        if let WindowKind::Session { gap } = self.window {
            return Ok(Box::new(SessionOp {
                plan: self.clone(),
                gap,
                buffer: Vec::new(),
                watermark: None,
            }));
        }
        Ok(Box::new(WindowAggregateOp {
            plan: self.clone(),
            panes: BTreeMap::new(),
            watermark: None,
            late: 0,
        }))
    }
}

struct Pane {
    groups: Box<dyn GroupValues>,
    accumulators: Vec<Box<dyn GroupsAccumulator>>,
}

struct WindowAggregateOp {
    plan: WindowAggregate,
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
    fn new_pane(&self) -> Result<Pane> {
        let groups = new_group_values(self.plan.key_schema.clone(), &GroupOrdering::None)?;
        let accumulators = self
            .plan
            .aggregates
            .iter()
            .map(AggregateSpec::groups_accumulator)
            .collect::<Result<_>>()?;
        Ok(Pane {
            groups,
            accumulators,
        })
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
                if !self.panes.contains_key(&end) {
                    let pane = self.new_pane()?;
                    self.panes.insert(end, pane);
                }
                let pane = self.panes.get_mut(&end).expect("pane just inserted");
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
    ) -> Result<(), DataflowError> {
        self.update(&batch)
            .map_err(DataflowError::expression(&self.plan.label))
    }

    async fn on_watermark(
        &mut self,
        watermark: i64,
        out: &mut Collector,
    ) -> Result<(), DataflowError> {
        self.watermark = Some(watermark);
        let open = match watermark.checked_add(1) {
            Some(w) => self.panes.split_off(&w),
            None => BTreeMap::new(),
        };
        let closed = std::mem::replace(&mut self.panes, open);
        for (end, pane) in closed {
            let batch = self
                .emit(end, pane)
                .map_err(DataflowError::expression(&self.plan.label))?;
            if let Some(batch) = batch {
                out.collect(batch).await?;
            }
        }
        out.broadcast(Message::Watermark(Watermark::EventTime(watermark)))
            .await
    }

    async fn on_close(&mut self, _out: &mut Collector) -> Result<(), DataflowError> {
        if self.late > 0 {
            debug!(node = %self.plan.label, late = self.late, "late rows dropped");
        }
        Ok(())
    }
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
    ) -> Result<(), DataflowError> {
        // A row whose whole session would already be closed is late.
        let batch = match self.watermark {
            Some(w) => {
                let ts = timestamps(&batch);
                let keep: BooleanArray = ts.iter().map(|t| Some(t + self.gap > w)).collect();
                datafusion::arrow::compute::filter_record_batch(&batch, &keep)
                    .map_err(|e| DataflowError::expression(&self.plan.label)(e.into()))?
            }
            None => batch,
        };
        if batch.num_rows() > 0 {
            self.buffer.push(batch);
        }
        Ok(())
    }

    async fn on_watermark(
        &mut self,
        watermark: i64,
        out: &mut Collector,
    ) -> Result<(), DataflowError> {
        self.watermark = Some(watermark);
        let closed = self
            .close(watermark)
            .map_err(DataflowError::expression(&self.plan.label))?;
        if let Some(batch) = closed {
            out.collect(batch).await?;
        }
        out.broadcast(Message::Watermark(Watermark::EventTime(watermark)))
            .await
    }
}
