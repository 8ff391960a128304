//! The updating aggregate: GROUP BY without a window. Every group's aggregates are kept and
//! its result row is updated in place: when the watermark advances (and at the end of the
//! input) each group that changed emits a retraction of the row it emitted before and its new
//! row. A group whose rows were all retracted is withdrawn.
//!
//! Input may itself be updating (a retraction flag before the event time: a `debezium_json`
//! source, or another updating result). Every aggregate then retracts exactly, whatever the
//! order in which rows are withdrawn ([`Mode`]), and whatever the batches the changes come in
//! (within a batch, additions are applied before retractions, so that no accumulator ever
//! holds less than it is asked to give back): `count`, and `sum`/`avg` of integers, subtract
//! from their accumulator; every other aggregate keeps its argument rows with their multiplicity and is
//! computed afresh from them when its group's row is emitted (as Arroyo does for aggregates
//! without an exact retraction; DataFusion's sliding `min`/`max` assume that retractions come in
//! insertion order, which a change stream does not promise).
//!
//! Expiry (`SET updating_ttl`, 24 hours by default, as in Arroyo): a group that no row has
//! been added to for the TTL is dropped, and its row retracted, as Arroyo does. The time is
//! event time behind the watermark (a group expires once the watermark passes its newest
//! added row's time plus the TTL), as for the windowless join, so that what expires does not
//! depend on pacing, parallelism or restores; the end of a bounded input expires nothing.
//!
//! Checkpoints: every group is snapshot as one row of a table (its key values, row count,
//! whether it changed since the last flush, when a row was last added, the row it last
//! emitted and its accumulators' intermediate state), and the kept argument rows as one table
//! per such aggregate; both are re-partitioned on restore by their key columns as the input
//! shuffle is.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int64Array, TimestampNanosecondArray, UInt32Array,
};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::{DataType, Int64Type, SchemaRef};
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::arrow::row::{OwnedRow, RowConverter, SortField};
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::Accumulator;
use datafusion::physical_expr::PhysicalExpr;

use super::aggregate::{AggregateSpec, bad_state, state_batch, state_keys};
use crate::task::{Collector, Message, TaskError, Watermark};
use crate::task::{Operator, OperatorFactory, TaskInfo};
use crate::task::{RestoredState, StateError, TaskState};

mod checkpoint;

/// State table: one row per group (see [`UpdatingOp::snapshot_groups`]).
const GROUPS: &str = "groups";
/// State table (JSON): the newest event time seen, stamped on the rows emitted.
const NEWEST: &str = "newest";
/// State tables `values<i>`: the argument rows kept for aggregate `i` (see [`Mode::Values`]).
const VALUES: &str = "values";

/// What a group costs beyond the sizes of its parts: allocator headers and rounding of its
/// five allocations, the nodes of the expiry order, the hash map's growth. Measured: a
/// `count(*)` grouped by a `BIGINT` key held about 900 bytes of resident memory per group,
/// of which the parts' sizes account for about 350.
const GROUP_OVERHEAD: usize = 550;

/// The plan of an updating aggregate.
#[derive(Clone)]
pub struct UpdatingAggregate {
    pub label: String,
    pub keys: Vec<Arc<dyn PhysicalExpr>>,
    pub key_schema: SchemaRef,
    pub aggregates: Vec<AggregateSpec>,
    /// The input's visible columns.
    pub input_schema: SchemaRef,
    /// The input carries a retraction flag.
    pub updating_input: bool,
    /// A group no row was added to for this long (event time, in nanoseconds) is dropped.
    pub ttl: i64,
    /// Output: keys, aggregates, retraction flag, event time.
    pub schema: SchemaRef,
}

/// How an aggregate follows its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The input never retracts: DataFusion's accumulator.
    Accumulate,
    /// DataFusion's retracting (sliding) accumulator, exact in any order: `count`, and `sum`
    /// or `avg` of integers, without DISTINCT or ORDER BY.
    Retract,
    /// Any other aggregate of updating input: the argument rows are kept with their
    /// multiplicity, and the aggregate is computed afresh from them when the group is emitted.
    Values,
}

impl Mode {
    fn of(spec: &AggregateSpec, input: &SchemaRef, updating_input: bool) -> Result<Mode> {
        if !updating_input {
            return Ok(Mode::Accumulate);
        }
        let e = &spec.expr;
        let integers = e
            .expressions()
            .iter()
            .map(|a| a.data_type(input))
            .collect::<Result<Vec<_>>>()?
            .iter()
            .all(|t| t.is_integer() || matches!(t, DataType::Decimal128(..)));
        let exact = match e.fun().name() {
            "count" => true,
            "sum" | "avg" | "mean" => integers,
            _ => false,
        };
        Ok(if exact && !e.is_distinct() && e.order_bys().is_empty() {
            Mode::Retract
        } else {
            Mode::Values
        })
    }
}

/// One aggregate of one group.
enum Slot {
    Accumulator(Box<dyn Accumulator>),
    /// Argument rows (see [`Mode::Values`]) and how many times each is there.
    Values(HashMap<OwnedRow, i64>),
}

struct Group {
    slots: Vec<Slot>,
    /// Rows in the group (inserts less retractions).
    rows: i64,
    /// The row last emitted.
    emitted: Option<Vec<ScalarValue>>,
    /// The event time of the newest row added (for expiry).
    updated: i64,
}

/// Per aggregate, what the operator needs to handle it.
struct Handling {
    mode: Mode,
    /// The number of its state columns in the [`GROUPS`] table (0 for [`Mode::Values`]).
    width: usize,
    /// For [`Mode::Values`]: the argument rows' converter.
    values: Option<RowConverter>,
}

struct UpdatingOp {
    plan: UpdatingAggregate,
    info: TaskInfo,
    handling: Vec<Handling>,
    converter: RowConverter,
    groups: HashMap<OwnedRow, Group>,
    dirty: Vec<OwnedRow>,
    /// Every group by the time a row was last added to it, oldest first.
    expiry: BTreeSet<(i64, OwnedRow)>,
    /// Groups restored from a checkpoint without `_updated`, dated once `newest` is known.
    undated: Vec<OwnedRow>,
    newest: i64,
    /// The bytes of a key row, as the last batch's keys averaged (for [`Operator::state_bytes`]).
    key_bytes: usize,
    /// The bytes of a new group's aggregates (for [`Operator::state_bytes`]).
    group_bytes: usize,
    /// Retracted rows dropped because their group held fewer rows (see `update`).
    unmatched_retractions: u64,
}

impl OperatorFactory for UpdatingAggregate {
    fn create(&self, info: &TaskInfo) -> Result<Box<dyn Operator>, TaskError> {
        let setup = TaskError::setup(&self.label);
        let converter = RowConverter::new(
            self.key_schema
                .fields()
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )
        .map_err(|e| setup(e.into()))?;
        let handling = self
            .aggregates
            .iter()
            .map(|a| handling(a, &self.input_schema, self.updating_input))
            .collect::<Result<_>>()
            .map_err(TaskError::setup(&self.label))?;
        let mut op = UpdatingOp {
            plan: self.clone(),
            info: info.clone(),
            handling,
            converter,
            groups: HashMap::new(),
            dirty: Vec::new(),
            expiry: BTreeSet::new(),
            undated: Vec::new(),
            newest: i64::MIN,
            key_bytes: 0,
            group_bytes: 0,
            unmatched_retractions: 0,
        };
        let fresh = op.new_group().map_err(TaskError::setup(&self.label))?;
        op.group_bytes = fresh
                .slots
                .iter()
                .map(|slot| match slot {
                    Slot::Accumulator(acc) => acc.size(),
                    Slot::Values(kept) => std::mem::size_of_val(kept),
                })
                .sum::<usize>()
            // The row it emits.
            + self.aggregates.len() * std::mem::size_of::<ScalarValue>();
        Ok(Box::new(op))
    }
}

fn handling(spec: &AggregateSpec, input: &SchemaRef, updating_input: bool) -> Result<Handling> {
    let mode = Mode::of(spec, input, updating_input)?;
    Ok(match mode {
        Mode::Accumulate => Handling {
            mode,
            width: spec.expr.state_fields()?.len(),
            values: None,
        },
        Mode::Retract => Handling {
            mode,
            width: spec.expr.create_sliding_accumulator()?.state()?.len(),
            values: None,
        },
        Mode::Values => {
            let mut exprs = spec.expr.expressions();
            exprs.extend(spec.expr.order_bys().iter().map(|s| s.expr.clone()));
            let fields = exprs
                .iter()
                .map(|e| Ok(SortField::new(e.data_type(input)?)))
                .collect::<Result<Vec<_>>>()?;
            Handling {
                mode,
                width: 0,
                values: Some(RowConverter::new(fields)?),
            }
        }
    })
}

impl Handling {
    fn new_slot(&self, spec: &AggregateSpec) -> Result<Slot> {
        Ok(match self.mode {
            Mode::Accumulate => Slot::Accumulator(spec.expr.create_accumulator()?),
            Mode::Retract => Slot::Accumulator(spec.expr.create_sliding_accumulator()?),
            Mode::Values => Slot::Values(HashMap::new()),
        })
    }
}

impl Slot {
    /// Adds (or with `retract` removes) the argument rows `args`.
    fn apply(
        &mut self,
        args: &[ArrayRef],
        retract: bool,
        values: Option<&RowConverter>,
    ) -> Result<()> {
        match self {
            Slot::Accumulator(acc) if retract => acc.retract_batch(args),
            Slot::Accumulator(acc) => acc.update_batch(args),
            Slot::Values(kept) => {
                let converter = values.ok_or_else(|| {
                    DataFusionError::Internal("a kept-values aggregate has no converter".into())
                })?;
                let delta = if retract { -1 } else { 1 };
                for row in converter.convert_columns(args)?.iter() {
                    let row = row.owned();
                    let count = kept.entry(row.clone()).or_insert(0);
                    *count += delta;
                    if *count == 0 {
                        kept.remove(&row);
                    }
                }
                Ok(())
            }
        }
    }

    /// The aggregate's current value.
    fn evaluate(
        &mut self,
        spec: &AggregateSpec,
        values: Option<&RowConverter>,
    ) -> Result<ScalarValue> {
        match self {
            Slot::Accumulator(acc) => acc.evaluate(),
            Slot::Values(kept) => {
                let converter = values.ok_or_else(|| {
                    DataFusionError::Internal("a kept-values aggregate has no converter".into())
                })?;
                let rows = kept.iter().flat_map(|(row, &count)| {
                    std::iter::repeat_n(row.row(), count.max(0) as usize)
                });
                let args = converter.convert_rows(rows)?;
                let mut acc = spec.expr.create_accumulator()?;
                acc.update_batch(&args)?;
                acc.evaluate()
            }
        }
    }
}

impl UpdatingOp {
    fn new_group(&self) -> Result<Group> {
        Ok(Group {
            slots: self
                .handling
                .iter()
                .zip(&self.plan.aggregates)
                .map(|(h, a)| h.new_slot(a))
                .collect::<Result<_>>()?,
            rows: 0,
            emitted: None,
            updated: i64::MIN,
        })
    }

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
        if let Some(per_row) = key_rows.size().checked_div(rows) {
            self.key_bytes = per_row;
        }
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
        // A batch's additions are applied before its retractions: a retraction in the batch
        // may withdraw a row added earlier in the same batch (a Debezium `c` then `u`), and
        // applied first it would take from the accumulators more than they hold (DataFusion's
        // retracting accumulators count in `u64`: they overflow). Where a batch starts is not
        // fixed (a source resumed from a checkpoint batches its input anew), so neither may be
        // the order in which a group's changes reach it: additions first holds for any.
        order.sort_by_key(|(_, retracted)| *retracted);
        for (key, retracted) in order {
            let idx = by_key
                .remove(&(key.clone(), retracted))
                .expect("every key has rows");
            let count = idx.len() as i64;
            // Retractions of rows this aggregate never added (a changelog read from its middle,
            // such as a Debezium topic from `latest`): applied, they would take from the
            // accumulators what these do not hold. They are dropped and counted as bad rows.
            // Told per group and batch: more retractions than the group holds with this
            // batch's additions (an unseen row's retraction beside additions to its group in
            // one batch goes unnoticed).
            if retracted && self.groups.get(&key).map_or(0, |g| g.rows) < count {
                if self.unmatched_retractions == 0 {
                    tracing::warn!(
                        operator = %self.plan.label,
                        "retractions of rows this aggregate never received are dropped (counted as bad rows)"
                    );
                }
                self.unmatched_retractions += count as u64;
                self.info.counters.bad(count as u64);
                continue;
            }
            let newest_added = (!retracted)
                .then(|| idx.iter().map(|&i| ts.value(i as usize)).max())
                .flatten();
            let idx = UInt32Array::from(idx);
            if !self.groups.contains_key(&key) {
                let group = self.new_group()?;
                self.groups.insert(key.clone(), group);
            }
            let group = self.groups.get_mut(&key).expect("group just inserted");
            for (a, slot) in group.slots.iter_mut().enumerate() {
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
                slot.apply(&slice, retracted, self.handling[a].values.as_ref())?;
            }
            group.rows += if retracted { -count } else { count };
            if let Some(t) = newest_added
                && t > group.updated
            {
                self.expiry.remove(&(group.updated, key.clone()));
                group.updated = t;
                self.expiry.insert((t, key.clone()));
            }
            self.dirty.push(key);
        }
        Ok(())
    }

    /// Drops the groups no row was added to since `horizon` (before the changes are emitted,
    /// so an expired group's last row is the one retracted).
    fn expire(&mut self, horizon: i64) -> Vec<(OwnedRow, Vec<ScalarValue>)> {
        let mut retracted = Vec::new();
        while let Some((updated, _)) = self.expiry.first()
            && *updated < horizon
        {
            let (_, key) = self.expiry.pop_first().expect("just seen");
            if let Some(group) = self.groups.remove(&key)
                && let Some(row) = group.emitted
            {
                retracted.push((key, row));
            }
        }
        retracted
    }

    /// Emits the changes of every group updated since the last flush, and the retraction of
    /// every group that expired at `watermark`.
    fn flush(&mut self, watermark: Option<i64>) -> Result<Option<RecordBatch>> {
        let mut out_keys: Vec<OwnedRow> = Vec::new();
        let mut out_values: Vec<Vec<ScalarValue>> = Vec::new();
        let mut out_retract: Vec<bool> = Vec::new();
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort();
        dirty.dedup();
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
                self.expiry.remove(&(group.updated, key.clone()));
                self.groups.remove(&key);
                continue;
            }
            let new: Vec<ScalarValue> = group
                .slots
                .iter_mut()
                .zip(&self.plan.aggregates)
                .zip(&self.handling)
                .map(|((slot, spec), h)| slot.evaluate(spec, h.values.as_ref()))
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
        // The end of the input (the maximum watermark) expires nothing.
        if let Some(w) = watermark.filter(|w| *w < i64::MAX) {
            for (key, row) in self.expire(w.saturating_sub(self.plan.ttl)) {
                out_keys.push(key);
                out_values.push(row);
                out_retract.push(true);
            }
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

    fn fail(&self, source: DataFusionError) -> TaskError {
        TaskError::expression(&self.plan.label)(source)
    }

    async fn emit(&mut self, watermark: Option<i64>, out: &mut Collector) -> Result<(), TaskError> {
        if let Some(batch) = self.flush(watermark).map_err(|e| self.fail(e))? {
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
        self.emit(Some(watermark), out).await?;
        out.broadcast(Message::Watermark(Watermark::EventTime(watermark)))
            .await
    }

    async fn on_close(&mut self, out: &mut Collector) -> Result<(), TaskError> {
        self.emit(None, out).await
    }

    /// An estimate from the number of groups: each holds its key twice (the map's, the
    /// expiry order's), its aggregates as a new group has them, the row it emitted, and the
    /// allocations that come with them ([`GROUP_OVERHEAD`]); the map's free slots and the
    /// list of changed groups count too. Argument rows kept for exact retraction are not
    /// counted.
    fn state_bytes(&self) -> usize {
        let key = self.key_bytes + std::mem::size_of::<OwnedRow>();
        let slot = std::mem::size_of::<(OwnedRow, Group)>() + 1;
        let group = 2 * key + std::mem::size_of::<i64>() + self.group_bytes + GROUP_OVERHEAD;
        self.groups.capacity() * slot
            + self.groups.len() * group
            + self.dirty.capacity() * std::mem::size_of::<OwnedRow>()
            + self.dirty.len() * self.key_bytes
    }

    /// Every group (table [`GROUPS`], and `values<i>` for the argument rows kept) and the
    /// newest event time (table [`NEWEST`]).
    async fn snapshot(&mut self) -> Result<TaskState, TaskError> {
        let mut state = TaskState::new();
        let tables = self
            .snapshot_groups()
            .map_err(StateError::operator(&self.plan.label, GROUPS))?;
        state.put(GROUPS, []);
        for (name, batch) in tables {
            state.put(&name, [batch]);
        }
        state.put_json(NEWEST, &self.newest)?;
        Ok(state)
    }

    /// Takes the groups whose keys hash to this subtask, from every old subtask. The newest
    /// event time is the subtask's own at the same parallelism; otherwise the newest of all,
    /// so that no row this subtask emits is stamped before what it already holds.
    fn restore(&mut self, state: &RestoredState) -> Result<(), TaskError> {
        let keys = state_keys(&self.plan.keys, &self.plan.key_schema);
        let mut tables = vec![GROUPS.to_string()];
        tables.extend(
            self.handling
                .iter()
                .enumerate()
                .filter(|(_, h)| h.mode == Mode::Values)
                .map(|(a, _)| format!("{VALUES}{a}")),
        );
        for table in tables {
            for batch in state.owned_rows(&table, &keys, &self.info)? {
                self.load(&table, &batch)
                    .map_err(StateError::operator(&self.plan.label, &table))?;
            }
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
        for key in std::mem::take(&mut self.undated) {
            if let Some(group) = self.groups.get_mut(&key) {
                group.updated = self.newest;
                self.expiry.insert((self.newest, key));
            }
        }
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
    use datafusion::functions_aggregate::min_max::{max_udaf, min_udaf};
    use datafusion::functions_aggregate::sum::sum_udaf;
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
            input_schema: input.clone(),
            updating_input,
            ttl: i64::MAX,
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

    /// Changes of a few groups: rows withdrawn in another order than they came, groups
    /// withdrawn and back, values repeated.
    fn change_steps(schema: &SchemaRef) -> Vec<Step> {
        vec![
            rows(
                schema,
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
                schema,
                &[("a", 1, 6, true), ("d", 5, 7, false), ("b", 2, 8, true)],
            ),
            rows(schema, &[("c", 6, 9, false)]),
            Step::Watermark(10),
            // b comes back.
            rows(
                schema,
                &[("b", 7, 11, false), ("c", 3, 12, true), ("a", 8, 13, false)],
            ),
            Step::Watermark(15),
            // d is withdrawn before it is emitted again; e is new.
            rows(schema, &[("d", 5, 16, true), ("e", 1, 17, false)]),
            Step::Watermark(20),
            rows(schema, &[("e", 2, 21, false), ("e", 2, 22, true)]),
            // The first of two equal values of a is withdrawn, then its smallest.
            rows(
                schema,
                &[("a", 4, 23, false), ("a", 4, 24, true), ("a", 8, 25, true)],
            ),
            Step::Watermark(30),
            rows(schema, &[("a", 0, 31, false), ("c", 6, 32, true)]),
        ]
    }

    #[tokio::test]
    async fn updating_aggregates_of_updating_input_restore_from_checkpoints() {
        let schema = input_schema(true);
        let v = col("v", &schema).unwrap();
        let v_double = cast(v.clone(), &schema, DataType::Float64).unwrap();
        let aggregates = vec![
            aggregate(count_udaf(), v.clone(), &schema, "count", false),
            aggregate(sum_udaf(), v.clone(), &schema, "sum", false),
            aggregate(avg_udaf(), v_double.clone(), &schema, "avg", false),
            aggregate(min_udaf(), v.clone(), &schema, "min", false),
            aggregate(max_udaf(), v.clone(), &schema, "max", false),
            aggregate(count_udaf(), v.clone(), &schema, "distinct", true),
            aggregate(sum_udaf(), v_double, &schema, "fsum", false),
        ];
        let (plan, keys) = plan(aggregates, false, true);
        check_checkpoints(&plan, &keys, &change_steps(&schema), true).await;
    }

    #[tokio::test]
    async fn retractions_in_any_order_give_the_aggregates_of_the_rows_left() {
        let schema = input_schema(true);
        let v = col("v", &schema).unwrap();
        let aggregates = vec![
            aggregate(min_udaf(), v.clone(), &schema, "min", false),
            aggregate(max_udaf(), v.clone(), &schema, "max", false),
            aggregate(count_udaf(), v.clone(), &schema, "distinct", true),
            aggregate(sum_udaf(), v, &schema, "sum", false),
        ];
        let (plan, _) = plan(aggregates, false, true);
        let steps = change_steps(&schema);
        let final_rows = replay(&plan, &steps).await;
        // a keeps 4 and 0 of 1, 4, 8, 4, 0; b keeps 7; c and d lose every row; e keeps 1.
        assert_eq!(
            final_rows,
            vec![
                "a | 0 | 4 | 2 | 4",
                "b | 7 | 7 | 1 | 7",
                "e | 1 | 1 | 1 | 1"
            ]
        );
    }

    /// Feeds `steps` to one subtask and replays its changes: the rows left, without the
    /// retraction flag and the event time.
    async fn replay(plan: &UpdatingAggregate, steps: &[Step]) -> Vec<String> {
        let sent = crate::operator::testing::run_one(plan, steps).await;
        let mut left: Vec<String> = Vec::new();
        for batch in &sent {
            let n = batch.num_columns();
            let retract = batch.column(n - 2).as_boolean().clone();
            for row in 0..batch.num_rows() {
                let text: Vec<String> = (0..n - 2)
                    .map(|c| {
                        datafusion::arrow::util::display::array_value_to_string(
                            batch.column(c),
                            row,
                        )
                        .unwrap()
                    })
                    .collect();
                let text = text.join(" | ");
                if retract.value(row) {
                    let at = left
                        .iter()
                        .position(|r| *r == text)
                        .expect("retracts a row there");
                    left.remove(at);
                } else {
                    left.push(text);
                }
            }
        }
        left.sort();
        left
    }

    /// A batch may withdraw a row it also adds (a Debezium `c` then `u` of one row), after
    /// withdrawing one of the rows its group held: a source resumed from a checkpoint reads
    /// the rest of its input as one batch, so a group's first change in a batch may be a
    /// retraction. Applied in the order first seen, the retractions took more than the
    /// group held, and DataFusion's retracting `sum` overflowed its `u64` count.
    #[tokio::test]
    async fn a_batch_withdrawing_a_row_it_adds_leaves_the_rows_left() {
        let schema = input_schema(true);
        let v = col("v", &schema).unwrap();
        let aggregates = vec![
            aggregate(count_udaf(), v.clone(), &schema, "count", false),
            aggregate(sum_udaf(), v.clone(), &schema, "sum", false),
            aggregate(
                avg_udaf(),
                cast(v.clone(), &schema, DataType::Float64).unwrap(),
                &schema,
                "avg",
                false,
            ),
            aggregate(count_udaf(), v, &schema, "distinct", true),
        ];
        let (plan, keys) = plan(aggregates, false, true);
        let steps = vec![
            rows(&schema, &[("a", 1, 1, false), ("b", 5, 2, false)]),
            Step::Watermark(3),
            // The checkpoint's barrier falls here; the rest comes as one batch: a's old row is
            // withdrawn, then a row is added, updated (withdrawn and added anew) and deleted.
            rows(
                &schema,
                &[
                    ("a", 1, 4, true),
                    ("a", 2, 5, false),
                    ("a", 2, 6, true),
                    ("a", 3, 7, false),
                    ("b", 5, 8, true),
                    ("b", 6, 9, false),
                    ("b", 6, 10, true),
                ],
            ),
        ];
        let final_rows = replay(&plan, &steps).await;
        // a keeps 3; b loses every row.
        assert_eq!(final_rows, vec!["a | 1 | 3 | 3.0 | 1"]);
        check_checkpoints(&plan, &keys, &steps, true).await;
    }

    /// A changelog read from its middle retracts rows the aggregate never received: those
    /// retractions are dropped (and counted as bad rows), never taken from the accumulators,
    /// whose retracting `sum` counts in `u64`.
    #[tokio::test]
    async fn retractions_of_rows_never_received_are_dropped() {
        let schema = input_schema(true);
        let v = col("v", &schema).unwrap();
        let aggregates = vec![
            aggregate(count_udaf(), v.clone(), &schema, "count", false),
            aggregate(sum_udaf(), v, &schema, "sum", false),
        ];
        let (plan, _) = plan(aggregates, false, true);
        let steps = vec![
            // x was never added; y holds one row and loses two.
            rows(
                &schema,
                &[("x", 4, 1, true), ("y", 2, 2, false), ("y", 2, 3, true)],
            ),
            rows(&schema, &[("y", 2, 4, true)]),
            rows(&schema, &[("y", 9, 5, false)]),
        ];
        let final_rows = replay(&plan, &steps).await;
        assert_eq!(final_rows, vec!["y | 1 | 9"]);
    }

    #[tokio::test]
    async fn groups_expire_after_the_ttl_in_event_time_and_not_at_the_end() {
        let schema = input_schema(false);
        let v = col("v", &schema).unwrap();
        let (mut plan, keys) = plan(
            vec![aggregate(count_udaf(), v, &schema, "count", false)],
            false,
            false,
        );
        plan.ttl = 10;
        let r = |rs: &[(&str, i64, i64)]| {
            let rs: Vec<_> = rs.iter().map(|&(k, v, t)| (k, v, t, false)).collect();
            rows(&schema, &rs)
        };
        let steps = vec![
            r(&[("a", 1, 1), ("b", 1, 2)]),
            Step::Watermark(5),
            // a is refreshed at 12; b (last added at 2) expires once the watermark passes 12.
            r(&[("a", 1, 12)]),
            Step::Watermark(13),
            // b comes back as a new group; a expires at 23.
            r(&[("b", 1, 20)]),
            Step::Watermark(24),
            r(&[("c", 1, 25)]),
        ];
        let final_rows = replay(&plan, &steps).await;
        // The end of the input does not expire b (added at 20) nor c.
        assert_eq!(final_rows, vec!["b | 1".to_string(), "c | 1".to_string()]);
        check_checkpoints(&plan, &keys, &steps, true).await;
    }
}
