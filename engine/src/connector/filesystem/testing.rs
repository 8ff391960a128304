//! Helpers the tests of the `filesystem` modules share.

use std::sync::Arc;

use datafusion::arrow::array::{Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};

use crate::connector::Options;
use crate::task::{RestoredState, TaskState};

pub(super) fn options(entries: &[(&str, &str)]) -> Options {
    Options::new(
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

pub(super) fn rows(from: i64, n: i64) -> RecordBatch {
    rows_with(from, n, |i| format!("row number {i}"))
}

/// Rows `from..from + n` of columns `n` and `s = text(n)`.
pub(super) fn rows_with(from: i64, n: i64, text: impl Fn(i64) -> String) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("n", DataType::Int64, false),
        Field::new("s", DataType::Utf8, true),
    ]));
    let n: Vec<i64> = (from..from + n).collect();
    let s: Vec<String> = n.iter().map(|i| text(*i)).collect();
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(n)),
            Arc::new(StringArray::from(s)),
        ],
    )
    .unwrap()
}

/// The visible files in `dir` (not the staging directory).
pub(super) fn names(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    names
}

pub(super) fn restored(states: Vec<TaskState>) -> RestoredState {
    RestoredState {
        parallelism: states.len(),
        subtasks: states,
        watermark: None,
        epoch: 1,
    }
}
