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
//! The operators: [`panes`] for TUMBLE, HOP and instant windows, [`session`] for SESSION
//! windows; both built from one [`WindowAggregate`] plan.
//!
//! Checkpoints: a window aggregate snapshots its open panes as one table of rows (the group's
//! key values, the pane's end, every accumulator's intermediate state), a session operator its
//! buffered input rows. Both are re-partitioned on restore by their key columns, exactly as the
//! shuffle that feeds the operator partitions its input.

mod panes;
mod session;

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, StructArray, TimestampNanosecondArray, UInt32Array};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::{DataType, Field, Fields, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::{DataFusionError, Result};
use datafusion::physical_expr::PhysicalExpr;

use super::aggregate::AggregateSpec;
use crate::task::{Operator, OperatorFactory, TaskError, TaskInfo};

/// Which windows a row falls in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    /// `[start, start + width)`, aligned to the epoch.
    Tumble { width: i64 },
    /// Every window of `width` starting at a multiple of `slide` that holds the row.
    Hop { slide: i64, width: i64 },
    /// Rows grouped by their event time: the input is itself windowed (each event time is
    /// the end of a window, less 1 ns), and either its window column is one of the keys or
    /// the GROUP BY calls the input's window function again, whose column is then the
    /// window `[end - width, end)`.
    Instant { width: i64 },
    /// Per key, rows closer than `gap` to each other form one session
    /// `[first, last + gap)`.
    Session { gap: i64 },
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
            return Ok(Box::new(session::SessionOp::new(self, info, gap)));
        }
        Ok(Box::new(panes::WindowAggregateOp::new(self, info)?))
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

/// The event times of `batch` (its last column).
pub(super) fn timestamps(batch: &RecordBatch) -> &[i64] {
    batch
        .column(batch.num_columns() - 1)
        .as_any()
        .downcast_ref::<TimestampNanosecondArray>()
        .expect("the event-time column is last")
        .values()
}

/// Which rows of a batch belong to one window.
pub(super) enum Rows {
    All,
    /// A contiguous run: sliced without copying.
    Range(usize, usize),
    Indices(UInt32Array),
}

/// The rows `rows` of each of `arrays`.
pub(super) fn take_all(arrays: &[ArrayRef], rows: &Rows) -> Result<Vec<ArrayRef>> {
    match rows {
        Rows::All => Ok(arrays.to_vec()),
        Rows::Range(offset, len) => Ok(arrays.iter().map(|a| a.slice(*offset, *len)).collect()),
        Rows::Indices(idx) => arrays
            .iter()
            .map(|a| take(a.as_ref(), idx, None).map_err(DataFusionError::from))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::Schema;
    use datafusion::physical_expr::expressions::col;

    use super::*;
    use crate::operator::aggregate::key_schema;
    use crate::operator::testing::{
        Step, aggregate_fields, aggregates, check_checkpoints, input_schema, rows,
    };
    use crate::task::timestamp_type;

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

    /// A hop row whose first window has closed is late in every window, the open ones too
    /// (Arroyo drops a row whose slide is before the watermark's), and counted once.
    #[tokio::test]
    async fn a_late_hop_row_is_dropped_from_every_window() {
        let hop = WindowKind::Hop {
            slide: 5,
            width: 10,
        };
        let (plan, _, _) = window_plan(hop, true, None);
        let input = input_schema(false);
        let r = |rs: &[(i64, i64)]| {
            let rs: Vec<_> = rs.iter().map(|&(v, t)| ("a", v, t, false)).collect();
            rows(&input, &rs)
        };
        let steps = vec![
            r(&[(1, 1)]),
            Step::Watermark(6),
            // 4 falls in [0, 5), closed, and [0, 10), open: dropped from both. 7 is on time.
            r(&[(4, 4), (7, 7)]),
            Step::Watermark(100),
        ];
        let sent = crate::operator::testing::run_one(&plan, &steps).await;
        let sums: Vec<(i64, i64)> = sent
            .iter()
            .flat_map(|b| {
                let sum = b
                    .column(0)
                    .as_primitive::<datafusion::arrow::datatypes::Int64Type>();
                let end = b
                    .column(b.num_columns() - 1)
                    .as_primitive::<datafusion::arrow::datatypes::TimestampNanosecondType>();
                (0..b.num_rows())
                    .map(|i| (end.value(i) + 1, sum.value(i)))
                    .collect::<Vec<_>>()
            })
            .collect();
        // Window ends 5, 10, 15: 1; 1 + 7; 7.
        assert_eq!(sums, [(5, 1), (10, 8), (15, 7)]);
    }

    #[tokio::test]
    async fn global_windows_restore_on_subtask_zero() {
        let (plan, keys, steps) = window_plan(WindowKind::Tumble { width: 10 }, true, Some(0));
        check_checkpoints(&plan, &keys, &steps, false).await;
    }

    #[tokio::test]
    async fn instant_windows_restore_from_checkpoints() {
        let (plan, keys, steps) = window_plan(WindowKind::Instant { width: 1 }, false, None);
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
