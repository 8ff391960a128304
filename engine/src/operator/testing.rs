//! Helpers the tests of the aggregating operators share: inputs, plans of aggregates, and a
//! harness that runs an operator at several parallelisms with checkpoints in between.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, BooleanArray, Int64Array, TimestampNanosecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::physical_expr::PhysicalExpr;

use super::aggregate::AggregateSpec;
use crate::task::hash::partition_by_hash;
use crate::task::{
    Collector, Message, Operator, OperatorFactory, RestoredState, TaskInfo, TaskState,
};
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

/// What one subtask of `factory` sends for `steps`, to the end of its input.
pub(crate) async fn run_one(factory: &dyn OperatorFactory, steps: &[Step]) -> Vec<RecordBatch> {
    let mut tasks = vec![Task::new(factory, 0, 1)];
    feed(&mut tasks, &[], steps).await;
    close(&mut tasks).await;
    tasks.remove(0).sent
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
            let context = format!("checkpoint after {cut} steps, parallelism {before} -> {after}");
            let mut old: Vec<Task> = (0..before).map(|s| Task::new(factory, s, before)).collect();
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
