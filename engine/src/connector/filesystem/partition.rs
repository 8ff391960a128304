//! Partitioned output of the filesystem sink (Arroyo's `partitioning.fields` /
//! `partition_fields` and `partitioning.time_pattern` / `time_partition_pattern`).
//!
//! A row's partition is a relative directory: the row's event time formatted with the time
//! pattern (strftime, as DataFusion's `to_char`; its `/` make directories), then one
//! `field=value` directory per partition field, in the order given (a value as text, a null
//! as the empty text), as Arroyo builds it. Every partition has its own open file; the columns
//! stay in the rows written. A value's own `/` stays inside its directory name (encoded by
//! the object-store path), never making another level.

use std::collections::HashMap;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, TimestampNanosecondArray, UInt32Array};
use datafusion::arrow::compute::{cast, take_record_batch};
use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use object_store::path::{Path, PathPart};

use super::{invalid, take_either};
use crate::connector::{ConnectorError, Options, RunError};

/// The option key under which the SQL layer passes the columns of a CREATE TABLE's
/// `PARTITIONED BY (a, b)` (comma-separated); no user can write it (it has a space).
pub const PARTITIONED_BY: &str = "PARTITIONED BY";

/// The partitioning options of a sink table, before its input's columns are known.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Partitioning {
    /// Columns whose values make `name=value` directories.
    pub fields: Vec<String>,
    /// strftime pattern of the event time.
    pub time_pattern: Option<String>,
}

impl Partitioning {
    /// Takes the options in both of Arroyo's spellings, and the columns of `PARTITIONED BY
    /// (...)` ([`PARTITIONED_BY`]), the same as `partitioning.fields`.
    pub fn from_options(options: &mut Options) -> Result<Partitioning, ConnectorError> {
        let declared: Vec<String> = options
            .take(PARTITIONED_BY)
            .map(|t| t.split(',').map(|c| c.trim().to_string()).collect())
            .unwrap_or_default();
        let listed = take_either(
            options,
            "partitioning.fields",
            "partition_fields",
            |o, k| Ok(o.take(k).map(|v| (k.to_string(), v))),
        )?;
        let mut fields: Vec<String> = Vec::new();
        if let Some((key, text)) = listed {
            if !declared.is_empty() {
                return Err(ConnectorError::Usage(format!(
                    "give either PARTITIONED BY or '{key}', not both"
                )));
            }
            for name in text.split(',').map(str::trim) {
                if name.is_empty() {
                    return Err(invalid(
                        &key,
                        &text,
                        "expected column names separated by ','",
                    ));
                }
                fields.push(name.to_string());
            }
        } else {
            fields = declared;
        }
        if let Some(dup) = (1..fields.len()).find(|&i| fields[..i].contains(&fields[i])) {
            return Err(ConnectorError::Usage(format!(
                "partition field '{}' is given twice",
                fields[dup]
            )));
        }
        let time_pattern = take_either(
            options,
            "partitioning.time_pattern",
            "time_partition_pattern",
            |o, k| Ok(o.take(k).map(|v| (k.to_string(), v))),
        )?;
        let time_pattern = match time_pattern {
            None => None,
            Some((key, pattern)) => {
                check_pattern(&pattern)
                    .map_err(|reason| invalid(&key, &pattern, reason.to_string()))?;
                Some(pattern)
            }
        };
        Ok(Partitioning {
            fields,
            time_pattern,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty() && self.time_pattern.is_none()
    }

    /// The partitioner for rows of `input` (the visible columns), or why its fields are not
    /// columns of it.
    pub fn resolve(&self, table: &str, input: &Schema) -> Result<Partitioner, ConnectorError> {
        let columns = self
            .fields
            .iter()
            .map(|f| {
                input.index_of(f).map_err(|_| {
                    let names: Vec<&str> =
                        input.fields().iter().map(|c| c.name().as_str()).collect();
                    ConnectorError::Usage(format!(
                        "'{table}' is partitioned by '{f}', which is not one of the columns written ({})",
                        names.join(", ")
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        for (&i, name) in columns.iter().zip(&self.fields) {
            let t = input.field(i).data_type();
            if t.is_nested() || matches!(t, DataType::Binary | DataType::LargeBinary) {
                return Err(ConnectorError::Usage(format!(
                    "'{table}' is partitioned by '{name}', whose type {t} has no text form for a directory name"
                )));
            }
        }
        Ok(Partitioner {
            columns,
            names: self.fields.clone(),
            time_pattern: self.time_pattern.clone(),
        })
    }
}

/// Formats one event time with `pattern`: the error is Arrow's (chrono's, for an unknown
/// specifier).
fn format_time(pattern: &str, column: &ArrayRef) -> Result<Vec<String>, ArrowError> {
    let options = FormatOptions::new()
        .with_display_error(false)
        .with_timestamp_format(Some(pattern));
    let formatter = ArrayFormatter::try_new(column.as_ref(), &options)?;
    (0..column.len())
        .map(|i| formatter.value(i).try_to_string())
        .collect()
}

/// Why a `time_partition_pattern` is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
enum BadPattern {
    #[error("must not be empty")]
    Empty,
    #[error("not a valid strftime pattern (for example '%Y/%m/%d/%H')")]
    NotStrftime,
}

fn check_pattern(pattern: &str) -> Result<(), BadPattern> {
    if pattern.trim().is_empty() {
        return Err(BadPattern::Empty);
    }
    let sample: ArrayRef = std::sync::Arc::new(TimestampNanosecondArray::from(vec![0]));
    format_time(pattern, &sample)
        .map(|_| ())
        .map_err(|_| BadPattern::NotStrftime)
}

/// Splits batches by partition.
#[derive(Debug, Clone)]
pub struct Partitioner {
    /// Indexes of the partition fields in the visible columns.
    columns: Vec<usize>,
    names: Vec<String>,
    time_pattern: Option<String>,
}

impl Partitioner {
    /// The rows of `batch` (visible columns, then the event time as its last column) by
    /// partition directory (relative, its segments), in the order each partition first
    /// appears; the event time is not in the batches returned.
    pub fn split(&self, batch: &RecordBatch) -> Result<Vec<(Vec<String>, RecordBatch)>, RunError> {
        let rows = batch.num_rows();
        let time_column = batch.num_columns() - 1;
        let times = match &self.time_pattern {
            Some(pattern) => {
                let time = batch.column(time_column);
                Some(format_time(pattern, time).map_err(|e| {
                    RunError::Encode(ArrowError::ComputeError(format!(
                        "formatting the event time with time_partition_pattern '{pattern}': {e}"
                    )))
                })?)
            }
            None => None,
        };
        let values = self
            .columns
            .iter()
            .map(|&i| cast(batch.column(i), &DataType::Utf8).map_err(RunError::Encode))
            .collect::<Result<Vec<_>, _>>()?;
        let mut order: Vec<Vec<String>> = Vec::new();
        let mut rows_of: HashMap<Vec<String>, Vec<u32>> = HashMap::new();
        for row in 0..rows {
            let mut segments = Vec::new();
            if let Some(times) = &times {
                segments.extend(
                    times[row]
                        .split('/')
                        .filter(|s| !s.is_empty())
                        .map(str::to_string),
                );
            }
            for (name, value) in self.names.iter().zip(&values) {
                let text = value.as_string::<i32>();
                let value = if text.is_null(row) {
                    ""
                } else {
                    text.value(row)
                };
                segments.push(format!("{name}={value}"));
            }
            let entry = rows_of.entry(segments.clone()).or_insert_with(|| {
                order.push(segments);
                Vec::new()
            });
            entry.push(row as u32);
        }
        let visible: Vec<usize> = (0..time_column).collect();
        let batch = batch.project(&visible).map_err(RunError::Encode)?;
        order
            .into_iter()
            .map(|segments| {
                let indices = UInt32Array::from(rows_of.remove(&segments).unwrap_or_default());
                let part = take_record_batch(&batch, &indices).map_err(RunError::Encode)?;
                Ok((segments, part))
            })
            .collect()
    }
}

/// `prefix` with the partition directory `segments` below it.
pub fn under(prefix: &Path, segments: &[String]) -> Path {
    segments
        .iter()
        .fold(prefix.clone(), |p, s| p.join(PathPart::from(s.as_str())))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{Field, TimeUnit};

    use super::*;
    use crate::connector::filesystem::testing::options;

    fn batch() -> RecordBatch {
        // 2023-11-14T22:13:20Z and one hour later.
        let t0 = 1_700_000_000_000_000_000i64;
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
            Field::new(
                "_timestamp",
                DataType::Timestamp(TimeUnit::Nanosecond, None),
                false,
            ),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec![
                    Some("a"),
                    None,
                    Some("a/b"),
                    Some("a"),
                ])),
                Arc::new(Int64Array::from(vec![1, 2, 3, 4])),
                Arc::new(TimestampNanosecondArray::from(vec![
                    t0,
                    t0,
                    t0 + 3_600_000_000_000,
                    t0 + 3_600_000_000_000,
                ])),
            ],
        )
        .unwrap()
    }

    #[test]
    fn rows_go_to_the_directory_of_their_time_and_fields() {
        let mut o = options(&[
            ("partition_fields", "k"),
            ("time_partition_pattern", "%Y/%m/%d/%H"),
        ]);
        let p = Partitioning::from_options(&mut o).unwrap();
        let schema = batch().schema();
        let parts = p.resolve("t", &schema).unwrap().split(&batch()).unwrap();
        let dirs: Vec<(String, usize)> = parts
            .iter()
            .map(|(s, b)| (s.join("/"), b.num_rows()))
            .collect();
        assert_eq!(
            dirs,
            vec![
                ("2023/11/14/22/k=a".to_string(), 1),
                ("2023/11/14/22/k=".to_string(), 1),
                ("2023/11/14/23/k=a/b".to_string(), 1),
                ("2023/11/14/23/k=a".to_string(), 1),
            ]
        );
        assert_eq!(parts[0].1.num_columns(), 2);
        // A value's `/` stays in its directory's name.
        let path = under(&Path::from("out"), &parts[2].0);
        assert_eq!(path.parts().count(), 6);
    }

    #[test]
    fn bad_options_are_refused_with_the_option() {
        let err = |entries: &[(&str, &str)]| {
            Partitioning::from_options(&mut options(entries))
                .unwrap_err()
                .to_string()
        };
        assert!(err(&[("time_partition_pattern", "%Q")]).contains("strftime"));
        assert!(err(&[("partition_fields", "k,,n")]).contains("partition_fields"));
        assert!(err(&[("partition_fields", "k,k")]).contains("twice"));
        assert!(
            err(&[("partitioning.fields", "k"), (PARTITIONED_BY, "n")]).contains("PARTITIONED BY")
        );
        let p = Partitioning::from_options(&mut options(&[("partition_fields", "nope")])).unwrap();
        let e = p.resolve("t", &batch().schema()).unwrap_err().to_string();
        assert!(e.contains("'nope'"), "{e}");
    }
}
