//! Operators over *instants*: the rows of a windowed stream that share an event time (one
//! window's results) are complete once the watermark passes that time, and are then processed
//! as one bounded batch.
//!
//! - [`WindowFunctions`]: `ROW_NUMBER()`, `RANK()`, `DENSE_RANK()` over
//!   `PARTITION BY window, ... ORDER BY ...` (top-N per window).
//! - [`InstantJoin`]: a join of two windowed streams on the same window (inner, left, right,
//!   full), a hash join per instant with an optional residual filter.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, TimestampNanosecondArray, UInt32Array, UInt64Array,
};
use datafusion::arrow::compute::SortOptions;
use datafusion::arrow::compute::{
    SortColumn, concat_batches, filter_record_batch, lexsort_to_indices, partition, take,
    take_record_batch,
};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::error::{DataFusionError, Result};
use datafusion::physical_expr::PhysicalExpr;

use super::{Operator, OperatorFactory, TaskInfo};
use crate::dataflow::{Collector, DataflowError, Message, Watermark};

/// Batches held per instant (event time), per input.
#[derive(Default)]
struct Instants {
    by_time: BTreeMap<i64, Vec<Vec<RecordBatch>>>,
}

impl Instants {
    /// Splits `batch` by event time and keeps it under input `input` of `inputs`.
    fn add(&mut self, batch: RecordBatch, input: usize, inputs: usize) -> Result<()> {
        let ts = batch
            .column(batch.num_columns() - 1)
            .as_any()
            .downcast_ref::<TimestampNanosecondArray>()
            .expect("the event-time column is last")
            .values()
            .clone();
        let first = ts[0];
        if ts.iter().all(|&t| t == first) {
            self.slot(first, inputs)[input].push(batch);
            return Ok(());
        }
        let mut rows: HashMap<i64, Vec<u32>> = HashMap::new();
        for (i, t) in ts.iter().enumerate() {
            rows.entry(*t).or_default().push(i as u32);
        }
        for (t, idx) in rows {
            let part = take_record_batch(&batch, &UInt32Array::from(idx))?;
            self.slot(t, inputs)[input].push(part);
        }
        Ok(())
    }

    fn slot(&mut self, t: i64, inputs: usize) -> &mut Vec<Vec<RecordBatch>> {
        self.by_time
            .entry(t)
            .or_insert_with(|| vec![Vec::new(); inputs])
    }

    /// Removes and returns the instants before `watermark`, oldest first.
    fn complete(&mut self, watermark: i64) -> Vec<(i64, Vec<Vec<RecordBatch>>)> {
        let open = self.by_time.split_off(&watermark);
        std::mem::replace(&mut self.by_time, open)
            .into_iter()
            .collect()
    }
}

fn concat(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<RecordBatch> {
    Ok(concat_batches(schema, batches)?)
}

fn eval(exprs: &[Arc<dyn PhysicalExpr>], batch: &RecordBatch) -> Result<Vec<ArrayRef>> {
    exprs
        .iter()
        .map(|e| e.evaluate(batch)?.into_array(batch.num_rows()))
        .collect()
}

/// The ranking functions this engine computes per instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ranking {
    RowNumber,
    Rank,
    DenseRank,
}

/// One ranking column.
#[derive(Clone)]
pub struct RankSpec {
    pub function: Ranking,
    pub partition_by: Vec<Arc<dyn PhysicalExpr>>,
    pub order_by: Vec<(Arc<dyn PhysicalExpr>, SortOptions)>,
}

/// Ranking window functions over windowed input.
#[derive(Clone)]
pub struct WindowFunctions {
    pub label: String,
    pub input_schema: SchemaRef,
    pub functions: Vec<RankSpec>,
    /// Input columns, then one UInt64 per function, then the event time.
    pub schema: SchemaRef,
}

impl WindowFunctions {
    fn compute(&self, t: i64, batch: &RecordBatch) -> Result<RecordBatch> {
        let rows = batch.num_rows();
        let visible = batch.num_columns() - 1;
        let mut columns: Vec<ArrayRef> = batch.columns()[..visible].to_vec();
        for f in &self.functions {
            let parts = eval(&f.partition_by, batch)?;
            let mut sort: Vec<SortColumn> = parts
                .iter()
                .map(|a| SortColumn {
                    values: a.clone(),
                    options: None,
                })
                .collect();
            let orders = f
                .order_by
                .iter()
                .map(|(e, o)| Ok((e.evaluate(batch)?.into_array(rows)?, *o)))
                .collect::<Result<Vec<_>>>()?;
            sort.extend(orders.iter().map(|(a, o)| SortColumn {
                values: a.clone(),
                options: Some(*o),
            }));
            let order = lexsort_to_indices(&sort, None)?;
            let sorted_parts: Vec<ArrayRef> = parts
                .iter()
                .map(|a| take(a.as_ref(), &order, None))
                .collect::<std::result::Result<_, _>>()?;
            let mut peers_cols = sorted_parts.clone();
            for (a, _) in &orders {
                peers_cols.push(take(a.as_ref(), &order, None)?);
            }
            let mut ranks = vec![0u64; rows];
            let partitions = if sorted_parts.is_empty() {
                std::iter::once(0..rows).collect()
            } else {
                partition(&sorted_parts)?.ranges()
            };
            let peers = if peers_cols.is_empty() {
                std::iter::once(0..rows).collect()
            } else {
                partition(&peers_cols)?.ranges()
            };
            let mut peer_iter = peers.into_iter().peekable();
            for p in partitions {
                let (mut rank, mut dense) = (0u64, 0u64);
                while let Some(group) = peer_iter.peek().cloned() {
                    if group.start >= p.end {
                        break;
                    }
                    peer_iter.next();
                    dense += 1;
                    let first_rank = rank + 1;
                    for (k, i) in group.clone().enumerate() {
                        rank += 1;
                        let row = order.value(i) as usize;
                        ranks[row] = match f.function {
                            Ranking::RowNumber => (group.start - p.start + k + 1) as u64,
                            Ranking::Rank => first_rank,
                            Ranking::DenseRank => dense,
                        };
                    }
                }
            }
            columns.push(Arc::new(UInt64Array::from(ranks)));
        }
        columns.push(Arc::new(TimestampNanosecondArray::from(vec![t; rows])));
        Ok(RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )?)
    }
}

impl OperatorFactory for WindowFunctions {
    fn create(&self, _info: &TaskInfo) -> Result<Box<dyn Operator>, DataflowError> {
        Ok(Box::new(InstantOp {
            kind: InstantKind::Window(self.clone()),
            instants: Instants::default(),
        }))
    }
}

/// Join types of [`InstantJoin`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinKind {
    Inner,
    Left,
    Right,
    Full,
    /// Left rows with at least one match (the optimizer's form of some inner joins and of
    /// `IN`/`EXISTS`); only left columns are output.
    LeftSemi,
    /// Left rows without a match.
    LeftAnti,
}

/// A hash join of two windowed streams, per instant.
#[derive(Clone)]
pub struct InstantJoin {
    pub label: String,
    pub kind: JoinKind,
    pub left_schema: SchemaRef,
    pub right_schema: SchemaRef,
    pub left_keys: Vec<Arc<dyn PhysicalExpr>>,
    pub right_keys: Vec<Arc<dyn PhysicalExpr>>,
    /// Evaluated on the joined visible columns (left then right).
    pub filter: Option<Arc<dyn PhysicalExpr>>,
    /// Left columns, right columns, event time: the pairs the filter sees.
    pub pair_schema: SchemaRef,
    /// The output: `pair_schema`, or the left columns and event time for semi and anti joins.
    pub schema: SchemaRef,
}

impl InstantJoin {
    fn compute(
        &self,
        t: i64,
        left: &RecordBatch,
        right: &RecordBatch,
    ) -> Result<Option<RecordBatch>> {
        let lk = eval(&self.left_keys, left)?;
        let rk = eval(&self.right_keys, right)?;
        let fields: Vec<SortField> = lk
            .iter()
            .map(|a| SortField::new(a.data_type().clone()))
            .collect();
        let converter = RowConverter::new(fields)?;
        let lrows = converter.convert_columns(&lk)?;
        let rrows = converter.convert_columns(&rk)?;
        // Rows with a null key never match.
        let has_null = |arrays: &[ArrayRef], i: usize| arrays.iter().any(|a| a.is_null(i));
        let mut table: HashMap<&[u8], Vec<u32>> = HashMap::new();
        for i in 0..right.num_rows() {
            if !has_null(&rk, i) {
                table.entry(rrows.row(i).data()).or_default().push(i as u32);
            }
        }
        let (mut li, mut ri): (Vec<Option<u32>>, Vec<Option<u32>>) = (vec![], vec![]);
        let mut right_matched = vec![false; right.num_rows()];
        for i in 0..left.num_rows() {
            let matches = if has_null(&lk, i) {
                None
            } else {
                table.get(lrows.row(i).data())
            };
            match matches {
                Some(rs) => {
                    for &r in rs {
                        li.push(Some(i as u32));
                        ri.push(Some(r));
                        right_matched[r as usize] = true;
                    }
                }
                None if matches!(self.kind, JoinKind::Left | JoinKind::Full)
                    && self.filter.is_none() =>
                {
                    li.push(Some(i as u32));
                    ri.push(None);
                }
                None => {}
            }
        }
        if matches!(self.kind, JoinKind::Right | JoinKind::Full) {
            for (r, matched) in right_matched.iter().enumerate() {
                if !matched {
                    li.push(None);
                    ri.push(Some(r as u32));
                }
            }
        }
        let semi = matches!(self.kind, JoinKind::LeftSemi | JoinKind::LeftAnti);
        if li.is_empty() && !semi {
            return Ok(None);
        }
        let rows = li.len();
        let (li, ri) = (UInt32Array::from(li), UInt32Array::from(ri));
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.schema.fields().len());
        for c in &left.columns()[..left.num_columns() - 1] {
            columns.push(take(c.as_ref(), &li, None)?);
        }
        for c in &right.columns()[..right.num_columns() - 1] {
            columns.push(take(c.as_ref(), &ri, None)?);
        }
        columns.push(Arc::new(TimestampNanosecondArray::from(vec![t; rows])));
        let mut batch = RecordBatch::try_new_with_options(
            self.pair_schema.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )?;
        let mut left_of_pair = li;
        if let Some(filter) = &self.filter {
            let mask = filter.evaluate(&batch)?.into_array(rows)?;
            let mask = mask
                .as_any()
                .downcast_ref::<BooleanArray>()
                .ok_or_else(|| DataFusionError::Internal("join filter is not boolean".into()))?;
            batch = filter_record_batch(&batch, mask)?;
            let kept = datafusion::arrow::compute::filter(&left_of_pair, mask)?;
            left_of_pair = kept
                .as_any()
                .downcast_ref::<UInt32Array>()
                .expect("indices stay u32")
                .clone();
        }
        if semi {
            let mut matched = vec![false; left.num_rows()];
            for i in left_of_pair.iter().flatten() {
                matched[i as usize] = true;
            }
            let want = self.kind == JoinKind::LeftSemi;
            let picked: Vec<u32> = (0..left.num_rows() as u32)
                .filter(|&i| matched[i as usize] == want)
                .collect();
            let picked = UInt32Array::from(picked);
            let n = picked.len();
            let mut columns: Vec<ArrayRef> = left.columns()[..left.num_columns() - 1]
                .iter()
                .map(|c| take(c.as_ref(), &picked, None))
                .collect::<std::result::Result<_, _>>()?;
            columns.push(Arc::new(TimestampNanosecondArray::from(vec![t; n])));
            batch = RecordBatch::try_new_with_options(
                self.schema.clone(),
                columns,
                &RecordBatchOptions::new().with_row_count(Some(n)),
            )?;
        }
        Ok((batch.num_rows() > 0).then_some(batch))
    }
}

impl OperatorFactory for InstantJoin {
    fn create(&self, _info: &TaskInfo) -> Result<Box<dyn Operator>, DataflowError> {
        Ok(Box::new(InstantOp {
            kind: InstantKind::Join(self.clone()),
            instants: Instants::default(),
        }))
    }
}

enum InstantKind {
    Window(WindowFunctions),
    Join(InstantJoin),
}

struct InstantOp {
    kind: InstantKind,
    instants: Instants,
}

impl InstantOp {
    fn label(&self) -> &str {
        match &self.kind {
            InstantKind::Window(w) => &w.label,
            InstantKind::Join(j) => &j.label,
        }
    }

    fn fire(&self, t: i64, inputs: Vec<Vec<RecordBatch>>) -> Result<Option<RecordBatch>> {
        match &self.kind {
            InstantKind::Window(w) => {
                let batch = concat(&inputs[0][0].schema(), &inputs[0])?;
                w.compute(t, &batch).map(Some)
            }
            InstantKind::Join(j) => {
                let left = match inputs[0].first() {
                    Some(b) => concat(&b.schema(), &inputs[0])?,
                    None => RecordBatch::new_empty(j.left_schema.clone()),
                };
                let right = match inputs[1].first() {
                    Some(b) => concat(&b.schema(), &inputs[1])?,
                    None => RecordBatch::new_empty(j.right_schema.clone()),
                };
                j.compute(t, &left, &right)
            }
        }
    }
}

#[async_trait]
impl Operator for InstantOp {
    async fn process_batch(
        &mut self,
        batch: RecordBatch,
        input: usize,
        _out: &mut Collector,
    ) -> Result<(), DataflowError> {
        let inputs = match self.kind {
            InstantKind::Window(_) => 1,
            InstantKind::Join(_) => 2,
        };
        let label = self.label().to_string();
        self.instants
            .add(batch, input, inputs)
            .map_err(DataflowError::expression(&label))
    }

    async fn on_watermark(
        &mut self,
        watermark: i64,
        out: &mut Collector,
    ) -> Result<(), DataflowError> {
        for (t, inputs) in self.instants.complete(watermark) {
            let result = self
                .fire(t, inputs)
                .map_err(DataflowError::expression(self.label()))?;
            if let Some(batch) = result {
                out.collect(batch).await?;
            }
        }
        out.broadcast(Message::Watermark(Watermark::EventTime(watermark)))
            .await
    }
}
