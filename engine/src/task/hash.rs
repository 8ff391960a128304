//! Key hashing: which subtask a row's key belongs to, in a shuffle and in a restore at another
//! parallelism alike.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, UInt32Array};
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::hash_utils::{RandomState, create_hashes};
use datafusion::error::DataFusionError;
use datafusion::physical_expr::PhysicalExpr;

/// Seeds of the shuffle hash: fixed, so that every subtask, and every run restored from a
/// checkpoint, sends a key to the same place.
const SHUFFLE_HASH: RandomState = RandomState::with_seed(0x6172_726f_796f_6421);

/// Splits `batch` into `n` parts by the hash of `keys`; `None` for an empty part.
pub fn partition_by_hash(
    batch: &RecordBatch,
    keys: &[Arc<dyn PhysicalExpr>],
    n: usize,
) -> Result<Vec<Option<RecordBatch>>, DataFusionError> {
    if n == 1 {
        return Ok(vec![Some(batch.clone())]);
    }
    let arrays: Vec<ArrayRef> = keys
        .iter()
        .map(|k| k.evaluate(batch)?.into_array(batch.num_rows()))
        .collect::<Result<_, _>>()?;
    let mut hashes = vec![0u64; batch.num_rows()];
    create_hashes(&arrays, &SHUFFLE_HASH, &mut hashes)?;
    let mut indices: Vec<Vec<u32>> = vec![Vec::new(); n];
    for (row, h) in hashes.iter().enumerate() {
        indices[(*h % n as u64) as usize].push(row as u32);
    }
    indices
        .into_iter()
        .map(|idx| {
            if idx.is_empty() {
                Ok(None)
            } else if idx.len() == batch.num_rows() {
                Ok(Some(batch.clone()))
            } else {
                Ok(Some(take_record_batch(batch, &UInt32Array::from(idx))?))
            }
        })
        .collect()
}
