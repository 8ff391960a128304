//! The windowless inner join: both inputs are kept in state, keyed by the join key, for the
//! state TTL (`SET updating_ttl = interval '...'`, in event time behind the watermark). A row
//! arriving on one side is joined with every kept row of the other side with the same key, and
//! the joined rows are emitted at once with the later of the two event times; then the row is
//! kept. Each row is evicted once its own event time is older than the watermark less the TTL,
//! so what is kept does not depend on how rows were batched (nor on the parallelism). Inner
//! joins of append-only inputs never retract, so the output is append-only.
//!
//! Checkpoints hold the kept rows of each side; a restore keeps the rows whose join key hashes
//! to the subtask.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, TimestampNanosecondArray, UInt32Array,
};
use datafusion::arrow::compute::{filter_record_batch, interleave};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::arrow::row::{OwnedRow, RowConverter, Rows, SortField};
use datafusion::error::{DataFusionError, Result};
use datafusion::physical_expr::PhysicalExpr;

use crate::operator::unmatchable_key;
use crate::task::{Collector, Message, TaskError, Watermark};
use crate::task::{Operator, OperatorFactory, TaskInfo};
use crate::task::{RestoredState, StateError, TaskState};

/// The state tables of the kept rows, by input.
const TABLES: [&str; 2] = ["left", "right"];

/// The windowless inner join (see the module).
#[derive(Clone)]
pub struct TtlJoin {
    pub label: String,
    pub left_keys: Vec<Arc<dyn PhysicalExpr>>,
    pub right_keys: Vec<Arc<dyn PhysicalExpr>>,
    /// Per key: whether a null matches a null (`IS NOT DISTINCT FROM`) or nothing (`=`).
    pub nulls_equal: Vec<bool>,
    pub key_types: Vec<datafusion::arrow::datatypes::DataType>,
    /// On the joined visible columns.
    pub filter: Option<Arc<dyn PhysicalExpr>>,
    /// State TTL in nanoseconds of event time.
    pub ttl: i64,
    /// Left columns, right columns, event time.
    pub schema: SchemaRef,
}

/// What an index key costs beside its bytes and its map slot: two allocations (the row's
/// bytes, its list) with the allocator's overhead, and the list's first four entries.
const INDEX_KEY_OVERHEAD: usize = 2 * 16 + 4 * std::mem::size_of::<(u32, u32)>();

/// A slot of the index: its entry and the map's control byte.
const INDEX_SLOT: usize = std::mem::size_of::<(OwnedRow, Vec<(u32, u32)>)>() + 1;

/// The kept rows of one side.
#[derive(Default)]
struct Side {
    batches: Vec<RecordBatch>,
    /// Oldest event time per batch: eviction looks only at batches it may touch.
    oldest: Vec<i64>,
    index: HashMap<OwnedRow, Vec<(u32, u32)>>,
    /// The bytes the batches and the index's keys and lists take, as well as can be told
    /// without walking them; with the index's slots ([`Side::bytes`]), the side's state size.
    bytes: usize,
}

impl Side {
    /// What the side holds in memory (an estimate that never walks it).
    fn bytes(&self) -> usize {
        self.bytes + self.index.capacity() * INDEX_SLOT
    }

    /// Keeps `batch`, indexing its rows by their keys (`keys` as `key_rows`); rows with a null
    /// in a key compared with `=` never match and are not indexed.
    fn keep(
        &mut self,
        batch: RecordBatch,
        keys: &[ArrayRef],
        key_rows: &Rows,
        nulls_equal: &[bool],
    ) {
        if batch.num_rows() == 0 {
            return;
        }
        let b = self.batches.len() as u32;
        for i in 0..batch.num_rows() {
            if !unmatchable_key(keys, nulls_equal, i) {
                let key = key_rows.row(i);
                // A new key holds its bytes and a list; every row an entry in a list.
                let entries = self.index.entry(key.owned()).or_insert_with(|| {
                    self.bytes += key.as_ref().len() + INDEX_KEY_OVERHEAD;
                    Vec::new()
                });
                // Past its first four, a list doubles: count its capacity's growth.
                let before = entries.capacity().max(4);
                entries.push((b, i as u32));
                let after = entries.capacity().max(4);
                self.bytes += (after - before) * std::mem::size_of::<(u32, u32)>();
            }
        }
        self.bytes += batch.get_array_memory_size() + std::mem::size_of::<i64>();
        self.oldest
            .push(datafusion::arrow::compute::min(times(&batch)).unwrap_or(i64::MIN));
        self.batches.push(batch);
    }
}

struct TtlJoinOp {
    plan: TtlJoin,
    info: TaskInfo,
    converter: RowConverter,
    sides: [Side; 2],
}

impl OperatorFactory for TtlJoin {
    fn create(&self, info: &TaskInfo) -> Result<Box<dyn Operator>, TaskError> {
        let converter = RowConverter::new(
            self.key_types
                .iter()
                .map(|t| SortField::new(t.clone()))
                .collect(),
        )
        .map_err(|e| TaskError::setup(&self.label)(e.into()))?;
        Ok(Box::new(TtlJoinOp {
            plan: self.clone(),
            info: info.clone(),
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
    /// The join-key expressions of `input` (0 left, 1 right).
    fn key_exprs(&self, input: usize) -> &[Arc<dyn PhysicalExpr>] {
        if input == 0 {
            &self.plan.left_keys
        } else {
            &self.plan.right_keys
        }
    }

    /// The join keys of `batch` from `input`, as columns and as comparable rows.
    fn keys(&self, batch: &RecordBatch, input: usize) -> Result<(Vec<ArrayRef>, Rows)> {
        let keys: Vec<ArrayRef> = self
            .key_exprs(input)
            .iter()
            .map(|k| k.evaluate(batch)?.into_array(batch.num_rows()))
            .collect::<Result<_>>()?;
        let key_rows = self.converter.convert_columns(&keys)?;
        Ok((keys, key_rows))
    }

    /// Joins `batch` from `input` (0 left, 1 right) with the other side, then keeps it.
    fn process(&mut self, batch: RecordBatch, input: usize) -> Result<Option<RecordBatch>> {
        let rows = batch.num_rows();
        let (keys, key_rows) = self.keys(&batch, input)?;
        let null_key = |i: usize| unmatchable_key(&keys, &self.plan.nulls_equal, i);
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
        self.sides[input].keep(batch, &keys, &key_rows, &self.plan.nulls_equal);
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

    /// Drops kept rows older than `watermark - ttl`; a side with such rows is re-indexed.
    fn evict(&mut self, watermark: i64) -> Result<()> {
        let horizon = watermark.saturating_sub(self.plan.ttl);
        for input in 0..2 {
            if !self.sides[input].oldest.iter().any(|&t| t < horizon) {
                continue;
            }
            let old = std::mem::take(&mut self.sides[input]);
            for (batch, oldest) in old.batches.into_iter().zip(old.oldest) {
                let batch = if oldest < horizon {
                    let keep = BooleanArray::from_iter(
                        times(&batch).values().iter().map(|&t| Some(t >= horizon)),
                    );
                    filter_record_batch(&batch, &keep)?
                } else {
                    batch
                };
                let (keys, key_rows) = self.keys(&batch, input)?;
                self.sides[input].keep(batch, &keys, &key_rows, &self.plan.nulls_equal);
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Operator for TtlJoinOp {
    /// The kept rows of both sides and their indexes.
    fn state_bytes(&self) -> usize {
        self.sides.iter().map(Side::bytes).sum()
    }

    async fn process_batch(
        &mut self,
        batch: RecordBatch,
        input: usize,
        out: &mut Collector,
    ) -> Result<(), TaskError> {
        let joined = self
            .process(batch, input)
            .map_err(TaskError::expression(&self.plan.label))?;
        match joined {
            Some(b) => out.collect(b).await,
            None => Ok(()),
        }
    }

    async fn on_watermark(&mut self, watermark: i64, out: &mut Collector) -> Result<(), TaskError> {
        self.evict(watermark)
            .map_err(TaskError::expression(&self.plan.label))?;
        out.broadcast(Message::Watermark(Watermark::EventTime(watermark)))
            .await
    }

    /// The kept rows of each side. The watermark needs no state of its own: the runtime
    /// restores it.
    async fn snapshot(&mut self) -> Result<TaskState, TaskError> {
        let mut state = TaskState::new();
        for (side, table) in self.sides.iter().zip(TABLES) {
            state.put(table, side.batches.iter().cloned());
        }
        Ok(state)
    }

    /// Keeps the rows whose join key hashes to this subtask.
    fn restore(&mut self, state: &RestoredState) -> Result<(), TaskError> {
        for (input, table) in TABLES.into_iter().enumerate() {
            for batch in state.owned_rows(table, self.key_exprs(input), &self.info)? {
                if !batch
                    .schema()
                    .field(batch.num_columns() - 1)
                    .data_type()
                    .equals_datatype(&DataType::Timestamp(
                        datafusion::arrow::datatypes::TimeUnit::Nanosecond,
                        None,
                    ))
                {
                    return Err(StateError::Layout {
                        table: table.to_string(),
                    }
                    .into());
                }
                let (keys, key_rows) = self
                    .keys(&batch, input)
                    .map_err(StateError::operator(&self.plan.label, table))?;
                self.sides[input].keep(batch, &keys, &key_rows, &self.plan.nulls_equal);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::instant::tests::{
        Step, check_restore, column, create, drive, null_key_batch, pair_schema_of, side_batch,
    };

    #[tokio::test]
    async fn ttl_join_restores_at_any_parallelism() {
        let schema = pair_schema_of("l", "r");
        let (left_keys, right_keys) = (vec![column("k_l", 0)], vec![column("k_r", 0)]);
        let factory = TtlJoin {
            label: "join".into(),
            left_keys: left_keys.clone(),
            right_keys: right_keys.clone(),
            nulls_equal: vec![false],
            key_types: vec![DataType::Int64],
            filter: None,
            ttl: 10,
            schema,
        };
        // A kept row lives while its own event time is within the TTL of the watermark, however
        // the rows were batched (l5 at 1 goes before l5 at 12).
        let steps = vec![
            Step::Data(0, side_batch("l", &[1, 2, 3], &[8, 8, 8])),
            // Keys of one batch at different times: a shuffle splits it, eviction must not care.
            Step::Data(0, side_batch("l", &[5, 5, 6, 7], &[1, 12, 2, 12])),
            Step::Data(1, side_batch("r", &[1, 5], &[3, 3])),
            Step::Watermark(5),
            Step::Data(1, side_batch("r", &[2, 6, 9], &[14, 14, 14])),
            // Evicts l5 at 1, l6 at 2, r1 and r5.
            Step::Watermark(15),
            Step::Data(0, side_batch("l", &[1], &[16])),
            Step::Data(1, side_batch("r", &[3, 7], &[17, 17])),
            // Evicts l1, l2, l3.
            Step::Watermark(20),
            Step::Data(1, side_batch("r", &[3, 5, 1], &[21, 21, 21])),
            Step::Data(0, side_batch("l", &[6, 2, 9], &[22, 22, 22])),
            // Evicts l5 and l7 at 12, and r2, r6, r9.
            Step::Watermark(25),
            Step::Data(0, side_batch("l", &[5, 6, 9], &[26, 26, 26])),
            Step::Data(1, side_batch("r", &[7], &[27])),
        ];
        check_restore(&factory, &[left_keys, right_keys], &steps).await;
    }

    #[tokio::test]
    async fn ttl_join_null_keys_match_only_under_is_not_distinct_from() {
        let schema = pair_schema_of("l", "r");
        let keys = [vec![column("k_l", 0)], vec![column("k_r", 0)]];
        let steps = vec![
            Step::Data(0, null_key_batch("l", &[Some(1), None, None], 1)),
            Step::Data(1, null_key_batch("r", &[None, Some(1)], 2)),
            Step::Data(0, null_key_batch("l", &[None], 3)),
        ];
        for (nulls_equal, want) in [(false, 1), (true, 4)] {
            let factory = TtlJoin {
                label: "join".into(),
                left_keys: keys[0].clone(),
                right_keys: keys[1].clone(),
                nulls_equal: vec![nulls_equal],
                key_types: vec![DataType::Int64],
                filter: None,
                ttl: 100,
                schema: schema.clone(),
            };
            let mut ops = create(&factory, 1);
            let got = drive(&mut ops, &keys, &steps).await;
            assert_eq!(got.len(), want, "nulls equal: {nulls_equal}: {got:?}");
            let null_pairs = got.iter().filter(|r| r.contains("|r_|")).count();
            assert_eq!(null_pairs, want - 1, "{got:?}");
        }
    }
}
