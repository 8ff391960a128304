//! The updating aggregate: GROUP BY without a window. Every group's aggregates are kept for
//! the life of the pipeline and its result row is updated in place: when the watermark
//! advances (and at the end of the input) each group that changed emits a retraction of the
//! row it emitted before and its new row. A group whose rows were all retracted is withdrawn.
//!
//! Input may itself be updating (a retraction flag before the event time); retracted rows are
//! removed from the accumulators with `retract_batch`.
//!
//! Checkpoints: every group is snapshot as one row of a table (its key values, row count,
//! whether it changed since the last flush, the row it last emitted and its accumulators'
//! intermediate state), re-partitioned on restore by its key columns as the input shuffle is.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int64Array, TimestampNanosecondArray, UInt32Array,
};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::{Int64Type, SchemaRef};
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::arrow::row::{OwnedRow, RowConverter, SortField};
use datafusion::common::ScalarValue;
use datafusion::error::Result;
use datafusion::logical_expr::Accumulator;
use datafusion::physical_expr::PhysicalExpr;

use super::aggregate::{AggregateSpec, bad_state, state_batch, state_keys, state_widths};
use crate::task::{Collector, Message, TaskError, Watermark};
use crate::task::{Operator, OperatorFactory, TaskInfo};
use crate::task::{RestoredState, StateError, TaskState};

/// State table: one row per group (see [`UpdatingOp::snapshot_groups`]).
const GROUPS: &str = "groups";
/// State table (JSON): the newest event time seen, stamped on the rows emitted.
const NEWEST: &str = "newest";

/// The plan of an updating aggregate.
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
    info: TaskInfo,
    /// Per aggregate, the number of its state columns.
    state_widths: Vec<usize>,
    converter: RowConverter,
    groups: HashMap<OwnedRow, Group>,
    dirty: Vec<OwnedRow>,
    newest: i64,
}

impl OperatorFactory for UpdatingAggregate {
    fn create(&self, info: &TaskInfo) -> Result<Box<dyn Operator>, TaskError> {
        let converter = RowConverter::new(
            self.key_schema
                .fields()
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )
        .map_err(|e| TaskError::setup(&self.label)(e.into()))?;
        let state_widths = state_widths(&self.aggregates).map_err(TaskError::setup(&self.label))?;
        Ok(Box::new(UpdatingOp {
            plan: self.clone(),
            info: info.clone(),
            state_widths,
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

    /// Every group as one row of the [`GROUPS`] table: key columns, `_rows`, `_dirty`,
    /// `_emitted` (whether a row was emitted), the emitted row's aggregate values, then every
    /// accumulator's state columns. Reading an accumulator's state consumes it, so the groups
    /// are rebuilt from the table (as a restore would rebuild them).
    fn snapshot_groups(&mut self) -> Result<Option<RecordBatch>> {
        if self.groups.is_empty() {
            return Ok(None);
        }
        let count = self.groups.len();
        let aggregates = self.plan.aggregates.len();
        let dirty: HashSet<&OwnedRow> = self.dirty.iter().collect();
        let mut keys = Vec::with_capacity(count);
        let mut rows = Vec::with_capacity(count);
        let mut is_dirty = Vec::with_capacity(count);
        let mut emitted = Vec::with_capacity(count);
        let mut states: Vec<Vec<ScalarValue>> =
            vec![Vec::with_capacity(count); self.state_widths.iter().sum()];
        for (key, group) in &mut self.groups {
            keys.push(key.row());
            rows.push(group.rows);
            is_dirty.push(dirty.contains(key));
            emitted.push(group.emitted.as_ref());
            let mut column = 0;
            for acc in &mut group.accumulators {
                for value in acc.state()? {
                    states
                        .get_mut(column)
                        .ok_or_else(|| bad_state(GROUPS))?
                        .push(value);
                    column += 1;
                }
            }
        }
        let mut names: Vec<String> = self
            .plan
            .key_schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let mut columns = self.converter.convert_rows(keys)?;
        names.extend(["_rows", "_dirty", "_emitted"].map(String::from));
        columns.push(Arc::new(Int64Array::from(rows)));
        columns.push(Arc::new(BooleanArray::from(is_dirty)));
        columns.push(Arc::new(
            emitted
                .iter()
                .map(|e| Some(e.is_some()))
                .collect::<BooleanArray>(),
        ));
        for a in 0..aggregates {
            // A group that emitted nothing yet gets a null of the type of the others.
            let data_type = emitted
                .iter()
                .flatten()
                .map(|values| values[a].data_type())
                .next()
                .unwrap_or_else(|| self.plan.aggregates[a].expr.field().data_type().clone());
            let null = ScalarValue::try_from(&data_type)?;
            let values = emitted
                .iter()
                .map(|e| e.map_or_else(|| null.clone(), |values| values[a].clone()));
            names.push(format!("emitted{a}"));
            columns.push(ScalarValue::iter_to_array(values)?);
        }
        for (i, values) in states.into_iter().enumerate() {
            names.push(format!("state{i}"));
            columns.push(ScalarValue::iter_to_array(values)?);
        }
        let batch = state_batch(names, columns)?;
        self.groups.clear();
        self.dirty.clear();
        self.load(&batch)?;
        Ok(Some(batch))
    }

    /// Adds the groups of rows of the [`GROUPS`] table.
    fn load(&mut self, batch: &RecordBatch) -> Result<()> {
        let key_count = self.plan.key_schema.fields().len();
        let aggregates = self.plan.aggregates.len();
        let columns = batch.columns();
        if columns.len() != key_count + 3 + aggregates + self.state_widths.iter().sum::<usize>() {
            return Err(bad_state(GROUPS));
        }
        let keys = self.converter.convert_columns(&columns[..key_count])?;
        let rows = columns[key_count]
            .as_primitive_opt::<Int64Type>()
            .ok_or_else(|| bad_state(GROUPS))?;
        let dirty = columns[key_count + 1]
            .as_boolean_opt()
            .ok_or_else(|| bad_state(GROUPS))?;
        let emitted = columns[key_count + 2]
            .as_boolean_opt()
            .ok_or_else(|| bad_state(GROUPS))?;
        let values = &columns[key_count + 3..key_count + 3 + aggregates];
        let states = &columns[key_count + 3 + aggregates..];
        for i in 0..batch.num_rows() {
            let key = keys.row(i).owned();
            if self.groups.contains_key(&key) {
                return Err(datafusion::error::DataFusionError::Execution(format!(
                    "state table '{GROUPS}' holds a group twice"
                )));
            }
            let mut accumulators = Vec::with_capacity(aggregates);
            let mut offset = 0;
            for (a, width) in self.plan.aggregates.iter().zip(&self.state_widths) {
                let mut acc = a.expr.create_accumulator()?;
                let state: Vec<ArrayRef> = states[offset..offset + width]
                    .iter()
                    .map(|c| c.slice(i, 1))
                    .collect();
                acc.merge_batch(&state)?;
                accumulators.push(acc);
                offset += width;
            }
            let emitted = if emitted.value(i) {
                let row = values
                    .iter()
                    .map(|c| ScalarValue::try_from_array(c, i))
                    .collect::<Result<_>>()?;
                Some(row)
            } else {
                None
            };
            if dirty.value(i) {
                self.dirty.push(key.clone());
            }
            self.groups.insert(
                key,
                Group {
                    accumulators,
                    rows: rows.value(i),
                    emitted,
                },
            );
        }
        Ok(())
    }

    fn fail(&self, source: datafusion::error::DataFusionError) -> TaskError {
        TaskError::expression(&self.plan.label)(source)
    }

    async fn emit(&mut self, out: &mut Collector) -> Result<(), TaskError> {
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
    ) -> Result<(), TaskError> {
        self.update(&batch).map_err(|e| self.fail(e))
    }

    async fn on_watermark(&mut self, watermark: i64, out: &mut Collector) -> Result<(), TaskError> {
        self.emit(out).await?;
        out.broadcast(Message::Watermark(Watermark::EventTime(watermark)))
            .await
    }

    async fn on_close(&mut self, out: &mut Collector) -> Result<(), TaskError> {
        self.emit(out).await
    }

    /// Every group (table [`GROUPS`]) and the newest event time (table [`NEWEST`]).
    async fn snapshot(&mut self) -> Result<TaskState, TaskError> {
        let mut state = TaskState::new();
        let groups = self
            .snapshot_groups()
            .map_err(StateError::operator(&self.plan.label, GROUPS))?;
        state.put(GROUPS, groups);
        state.put_json(NEWEST, &self.newest)?;
        Ok(state)
    }

    /// Takes the groups whose keys hash to this subtask, from every old subtask. The newest
    /// event time is the subtask's own at the same parallelism; otherwise the newest of all,
    /// so that no row this subtask emits is stamped before what it already holds.
    fn restore(&mut self, state: &RestoredState) -> Result<(), TaskError> {
        let keys = state_keys(&self.plan.keys, &self.plan.key_schema);
        for batch in state.owned_rows(GROUPS, &keys, &self.info)? {
            self.load(&batch)
                .map_err(StateError::operator(&self.plan.label, GROUPS))?;
        }
        let newest: Vec<Vec<i64>> = state.json(NEWEST)?;
        let newest = if state.parallelism == self.info.parallelism {
            newest
                .get(self.info.subtask)
                .and_then(|n| n.first())
                .copied()
        } else {
            newest.iter().flatten().max().copied()
        };
        self.newest = newest.unwrap_or(i64::MIN);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::aggregate::key_schema;
    use crate::operator::testing::{
        Step, aggregate, aggregate_fields, aggregates, check_checkpoints, input_schema, rows,
    };
    use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use datafusion::functions_aggregate::average::avg_udaf;
    use datafusion::functions_aggregate::count::count_udaf;
    use datafusion::physical_expr::expressions::{cast, col};

    /// An updating aggregate of `aggregates`, keyed by `k` unless `global`.
    fn plan(
        aggregates: Vec<AggregateSpec>,
        global: bool,
        updating_input: bool,
    ) -> (UpdatingAggregate, Vec<Arc<dyn PhysicalExpr>>) {
        let input = input_schema(updating_input);
        let keys = if global {
            vec![]
        } else {
            vec![col("k", &input).unwrap()]
        };
        let mut fields = Vec::new();
        if !global {
            fields.push(Field::new("k", DataType::Utf8, false));
        }
        fields.extend(aggregate_fields(&aggregates));
        fields.push(Field::new("_retract", DataType::Boolean, false));
        fields.push(Field::new(
            "_timestamp",
            DataType::Timestamp(TimeUnit::Nanosecond, None),
            false,
        ));
        let plan = UpdatingAggregate {
            label: "updating".to_string(),
            keys: keys.clone(),
            key_schema: key_schema(&keys, &input).unwrap(),
            aggregates,
            updating_input,
            schema: Arc::new(Schema::new(fields)),
        };
        (plan, keys)
    }

    /// Inserts only: groups change and retract what they emitted before.
    fn insert_steps() -> Vec<Step> {
        let schema = input_schema(false);
        let r = |rs: &[(&str, i64, i64)]| {
            let rs: Vec<_> = rs.iter().map(|&(k, v, t)| (k, v, t, false)).collect();
            rows(&schema, &rs)
        };
        vec![
            r(&[("a", 1, 1), ("b", 2, 3), ("c", 3, 7), ("a", 4, 12)]),
            Step::Watermark(5),
            r(&[("a", 6, 8), ("b", 7, 14), ("d", 8, 2)]),
            r(&[("d", 10, 19), ("b", 11, 25), ("a", 0, 11)]),
            Step::Watermark(20),
            r(&[("c", 13, 3), ("e", 14, 27)]),
            Step::Watermark(30),
            r(&[("b", 5, 35), ("a", 1, 31)]),
        ]
    }

    #[tokio::test]
    async fn updating_aggregates_restore_from_checkpoints() {
        let (plan, keys) = plan(aggregates(&input_schema(false)), false, false);
        check_checkpoints(&plan, &keys, &insert_steps(), true).await;
    }

    #[tokio::test]
    async fn global_updating_aggregates_restore_on_subtask_zero() {
        let (plan, keys) = plan(aggregates(&input_schema(false)), true, false);
        check_checkpoints(&plan, &keys, &insert_steps(), true).await;
    }

    #[tokio::test]
    async fn updating_aggregates_of_updating_input_restore_from_checkpoints() {
        let schema = input_schema(true);
        let v = col("v", &schema).unwrap();
        let v_double = cast(v.clone(), &schema, DataType::Float64).unwrap();
        let retractable = vec![
            aggregate(count_udaf(), v, &schema, "count", false),
            aggregate(avg_udaf(), v_double, &schema, "avg", false),
        ];
        let (plan, keys) = plan(retractable, false, true);
        let steps = vec![
            rows(
                &schema,
                &[
                    ("a", 1, 1, false),
                    ("b", 2, 2, false),
                    ("c", 3, 3, false),
                    ("a", 4, 4, false),
                ],
            ),
            Step::Watermark(5),
            // b is withdrawn; a changes.
            rows(
                &schema,
                &[("a", 1, 6, true), ("d", 5, 7, false), ("b", 2, 8, true)],
            ),
            rows(&schema, &[("c", 6, 9, false)]),
            Step::Watermark(10),
            // b comes back.
            rows(
                &schema,
                &[("b", 7, 11, false), ("c", 3, 12, true), ("a", 8, 13, false)],
            ),
            Step::Watermark(15),
            // d is withdrawn before it is emitted again; e is new.
            rows(&schema, &[("d", 5, 16, true), ("e", 1, 17, false)]),
            Step::Watermark(20),
            rows(&schema, &[("e", 2, 21, false), ("e", 2, 22, true)]),
        ];
        check_checkpoints(&plan, &keys, &steps, true).await;
    }
}
