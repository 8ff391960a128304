//! Operator and source state as it travels through checkpoints.
//!
//! A subtask snapshots its state as a [`TaskState`]: named tables of Arrow record batches (a
//! window's open panes, a join's buffered rows) and small JSON documents (a source's offsets).
//! The runtime encodes every table as one Arrow IPC file of the checkpoint. On restore, every
//! new subtask of a node sees the state of *all* old subtasks of that node
//! ([`RestoredState`]), because the parallelism may have changed: a keyed operator keeps the
//! rows whose key hashes to it ([`RestoredState::owned_rows`]), a source re-splits its offsets.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::ipc::reader::FileReader;
use datafusion::arrow::ipc::writer::FileWriter;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::physical_expr::PhysicalExpr;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::context::TaskInfo;
use super::error::StateError;
use super::hash::partition_by_hash;

/// One subtask's state at a checkpoint: tables of batches by name.
#[derive(Debug, Default, Clone)]
pub struct TaskState {
    tables: BTreeMap<String, Vec<RecordBatch>>,
}

impl TaskState {
    pub fn new() -> Self {
        TaskState::default()
    }

    /// Adds batches to table `name` (empty batches are dropped).
    pub fn put(&mut self, name: &str, batches: impl IntoIterator<Item = RecordBatch>) {
        let table = self.tables.entry(name.to_string()).or_default();
        table.extend(batches.into_iter().filter(|b| b.num_rows() > 0));
    }

    /// Stores `value` as a one-row JSON table `name`.
    pub fn put_json(&mut self, name: &str, value: &impl Serialize) -> Result<(), StateError> {
        let text = serde_json::to_string(value).map_err(|source| StateError::Json {
            table: name.to_string(),
            source,
        })?;
        let schema = Arc::new(Schema::new(vec![Field::new("json", DataType::Utf8, false)]));
        let column: ArrayRef = Arc::new(StringArray::from(vec![text]));
        let batch =
            RecordBatch::try_new(schema, vec![column]).map_err(|source| StateError::Ipc {
                table: name.to_string(),
                source,
            })?;
        self.put(name, [batch]);
        Ok(())
    }

    /// The batches of table `name` (none when absent).
    pub fn table(&self, name: &str) -> &[RecordBatch] {
        self.tables.get(name).map(Vec::as_slice).unwrap_or_default()
    }

    /// The JSON documents of table `name`, one per row.
    pub fn json<T: DeserializeOwned>(&self, name: &str) -> Result<Vec<T>, StateError> {
        let mut out = Vec::new();
        for batch in self.table(name) {
            let column = batch
                .column(0)
                .as_any()
                .downcast_ref::<StringArray>()
                .ok_or_else(|| StateError::Layout {
                    table: name.to_string(),
                })?;
            for text in column.iter().flatten() {
                out.push(
                    serde_json::from_str(text).map_err(|source| StateError::Json {
                        table: name.to_string(),
                        source,
                    })?,
                );
            }
        }
        Ok(out)
    }

    pub fn is_empty(&self) -> bool {
        self.tables.values().all(Vec::is_empty)
    }

    /// Every table with at least one row, as (name, Arrow IPC file bytes).
    pub fn encode(&self) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        let mut files = Vec::new();
        for (name, batches) in &self.tables {
            let Some(first) = batches.first() else {
                continue;
            };
            let mut buf = Vec::new();
            let encoded = (|| {
                let mut writer = FileWriter::try_new(&mut buf, &first.schema())?;
                for b in batches {
                    writer.write(b)?;
                }
                writer.finish()
            })();
            encoded.map_err(|source| StateError::Ipc {
                table: name.clone(),
                source,
            })?;
            files.push((name.clone(), buf));
        }
        Ok(files)
    }

    /// Adds the table `name` from Arrow IPC file bytes made by [`TaskState::encode`].
    pub fn decode_into(&mut self, name: &str, bytes: Vec<u8>) -> Result<(), StateError> {
        let fail = |source| StateError::Ipc {
            table: name.to_string(),
            source,
        };
        let reader = FileReader::try_new(Cursor::new(bytes), None).map_err(fail)?;
        let batches = reader.collect::<Result<Vec<_>, _>>().map_err(fail)?;
        self.put(name, batches);
        Ok(())
    }
}

/// The state a new subtask starts from: what every old subtask of its node had.
#[derive(Debug, Clone, Default)]
pub struct RestoredState {
    /// The node's parallelism when the checkpoint was taken.
    pub parallelism: usize,
    /// Per old subtask, its state.
    pub subtasks: Vec<TaskState>,
    /// The lowest watermark of the old subtasks (None: none had one).
    pub watermark: Option<i64>,
    /// The epoch of the checkpoint.
    pub epoch: u64,
}

impl RestoredState {
    /// The batches of table `name` over every old subtask.
    pub fn all(&self, name: &str) -> Vec<RecordBatch> {
        self.subtasks
            .iter()
            .flat_map(|s| s.table(name).iter().cloned())
            .collect()
    }

    /// The rows of table `name` this subtask owns after a shuffle on `keys` (expressions over
    /// the table's columns): the same rows a hash shuffle would send it. With no keys, subtask
    /// 0 owns everything.
    pub fn owned_rows(
        &self,
        name: &str,
        keys: &[Arc<dyn PhysicalExpr>],
        info: &TaskInfo,
    ) -> Result<Vec<RecordBatch>, StateError> {
        let all = self.all(name);
        if info.parallelism <= 1 {
            return Ok(all);
        }
        if keys.is_empty() {
            return Ok(if info.subtask == 0 { all } else { vec![] });
        }
        let mut out = Vec::new();
        for batch in all {
            let parts = partition_by_hash(&batch, keys, info.parallelism).map_err(|source| {
                StateError::Repartition {
                    table: name.to_string(),
                    source,
                }
            })?;
            if let Some(Some(mine)) = parts.into_iter().nth(info.subtask) {
                out.push(mine);
            }
        }
        Ok(out)
    }

    /// The JSON documents of table `name` per old subtask.
    pub fn json<T: DeserializeOwned>(&self, name: &str) -> Result<Vec<Vec<T>>, StateError> {
        self.subtasks.iter().map(|s| s.json(name)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::UInt64Array;

    #[test]
    fn tables_round_trip_through_ipc() {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::UInt64, false)]));
        let batch = RecordBatch::try_new(
            schema,
            vec![Arc::new(UInt64Array::from(vec![1u64, 2, 3])) as ArrayRef],
        )
        .unwrap();
        let mut state = TaskState::new();
        state.put("rows", [batch.clone(), batch.slice(0, 0)]);
        state.put_json("offsets", &vec![7u64, 9]).unwrap();
        let files = state.encode().unwrap();
        assert_eq!(files.len(), 2);
        let mut back = TaskState::new();
        for (name, bytes) in files {
            back.decode_into(&name, bytes).unwrap();
        }
        assert_eq!(back.table("rows"), &[batch]);
        assert_eq!(back.json::<Vec<u64>>("offsets").unwrap(), vec![vec![7, 9]]);
    }
}
