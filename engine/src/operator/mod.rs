//! Streaming operators: the [`crate::task::Operator`]s between sources and sinks (stateless
//! transforms, window and updating aggregates, joins, ranking window functions).
//!
//! An operator never blocks the runtime and never works row-at-a-time on the hot path: it
//! evaluates DataFusion physical expressions on whole batches.

pub mod aggregate;
pub mod instant;
pub mod join;
#[cfg(test)]
mod testing;
pub mod transform;
pub mod updating;
pub mod window;

pub use transform::Transform;

use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::physical_expr::PhysicalExpr;
use std::sync::Arc;

/// Evaluates `exprs` over `batch`, each to a full column.
pub fn evaluate_all(
    exprs: &[Arc<dyn PhysicalExpr>],
    batch: &RecordBatch,
) -> Result<Vec<ArrayRef>, DataFusionError> {
    exprs
        .iter()
        .map(|e| e.evaluate(batch)?.into_array(batch.num_rows()))
        .collect()
}

/// The group-key columns of `batch`: the keys, or one constant column when there are none
/// (a global aggregate), since group tables need at least one column.
pub fn group_keys(
    keys: &[Arc<dyn PhysicalExpr>],
    batch: &RecordBatch,
) -> Result<Vec<ArrayRef>, DataFusionError> {
    if keys.is_empty() {
        let zeros = datafusion::arrow::array::UInt8Array::from(vec![0u8; batch.num_rows()]);
        return Ok(vec![Arc::new(zeros)]);
    }
    evaluate_all(keys, batch)
}

/// Whether row `row` of a join input matches no row of the other side: one of its `keys` is
/// null where that key compares with `=` (`nulls_equal[i]` false). A key of `IS NOT DISTINCT
/// FROM` (true) matches a null with a null, as the row encoding of the keys does.
pub fn unmatchable_key(keys: &[ArrayRef], nulls_equal: &[bool], row: usize) -> bool {
    debug_assert_eq!(keys.len(), nulls_equal.len());
    keys.iter()
        .zip(nulls_equal)
        .any(|(k, equal)| !*equal && k.is_null(row))
}
