//! The updating aggregate: GROUP BY without a window. Every group's aggregates are kept for
//! the life of the pipeline and its result row is updated in place: when the watermark
//! advances (and at the end of the input) each group that changed emits a retraction of the
//! row it emitted before and its new row. A group whose rows were all retracted is withdrawn.
//!
//! Input may itself be updating (a retraction flag before the event time); retracted rows are
//! removed from the accumulators with `retract_batch`.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, TimestampNanosecondArray, UInt32Array,
};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::arrow::row::{OwnedRow, RowConverter, SortField};
use datafusion::common::ScalarValue;
use datafusion::error::Result;
use datafusion::logical_expr::Accumulator;
use datafusion::physical_expr::PhysicalExpr;

use super::window::AggregateSpec;
use super::{Operator, OperatorFactory, TaskInfo};
use crate::dataflow::{Collector, DataflowError, Message, Watermark};

#[derive(Clone)]
pub struct UpdatingAggregate {
    pub label: String,
    pub keys: Vec<Arc<dyn PhysicalExpr>>,
    pub key_schema: SchemaRef,
    pub aggregates: Vec<AggregateSpec>,
    /// The input carries a retraction flag.
    pub updating_input: bool,
    /// Output: keys, aggregates, retraction flag, event time.
    pub schema: SchemaRef,
}

struct Group {
    accumulators: Vec<Box<dyn Accumulator>>,
    /// Rows in the group (inserts less retractions).
    rows: i64,
    /// The row last emitted.
    emitted: Option<Vec<ScalarValue>>,
}

struct UpdatingOp {
    plan: UpdatingAggregate,
    converter: RowConverter,
    groups: HashMap<OwnedRow, Group>,
    dirty: Vec<OwnedRow>,
    newest: i64,
}

impl OperatorFactory for UpdatingAggregate {
    fn create(&self, _info: &TaskInfo) -> Result<Box<dyn Operator>, DataflowError> {
        let converter = RowConverter::new(
            self.key_schema
                .fields()
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )
        .map_err(|e| DataflowError::Setup(e.to_string()))?;
        Ok(Box::new(UpdatingOp {
            plan: self.clone(),
            converter,
            groups: HashMap::new(),
            dirty: Vec::new(),
            newest: i64::MIN,
        }))
    }
}

impl UpdatingOp {
    fn update(&mut self, batch: &RecordBatch) -> Result<()> {
        let rows = batch.num_rows();
        let n = batch.num_columns();
        let ts = batch
            .column(n - 1)
            .as_any()
            .downcast_ref::<TimestampNanosecondArray>()
            .expect("the event-time column is last");
        if let Some(max) = datafusion::arrow::compute::max(ts) {
            self.newest = self.newest.max(max);
        }
        let retract = self.plan.updating_input.then(|| {
            batch
                .column(n - 2)
                .as_any()
                .downcast_ref::<BooleanArray>()
                .expect("the retraction flag is a boolean")
                .clone()
        });
        let keys = super::group_keys(&self.plan.keys, batch)?;
        let key_rows = self.converter.convert_columns(&keys)?;
        let args: Vec<Vec<ArrayRef>> = self
            .plan
            .aggregates
            .iter()
            .map(|a| a.arguments(batch))
            .collect::<Result<_>>()?;
        let filters: Vec<Option<BooleanArray>> = self
            .plan
            .aggregates
            .iter()
            .map(|a| {
                let f = a.filter_column(batch)?;
                Ok(f.and_then(|f| f.as_any().downcast_ref::<BooleanArray>().cloned()))
            })
            .collect::<Result<_>>()?;
        // Rows per (key, retracted), in first-seen order.
        let mut order: Vec<(OwnedRow, bool)> = Vec::new();
        let mut by_key: HashMap<(OwnedRow, bool), Vec<u32>> = HashMap::new();
        for i in 0..rows {
            let r = retract.as_ref().is_some_and(|f| f.value(i));
            let k = (key_rows.row(i).owned(), r);
            by_key
                .entry(k.clone())
                .or_insert_with(|| {
                    order.push(k);
                    Vec::new()
                })
                .push(i as u32);
        }
        for (key, retracted) in order {
            let idx = by_key
                .remove(&(key.clone(), retracted))
                .expect("every key has rows");
            let count = idx.len() as i64;
            let idx = UInt32Array::from(idx);
            if !self.groups.contains_key(&key) {
                let accumulators = self
                    .plan
                    .aggregates
                    .iter()
                    .map(|a| a.expr.create_accumulator())
                    .collect::<Result<_>>()?;
                self.groups.insert(
                    key.clone(),
                    Group {
                        accumulators,
                        rows: 0,
                        emitted: None,
                    },
                );
            }
            let group = self.groups.get_mut(&key).expect("group just inserted");
            for (a, acc) in group.accumulators.iter_mut().enumerate() {
                let mut slice: Vec<ArrayRef> = args[a]
                    .iter()
                    .map(|c| take(c.as_ref(), &idx, None))
                    .collect::<std::result::Result<_, _>>()?;
                if let Some(f) = &filters[a] {
                    let mask = take(f, &idx, None)?;
                    let mask = mask
                        .as_any()
                        .downcast_ref::<BooleanArray>()
                        .expect("boolean");
                    slice = slice
                        .iter()
                        .map(|c| datafusion::arrow::compute::filter(c, mask))
                        .collect::<std::result::Result<_, _>>()?;
                }
                if retracted {
                    acc.retract_batch(&slice)?;
                } else {
                    acc.update_batch(&slice)?;
                }
            }
            group.rows += if retracted { -count } else { count };
            self.dirty.push(key);
        }
        Ok(())
    }

    /// Emits the changes of every group updated since the last flush.
    fn flush(&mut self) -> Result<Option<RecordBatch>> {
        if self.dirty.is_empty() {
            return Ok(None);
        }
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort();
        dirty.dedup();
        let mut out_keys: Vec<OwnedRow> = Vec::new();
        let mut out_values: Vec<Vec<ScalarValue>> = Vec::new();
        let mut out_retract: Vec<bool> = Vec::new();
        for key in dirty {
            let Some(group) = self.groups.get_mut(&key) else {
                continue;
            };
            let previous = group.emitted.take();
            if group.rows <= 0 {
                if let Some(old) = previous {
                    out_keys.push(key.clone());
                    out_values.push(old);
                    out_retract.push(true);
                }
                self.groups.remove(&key);
                continue;
            }
            let new: Vec<ScalarValue> = group
                .accumulators
                .iter_mut()
                .map(|a| a.evaluate())
                .collect::<Result<_>>()?;
            if previous.as_ref() == Some(&new) {
                group.emitted = previous;
                continue;
            }
            if let Some(old) = previous {
                out_keys.push(key.clone());
                out_values.push(old);
                out_retract.push(true);
            }
            out_keys.push(key);
            out_values.push(new.clone());
            out_retract.push(false);
            group.emitted = Some(new);
        }
        if out_keys.is_empty() {
            return Ok(None);
        }
        let rows = out_keys.len();
        let mut columns: Vec<ArrayRef> = Vec::new();
        if !self.plan.keys.is_empty() {
            columns = self
                .converter
                .convert_rows(out_keys.iter().map(|r| r.row()))?;
        }
        for a in 0..self.plan.aggregates.len() {
            let field = self.plan.schema.field(columns.len());
            let values = out_values.iter().map(|v| v[a].clone());
            let array = ScalarValue::iter_to_array(values)?;
            let array = if array.data_type() != field.data_type() {
                datafusion::arrow::compute::cast(&array, field.data_type())?
            } else {
                array
            };
            columns.push(array);
        }
        columns.push(Arc::new(BooleanArray::from(out_retract)));
        columns.push(Arc::new(TimestampNanosecondArray::from(vec![
            self.newest;
            rows
        ])));
        Ok(Some(RecordBatch::try_new_with_options(
            self.plan.schema.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )?))
    }

    fn fail(&self, source: datafusion::error::DataFusionError) -> DataflowError {
        DataflowError::expression(&self.plan.label)(source)
    }

    async fn emit(&mut self, out: &mut Collector) -> Result<(), DataflowError> {
        if let Some(batch) = self.flush().map_err(|e| self.fail(e))? {
            out.collect(batch).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl Operator for UpdatingOp {
    async fn process_batch(
        &mut self,
        batch: RecordBatch,
        _input: usize,
        _out: &mut Collector,
    ) -> Result<(), DataflowError> {
        self.update(&batch).map_err(|e| self.fail(e))
    }

    async fn on_watermark(
        &mut self,
        watermark: i64,
        out: &mut Collector,
    ) -> Result<(), DataflowError> {
        self.emit(out).await?;
        out.broadcast(Message::Watermark(Watermark::EventTime(watermark)))
            .await
    }

    async fn on_close(&mut self, out: &mut Collector) -> Result<(), DataflowError> {
        self.emit(out).await
    }
}
