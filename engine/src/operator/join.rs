//! The windowless inner join: both inputs are kept in state, keyed by the join key, for the
//! state TTL (`SET updating_ttl = interval '...'`, in event time behind the watermark). A row
//! arriving on one side is joined with every kept row of the other side with the same key, and
//! the joined rows are emitted at once with the later of the two event times; then the row is
//! kept. Rows older than the watermark less the TTL are evicted. Inner joins of append-only
//! inputs never retract, so the output is append-only.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, TimestampNanosecondArray, UInt32Array,
};
use datafusion::arrow::compute::{filter_record_batch, interleave};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::arrow::row::{OwnedRow, RowConverter, SortField};
use datafusion::error::{DataFusionError, Result};
use datafusion::physical_expr::PhysicalExpr;

use super::{Operator, OperatorFactory, TaskInfo};
use crate::dataflow::{Collector, DataflowError, Message, Watermark};

#[derive(Clone)]
pub struct TtlJoin {
    pub label: String,
    pub left_keys: Vec<Arc<dyn PhysicalExpr>>,
    pub right_keys: Vec<Arc<dyn PhysicalExpr>>,
    pub key_types: Vec<datafusion::arrow::datatypes::DataType>,
    /// On the joined visible columns.
    pub filter: Option<Arc<dyn PhysicalExpr>>,
    /// State TTL in nanoseconds of event time.
    pub ttl: i64,
    /// Left columns, right columns, event time.
    pub schema: SchemaRef,
}

/// The kept rows of one side.
#[derive(Default)]
struct Side {
    batches: Vec<RecordBatch>,
    /// Newest event time per batch, for eviction.
    newest: Vec<i64>,
    index: HashMap<OwnedRow, Vec<(u32, u32)>>,
}

struct TtlJoinOp {
    plan: TtlJoin,
    converter: RowConverter,
    sides: [Side; 2],
}

impl OperatorFactory for TtlJoin {
    fn create(&self, _info: &TaskInfo) -> Result<Box<dyn Operator>, DataflowError> {
        let converter = RowConverter::new(
            self.key_types
                .iter()
                .map(|t| SortField::new(t.clone()))
                .collect(),
        )
        .map_err(|e| DataflowError::Setup(e.to_string()))?;
        Ok(Box::new(TtlJoinOp {
            plan: self.clone(),
            converter,
            sides: [Side::default(), Side::default()],
        }))
    }
}

fn times(batch: &RecordBatch) -> &TimestampNanosecondArray {
    batch
        .column(batch.num_columns() - 1)
        .as_any()
        .downcast_ref::<TimestampNanosecondArray>()
        .expect("the event-time column is last")
}

impl TtlJoinOp {
    /// Joins `batch` from `input` (0 left, 1 right) with the other side, then keeps it.
    fn process(&mut self, batch: RecordBatch, input: usize) -> Result<Option<RecordBatch>> {
        let rows = batch.num_rows();
        let keys_exprs = if input == 0 {
            &self.plan.left_keys
        } else {
            &self.plan.right_keys
        };
        let keys: Vec<ArrayRef> = keys_exprs
            .iter()
            .map(|k| k.evaluate(&batch)?.into_array(rows))
            .collect::<Result<_>>()?;
        let key_rows = self.converter.convert_columns(&keys)?;
        let null_key = |i: usize| keys.iter().any(|k| k.is_null(i));
        // Matches: (row of this batch, (batch, row) of the other side).
        let other = &self.sides[1 - input];
        let mut pairs: Vec<(u32, (u32, u32))> = Vec::new();
        for i in 0..rows {
            if null_key(i) {
                continue;
            }
            if let Some(found) = other.index.get(&key_rows.row(i).owned()) {
                pairs.extend(found.iter().map(|m| (i as u32, *m)));
            }
        }
        let joined = if pairs.is_empty() {
            None
        } else {
            Some(self.build(&batch, input, &pairs)?)
        };
        // Keep the batch.
        let side = &mut self.sides[input];
        let b = side.batches.len() as u32;
        for i in 0..rows {
            if !null_key(i) {
                side.index
                    .entry(key_rows.row(i).owned())
                    .or_default()
                    .push((b, i as u32));
            }
        }
        side.newest
            .push(datafusion::arrow::compute::max(times(&batch)).unwrap_or(i64::MIN));
        side.batches.push(batch);
        Ok(joined)
    }

    fn build(
        &self,
        batch: &RecordBatch,
        input: usize,
        pairs: &[(u32, (u32, u32))],
    ) -> Result<RecordBatch> {
        let other = &self.sides[1 - input];
        let this_rows = UInt32Array::from(pairs.iter().map(|p| p.0).collect::<Vec<_>>());
        let visible = |b: &RecordBatch| b.num_columns() - 1;
        // Columns of this side by take; of the other side by interleave over its batches.
        let this_cols: Vec<ArrayRef> = (0..visible(batch))
            .map(|c| datafusion::arrow::compute::take(batch.column(c).as_ref(), &this_rows, None))
            .collect::<std::result::Result<_, _>>()?;
        let picks: Vec<(usize, usize)> = pairs
            .iter()
            .map(|(_, (b, r))| (*b as usize, *r as usize))
            .collect();
        let other_width = other.batches.first().map(visible).unwrap_or(0);
        let mut other_cols: Vec<ArrayRef> = Vec::with_capacity(other_width + 1);
        for c in 0..=other_width {
            let arrays: Vec<&dyn Array> =
                other.batches.iter().map(|b| b.column(c).as_ref()).collect();
            other_cols.push(interleave(&arrays, &picks)?);
        }
        let other_times = other_cols.pop().expect("the other side's event time");
        let other_times = other_times
            .as_any()
            .downcast_ref::<TimestampNanosecondArray>()
            .expect("event times are nanosecond timestamps");
        let this_times = times(batch);
        let event_time: ArrayRef = Arc::new(TimestampNanosecondArray::from(
            pairs
                .iter()
                .zip(other_times.values())
                .map(|((i, _), o)| this_times.value(*i as usize).max(*o))
                .collect::<Vec<_>>(),
        ));
        let (left, right) = if input == 0 {
            (this_cols, other_cols)
        } else {
            (other_cols, this_cols)
        };
        let mut columns = left;
        columns.extend(right);
        columns.push(event_time);
        let joined = RecordBatch::try_new_with_options(
            self.plan.schema.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(pairs.len())),
        )?;
        match &self.plan.filter {
            None => Ok(joined),
            Some(f) => {
                let mask = f.evaluate(&joined)?.into_array(joined.num_rows())?;
                let mask = mask
                    .as_any()
                    .downcast_ref::<BooleanArray>()
                    .ok_or_else(|| {
                        DataFusionError::Internal("join filter is not boolean".into())
                    })?;
                Ok(filter_record_batch(&joined, mask)?)
            }
        }
    }

    /// Drops kept batches whose newest row is older than `watermark - ttl`.
    fn evict(&mut self, watermark: i64) {
        let horizon = watermark.saturating_sub(self.plan.ttl);
        for side in &mut self.sides {
            if !side.newest.iter().any(|&n| n < horizon) {
                continue;
            }
            let keep: Vec<usize> = (0..side.batches.len())
                .filter(|&i| side.newest[i] >= horizon)
                .collect();
            let batches: Vec<RecordBatch> = keep.iter().map(|&i| side.batches[i].clone()).collect();
            let newest: Vec<i64> = keep.iter().map(|&i| side.newest[i]).collect();
            let renumber: HashMap<u32, u32> = keep
                .iter()
                .enumerate()
                .map(|(new, &old)| (old as u32, new as u32))
                .collect();
            side.index.retain(|_, rows| {
                rows.retain_mut(|(b, _)| match renumber.get(b) {
                    Some(n) => {
                        *b = *n;
                        true
                    }
                    None => false,
                });
                !rows.is_empty()
            });
            side.batches = batches;
            side.newest = newest;
        }
    }
}

#[async_trait]
impl Operator for TtlJoinOp {
    async fn process_batch(
        &mut self,
        batch: RecordBatch,
        input: usize,
        out: &mut Collector,
    ) -> Result<(), DataflowError> {
        let joined = self
            .process(batch, input)
            .map_err(DataflowError::expression(&self.plan.label))?;
        match joined {
            Some(b) => out.collect(b).await,
            None => Ok(()),
        }
    }

    async fn on_watermark(
        &mut self,
        watermark: i64,
        out: &mut Collector,
    ) -> Result<(), DataflowError> {
        self.evict(watermark);
        out.broadcast(Message::Watermark(Watermark::EventTime(watermark)))
            .await
    }
}
