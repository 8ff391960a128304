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

use crate::operator::unmatchable_key;
use crate::task::{Collector, Message, TaskError, Watermark};
use crate::task::{Operator, OperatorFactory, TaskInfo};
use crate::task::{RestoredState, StateError, TaskState};

/// Batches held per instant (event time), per input.
#[derive(Default)]
struct Instants {
    by_time: BTreeMap<i64, Vec<Vec<RecordBatch>>>,
    /// The bytes the held batches take, as Arrow counts them: the operator's state size.
    bytes: usize,
}

impl Instants {
    /// Splits `batch` by event time and keeps it under input `input` of `inputs`.
    fn add(&mut self, batch: RecordBatch, input: usize, inputs: usize) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let ts = batch
            .columns()
            .last()
            .and_then(|c| c.as_any().downcast_ref::<TimestampNanosecondArray>())
            .ok_or_else(|| DataFusionError::Internal("the event-time column is not last".into()))?
            .values()
            .clone();
        let first = ts[0];
        if ts.iter().all(|&t| t == first) {
            self.bytes += batch.get_array_memory_size();
            self.slot(first, inputs)[input].push(batch);
            return Ok(());
        }
        let mut rows: HashMap<i64, Vec<u32>> = HashMap::new();
        for (i, t) in ts.iter().enumerate() {
            rows.entry(*t).or_default().push(i as u32);
        }
        for (t, idx) in rows {
            let part = take_record_batch(&batch, &UInt32Array::from(idx))?;
            self.bytes += part.get_array_memory_size();
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
        let complete: Vec<_> = std::mem::replace(&mut self.by_time, open)
            .into_iter()
            .collect();
        let released: usize = complete
            .iter()
            .flat_map(|(_, inputs)| inputs.iter().flatten())
            .map(RecordBatch::get_array_memory_size)
            .sum();
        self.bytes = self.bytes.saturating_sub(released);
        complete
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
    fn create(&self, info: &TaskInfo) -> Result<Box<dyn Operator>, TaskError> {
        Ok(Box::new(InstantOp {
            kind: InstantKind::Window(self.clone()),
            info: info.clone(),
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
    /// Per key: whether a null matches a null (`IS NOT DISTINCT FROM`) or nothing (`=`).
    pub nulls_equal: Vec<bool>,
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
        // Rows with a null in a key compared with `=` never match.
        let has_null =
            |arrays: &[ArrayRef], i: usize| unmatchable_key(arrays, &self.nulls_equal, i);
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
    fn create(&self, info: &TaskInfo) -> Result<Box<dyn Operator>, TaskError> {
        Ok(Box::new(InstantOp {
            kind: InstantKind::Join(self.clone()),
            info: info.clone(),
            instants: Instants::default(),
        }))
    }
}

enum InstantKind {
    Window(WindowFunctions),
    Join(InstantJoin),
}

impl InstantKind {
    /// Per input: the state table of its buffered rows (input columns, event time last: the
    /// instant) and the keys the shuffle feeding it hashes on (the first function's
    /// `PARTITION BY`; the join keys of the side).
    fn tables(&self) -> Vec<(&'static str, &[Arc<dyn PhysicalExpr>])> {
        match self {
            InstantKind::Window(w) => {
                let keys = w.functions.first().map(|f| f.partition_by.as_slice());
                vec![("rows", keys.unwrap_or_default())]
            }
            InstantKind::Join(j) => vec![("left", &j.left_keys), ("right", &j.right_keys)],
        }
    }
}

struct InstantOp {
    kind: InstantKind,
    info: TaskInfo,
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
    /// The batches of the instants not yet complete.
    fn state_bytes(&self) -> usize {
        self.instants.bytes
    }

    async fn process_batch(
        &mut self,
        batch: RecordBatch,
        input: usize,
        _out: &mut Collector,
    ) -> Result<(), TaskError> {
        let inputs = match self.kind {
            InstantKind::Window(_) => 1,
            InstantKind::Join(_) => 2,
        };
        let label = self.label().to_string();
        self.instants
            .add(batch, input, inputs)
            .map_err(TaskError::expression(&label))
    }

    async fn on_watermark(&mut self, watermark: i64, out: &mut Collector) -> Result<(), TaskError> {
        for (t, inputs) in self.instants.complete(watermark) {
            let result = self
                .fire(t, inputs)
                .map_err(TaskError::expression(self.label()))?;
            if let Some(batch) = result {
                out.collect(batch).await?;
            }
        }
        out.broadcast(Message::Watermark(Watermark::EventTime(watermark)))
            .await
    }

    /// The buffered rows of every open instant, per input. The watermark needs no state of
    /// its own: the runtime restores it, and instants before it have already fired.
    async fn snapshot(&mut self) -> Result<TaskState, TaskError> {
        let mut state = TaskState::new();
        for (input, (table, _)) in self.kind.tables().into_iter().enumerate() {
            let slots = self.instants.by_time.values();
            state.put(table, slots.flat_map(|s| s[input].iter().cloned()));
        }
        Ok(state)
    }

    /// Takes the buffered rows whose keys hash to this subtask.
    fn restore(&mut self, state: &RestoredState) -> Result<(), TaskError> {
        let tables = self.kind.tables();
        let inputs = tables.len();
        for (input, (table, keys)) in tables.into_iter().enumerate() {
            for batch in state.owned_rows(table, keys, &self.info)? {
                self.instants
                    .add(batch, input, inputs)
                    .map_err(StateError::operator(&self.info.node, table))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use datafusion::arrow::util::display::array_value_to_string;
    use datafusion::physical_expr::expressions::Column;

    /// One input event of an operator test.
    pub(crate) enum Step {
        /// Rows on input `.0`.
        Data(usize, RecordBatch),
        Watermark(i64),
    }

    fn info(subtask: usize, parallelism: usize) -> TaskInfo {
        TaskInfo::for_test(subtask, parallelism)
    }

    pub(crate) fn column(name: &str, index: usize) -> Arc<dyn PhysicalExpr> {
        Arc::new(Column::new(name, index))
    }

    pub(crate) fn timestamp_field() -> Field {
        Field::new(
            "_timestamp",
            DataType::Timestamp(TimeUnit::Nanosecond, None),
            false,
        )
    }

    /// Every row of `batches`, formatted.
    fn rows<'a>(batches: impl IntoIterator<Item = &'a RecordBatch>) -> Vec<String> {
        let mut out = Vec::new();
        for b in batches {
            for r in 0..b.num_rows() {
                let cells: Vec<String> = b
                    .columns()
                    .iter()
                    .map(|c| array_value_to_string(c, r).unwrap())
                    .collect();
                out.push(cells.join("|"));
            }
        }
        out
    }

    /// Every row of every table of `states`, formatted and sorted.
    fn state_rows(states: &[TaskState]) -> Vec<String> {
        let mut out = Vec::new();
        for s in states {
            for (name, _) in s.encode().unwrap() {
                out.extend(
                    rows(s.table(&name))
                        .into_iter()
                        .map(|r| format!("{name}:{r}")),
                );
            }
        }
        out.sort();
        out
    }

    /// Drives `ops`, the subtasks of one node, through `steps`, routing each input's rows by
    /// its `keys` as the hash shuffle does; returns the output rows, formatted.
    pub(crate) async fn drive(
        ops: &mut [Box<dyn Operator>],
        keys: &[Vec<Arc<dyn PhysicalExpr>>],
        steps: &[Step],
    ) -> Vec<String> {
        let (mut out, mut rx) = Collector::for_test(64);
        let mut batches = Vec::new();
        for step in steps {
            match step {
                Step::Data(input, batch) => {
                    let parts =
                        crate::task::hash::partition_by_hash(batch, &keys[*input], ops.len());
                    for (op, part) in ops.iter_mut().zip(parts.unwrap()) {
                        if let Some(part) = part {
                            op.process_batch(part, *input, &mut out).await.unwrap();
                        }
                    }
                }
                Step::Watermark(t) => {
                    for op in ops.iter_mut() {
                        op.on_watermark(*t, &mut out).await.unwrap();
                    }
                }
            }
            while let Ok((_, msg)) = rx.try_recv() {
                if let Message::Data(b) = msg {
                    batches.push(b);
                }
            }
        }
        rows(&batches)
    }

    pub(crate) fn create(
        factory: &dyn OperatorFactory,
        parallelism: usize,
    ) -> Vec<Box<dyn Operator>> {
        (0..parallelism)
            .map(|i| factory.create(&info(i, parallelism)).unwrap())
            .collect()
    }

    /// Checks that a run stopped at a checkpoint after `steps[..cut]` and restored from it
    /// (through IPC) at parallelism 1 or 2, from parallelism 1 or 2, outputs what an
    /// uninterrupted run does, and that restoring hands every stored row to exactly one
    /// subtask. True when a restore over 2 subtasks gave rows to both.
    async fn check_cut(
        factory: &dyn OperatorFactory,
        keys: &[Vec<Arc<dyn PhysicalExpr>>],
        steps: &[Step],
        cut: usize,
        expected: &[String],
    ) -> bool {
        let watermark = steps[..cut].iter().rev().find_map(|s| match s {
            Step::Watermark(t) => Some(*t),
            Step::Data(..) => None,
        });
        let mut both = false;
        for (before, after) in [(1, 1), (1, 2), (2, 1), (2, 2)] {
            let mut ops = create(factory, before);
            let mut output = drive(&mut ops, keys, &steps[..cut]).await;
            let mut subtasks = Vec::new();
            for op in &mut ops {
                let state = op.snapshot().await.unwrap();
                let mut decoded = TaskState::new();
                for (name, bytes) in state.encode().unwrap() {
                    decoded.decode_into(&name, bytes).unwrap();
                }
                subtasks.push(decoded);
            }
            let state = RestoredState {
                parallelism: before,
                subtasks,
                watermark,
                epoch: 1,
            };
            let mut ops = create(factory, after);
            let mut restored = Vec::new();
            for op in &mut ops {
                op.restore(&state).unwrap();
                restored.push(op.snapshot().await.unwrap());
            }
            assert_eq!(state_rows(&restored), state_rows(&state.subtasks));
            both |= after == 2 && restored.iter().all(|s| !s.is_empty());
            output.extend(drive(&mut ops, keys, &steps[cut..]).await);
            output.sort();
            assert_eq!(
                output, expected,
                "cut {cut}, parallelism {before} -> {after}"
            );
        }
        both
    }

    /// Runs [`check_cut`] at every cut of `steps`, against an uninterrupted run (that also
    /// snapshots halfway, which must not change its output); asserts some restore split rows
    /// over 2 subtasks.
    pub(crate) async fn check_restore(
        factory: &dyn OperatorFactory,
        keys: &[Vec<Arc<dyn PhysicalExpr>>],
        steps: &[Step],
    ) {
        let mut ops = create(factory, 1);
        let half = steps.len() / 2;
        let mut expected = drive(&mut ops, keys, &steps[..half]).await;
        ops[0].snapshot().await.unwrap();
        expected.extend(drive(&mut ops, keys, &steps[half..]).await);
        expected.sort();
        assert!(!expected.is_empty());
        let mut both = false;
        for cut in 0..=steps.len() {
            both |= check_cut(factory, keys, steps, cut, &expected).await;
        }
        assert!(both, "no restore split the state over 2 subtasks");
    }

    fn rows_batch(schema: &SchemaRef, keys: &[i64], names: &[&str], times: &[i64]) -> RecordBatch {
        RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(keys.to_vec())),
                Arc::new(StringArray::from(names.to_vec())),
                Arc::new(TimestampNanosecondArray::from(times.to_vec())),
            ],
        )
        .unwrap()
    }

    /// A schema of a key `k_{side}`, a name `{side}` and the event time.
    pub(crate) fn side_schema(side: &str) -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new(format!("k_{side}"), DataType::Int64, true),
            Field::new(side, DataType::Utf8, true),
            timestamp_field(),
        ]))
    }

    /// The joined rows of [`side_schema`]s `left` and `right`: both sides' columns, then the
    /// event time.
    pub(crate) fn pair_schema_of(left: &str, right: &str) -> SchemaRef {
        let (left, right) = (side_schema(left), side_schema(right));
        let mut pair: Vec<Field> = left.fields()[..2]
            .iter()
            .chain(&right.fields()[..2])
            .map(|f| f.as_ref().clone())
            .collect();
        pair.push(timestamp_field());
        Arc::new(Schema::new(pair))
    }

    /// A batch of [`side_schema`] with a row per key, some null (named `{side}_`).
    pub(crate) fn null_key_batch(side: &str, keys: &[Option<i64>], time: i64) -> RecordBatch {
        let names: Vec<String> = keys
            .iter()
            .map(|k| k.map_or(format!("{side}_"), |k| format!("{side}{k}")))
            .collect();
        RecordBatch::try_new(
            side_schema(side),
            vec![
                Arc::new(Int64Array::from(keys.to_vec())),
                Arc::new(StringArray::from(names)),
                Arc::new(TimestampNanosecondArray::from(vec![time; keys.len()])),
            ],
        )
        .unwrap()
    }

    /// A batch of [`side_schema`] with a row per key.
    pub(crate) fn side_batch(side: &str, keys: &[i64], times: &[i64]) -> RecordBatch {
        let names: Vec<String> = keys.iter().map(|k| format!("{side}{k}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        rows_batch(&side_schema(side), keys, &names, times)
    }

    #[tokio::test]
    async fn window_functions_restore_at_any_parallelism() {
        // Rows (group, value, instant): ranked per group by value.
        let input = side_schema("v");
        let mut fields: Vec<Field> = input.fields()[..2]
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        for name in ["row_number", "rank", "dense_rank"] {
            fields.push(Field::new(name, DataType::UInt64, false));
        }
        fields.push(timestamp_field());
        let group = vec![column("k_v", 0)];
        let by_value = vec![(column("v", 1), SortOptions::default())];
        let spec = |function| RankSpec {
            function,
            partition_by: group.clone(),
            order_by: by_value.clone(),
        };
        let factory = WindowFunctions {
            label: "window_functions".into(),
            functions: vec![
                spec(Ranking::RowNumber),
                spec(Ranking::Rank),
                spec(Ranking::DenseRank),
            ],
            schema: Arc::new(Schema::new(fields)),
        };
        // Rows that tie on the value within a group and instant are identical, so the output
        // does not depend on which of them arrives first.
        let batch = |keys: &[i64], values: &[&str], times: &[i64]| {
            Step::Data(0, rows_batch(&input, keys, values, times))
        };
        let steps = vec![
            batch(&[1, 2, 3, 1], &["b", "a", "c", "a"], &[10, 10, 20, 20]),
            batch(&[1, 2, 4, 5], &["a", "b", "d", "e"], &[10, 20, 10, 30]),
            Step::Watermark(15),
            batch(&[1, 2, 3, 4], &["c", "a", "c", "a"], &[20, 20, 20, 30]),
            // Late for its instant: ranked on its own at the next watermark.
            batch(&[1, 4], &["z", "y"], &[10, 10]),
            batch(&[1, 5, 6, 3], &["b", "e", "f", "d"], &[30, 20, 20, 30]),
            Step::Watermark(25),
            batch(&[1, 1, 2, 6], &["a", "a2", "b", "g"], &[30, 30, 30, 30]),
            Step::Watermark(i64::MAX),
        ];
        check_restore(&factory, &[group], &steps).await;
    }

    #[tokio::test]
    async fn instant_joins_restore_at_any_parallelism() {
        let (left, right) = (side_schema("l"), side_schema("r"));
        let pair_schema = pair_schema_of("l", "r");
        let (left_keys, right_keys) = (vec![column("k_l", 0)], vec![column("k_r", 0)]);
        let steps = vec![
            Step::Data(0, side_batch("l", &[1, 2, 3], &[10, 10, 20])),
            Step::Data(1, side_batch("r", &[2, 3, 4], &[10, 20, 10])),
            Step::Data(1, side_batch("r", &[2, 5], &[10, 20])),
            Step::Watermark(15),
            Step::Data(0, side_batch("l", &[4, 5, 6, 7], &[20, 20, 30, 30])),
            // Late for its instant: joined on its own at the next watermark.
            Step::Data(1, side_batch("r", &[1], &[10])),
            Step::Data(1, side_batch("r", &[6, 8, 4], &[30, 30, 20])),
            Step::Watermark(25),
            Step::Data(0, side_batch("l", &[8, 9], &[30, 30])),
            Step::Watermark(i64::MAX),
        ];
        use JoinKind::*;
        for kind in [Inner, Left, Right, Full, LeftSemi, LeftAnti] {
            let schema = if matches!(kind, LeftSemi | LeftAnti) {
                Arc::new(Schema::new(vec![
                    left.field(0).clone(),
                    left.field(1).clone(),
                    timestamp_field(),
                ]))
            } else {
                pair_schema.clone()
            };
            let factory = InstantJoin {
                label: "join".into(),
                kind,
                left_schema: left.clone(),
                right_schema: right.clone(),
                left_keys: left_keys.clone(),
                right_keys: right_keys.clone(),
                nulls_equal: vec![false],
                filter: None,
                pair_schema: pair_schema.clone(),
                schema,
            };
            let keys = [left_keys.clone(), right_keys.clone()];
            check_restore(&factory, &keys, &steps).await;
        }
    }

    #[tokio::test]
    async fn instant_join_null_keys_match_only_under_is_not_distinct_from() {
        let (left, right) = (side_schema("l"), side_schema("r"));
        let pair_schema = pair_schema_of("l", "r");
        let keys = [vec![column("k_l", 0)], vec![column("k_r", 0)]];
        let steps = vec![
            Step::Data(0, null_key_batch("l", &[Some(1), None], 10)),
            Step::Data(1, null_key_batch("r", &[None, Some(1), Some(2)], 10)),
            Step::Watermark(i64::MAX),
        ];
        let names = |rows: Vec<String>| -> Vec<String> {
            let mut out: Vec<String> = rows
                .iter()
                .map(|r| {
                    let cells: Vec<&str> = r.split('|').collect();
                    format!("{}-{}", cells[1], cells[3])
                })
                .collect();
            out.sort();
            out
        };
        for (nulls_equal, want) in [
            (false, vec!["-r2", "-r_", "l1-r1", "l_-"]),
            (true, vec!["-r2", "l1-r1", "l_-r_"]),
        ] {
            let factory = InstantJoin {
                label: "join".into(),
                kind: JoinKind::Full,
                left_schema: left.clone(),
                right_schema: right.clone(),
                left_keys: keys[0].clone(),
                right_keys: keys[1].clone(),
                nulls_equal: vec![nulls_equal],
                filter: None,
                pair_schema: pair_schema.clone(),
                schema: pair_schema.clone(),
            };
            let mut ops = create(&factory, 1);
            let got = names(drive(&mut ops, &keys, &steps).await);
            assert_eq!(got, want, "nulls equal: {nulls_equal}");
        }
    }
}
