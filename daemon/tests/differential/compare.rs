//! Comparing `arroyod run`'s sink output with the oracle's rows.
//!
//! Both sides become [`Row`]s: a map from column name to [`Val`] without its nulls (a null
//! field and an absent one say the same). The sink's JSON is read with the oracle's schema as a guide,
//! so a timestamp column's text becomes a [`Val::Time`] (timestamps compare as values, in any
//! ISO 8601 form, or as the epoch milliseconds the `debezium_json` sink writes) and a float
//! column's numbers floats.
//!
//! - Append output: the two multisets of rows must be equal.
//! - Updating output: the debezium changes (`c`, `u`, `d`, `r`) are replayed as a multiset of
//!   whole rows (a `before` must retract a row that is there), and the rows left must equal
//!   the oracle's.
//!
//! Floats are equal within 1e-9 relative. Rows are first matched exactly on a key with floats
//! rounded to 7 digits, then the rest pairwise within the tolerance.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

use datafusion::arrow::array::{Array, RecordBatch};
use datafusion::arrow::compute::kernels::cast_utils::string_to_timestamp_nanos;
use datafusion::arrow::datatypes::{DataType, Fields, Schema};
use datafusion::arrow::temporal_conversions::timestamp_ns_to_datetime;
use datafusion::scalar::ScalarValue;
use serde_json::Value;

/// Relative tolerance of float comparisons.
const TOLERANCE: f64 = 1e-9;
/// How many differing rows a report shows on each side.
const SHOWN: usize = 5;

/// A value in the form both sides are compared in.
#[derive(Debug, Clone)]
pub enum Val {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    /// Nanoseconds since the epoch, UTC.
    Time(i64),
    Str(String),
    Obj(Row),
}

/// A row: column name to value, nulls left out.
pub type Row = BTreeMap<String, Val>;

impl Val {
    fn rank(&self) -> u8 {
        match self {
            Val::Null => 0,
            Val::Bool(_) => 1,
            Val::Int(_) => 2,
            Val::Float(_) => 3,
            Val::Time(_) => 4,
            Val::Str(_) => 5,
            Val::Obj(_) => 6,
        }
    }

    /// Equal, floats within [`TOLERANCE`].
    fn close(&self, other: &Val) -> bool {
        match (self, other) {
            (Val::Float(a), Val::Float(b)) => {
                a == b || (a - b).abs() <= TOLERANCE * a.abs().max(b.abs())
            }
            (Val::Obj(a), Val::Obj(b)) => rows_close(a, b),
            _ => self == other,
        }
    }

    /// Text that equal values share, floats rounded to 7 significant digits.
    fn key(&self, out: &mut String) {
        match self {
            Val::Float(f) => out.push_str(&format!("F{f:.6e}")),
            Val::Obj(row) => {
                out.push('{');
                row_key(row, out);
                out.push('}');
            }
            other => out.push_str(&format!("{other:?}")),
        }
    }
}

impl PartialEq for Val {
    fn eq(&self, other: &Val) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Val {}

impl PartialOrd for Val {
    fn partial_cmp(&self, other: &Val) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Val {
    fn cmp(&self, other: &Val) -> Ordering {
        match (self, other) {
            (Val::Bool(a), Val::Bool(b)) => a.cmp(b),
            (Val::Int(a), Val::Int(b)) => a.cmp(b),
            (Val::Float(a), Val::Float(b)) => a.total_cmp(b),
            (Val::Time(a), Val::Time(b)) => a.cmp(b),
            (Val::Str(a), Val::Str(b)) => a.cmp(b),
            (Val::Obj(a), Val::Obj(b)) => a.cmp(b),
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

impl fmt::Display for Val {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Val::Null => write!(f, "null"),
            Val::Bool(b) => write!(f, "{b}"),
            Val::Int(i) => write!(f, "{i}"),
            Val::Float(x) => write!(f, "{x:?}"),
            Val::Time(ns) => match timestamp_ns_to_datetime(*ns) {
                Some(t) => write!(f, "\"{}\"", t.format("%Y-%m-%dT%H:%M:%S%.f")),
                None => write!(f, "time({ns})"),
            },
            Val::Str(s) => write!(f, "{}", Value::String(s.clone())),
            Val::Obj(row) => write!(f, "{}", RowDisplay(row)),
        }
    }
}

/// Displays a row as JSON-like text.
pub struct RowDisplay<'a>(pub &'a Row);

impl fmt::Display for RowDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{")?;
        for (i, (k, v)) in self.0.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{k}: {v}")?;
        }
        write!(f, "}}")
    }
}

fn rows_close(a: &Row, b: &Row) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((ka, va), (kb, vb))| ka == kb && va.close(vb))
}

fn row_key(row: &Row, out: &mut String) {
    for (k, v) in row {
        out.push_str(k);
        out.push('=');
        v.key(out);
        out.push(';');
    }
}

/// Row `row` of `array` as a value.
pub fn scalar(array: &dyn Array, row: usize) -> Val {
    let value = ScalarValue::try_from_array(array, row)
        .unwrap_or_else(|e| panic!("reading row {row} of an oracle column: {e}"));
    from_scalar(&value)
}

fn from_scalar(value: &ScalarValue) -> Val {
    if value.is_null() {
        return Val::Null;
    }
    match value {
        ScalarValue::Boolean(Some(b)) => Val::Bool(*b),
        ScalarValue::Int8(Some(i)) => Val::Int((*i).into()),
        ScalarValue::Int16(Some(i)) => Val::Int((*i).into()),
        ScalarValue::Int32(Some(i)) => Val::Int((*i).into()),
        ScalarValue::Int64(Some(i)) => Val::Int((*i).into()),
        ScalarValue::UInt8(Some(i)) => Val::Int((*i).into()),
        ScalarValue::UInt16(Some(i)) => Val::Int((*i).into()),
        ScalarValue::UInt32(Some(i)) => Val::Int((*i).into()),
        ScalarValue::UInt64(Some(i)) => Val::Int((*i).into()),
        ScalarValue::Float32(Some(x)) => Val::Float((*x).into()),
        ScalarValue::Float64(Some(x)) => Val::Float(*x),
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => Val::Str(s.clone()),
        ScalarValue::TimestampSecond(Some(t), _) => Val::Time(t * 1_000_000_000),
        ScalarValue::TimestampMillisecond(Some(t), _) => Val::Time(t * 1_000_000),
        ScalarValue::TimestampMicrosecond(Some(t), _) => Val::Time(t * 1000),
        ScalarValue::TimestampNanosecond(Some(t), _) => Val::Time(*t),
        ScalarValue::Struct(array) => {
            let row = array
                .fields()
                .iter()
                .zip(array.columns())
                .map(|(field, column)| (field.name().clone(), scalar(column.as_ref(), 0)))
                .filter(|(_, v)| !matches!(v, Val::Null))
                .collect();
            Val::Obj(row)
        }
        other => panic!("the oracle gave a value of an unsupported type: {other:?}"),
    }
}

/// The oracle's rows.
pub fn rows_of_batches(batches: &[RecordBatch]) -> Vec<Row> {
    let mut rows = Vec::new();
    for batch in batches {
        let schema = batch.schema();
        for i in 0..batch.num_rows() {
            let row = schema
                .fields()
                .iter()
                .zip(batch.columns())
                .map(|(field, column)| (field.name().clone(), scalar(column.as_ref(), i)))
                .filter(|(_, v)| !matches!(v, Val::Null))
                .collect();
            rows.push(row);
        }
    }
    rows
}

/// A JSON value of a column of type `ty` (None: a column the oracle does not have).
fn from_json(value: &Value, ty: Option<&DataType>) -> Val {
    match (value, ty) {
        (Value::Null, _) => Val::Null,
        (Value::Bool(b), _) => Val::Bool(*b),
        (Value::String(s), Some(DataType::Timestamp(..))) => {
            string_to_timestamp_nanos(s).map_or_else(|_| Val::Str(s.clone()), Val::Time)
        }
        (Value::String(s), _) => Val::Str(s.clone()),
        // The debezium_json sink writes timestamps as epoch milliseconds.
        (Value::Number(n), Some(DataType::Timestamp(..))) => match n.as_i64() {
            Some(ms) => Val::Time(ms * 1_000_000),
            None => Val::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        (Value::Number(n), Some(DataType::Float16 | DataType::Float32 | DataType::Float64)) => {
            Val::Float(n.as_f64().unwrap_or(f64::NAN))
        }
        (Value::Number(n), _) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Val::Int(i.into()),
            (None, Some(u)) => Val::Int(u.into()),
            _ => Val::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        (Value::Object(map), Some(DataType::Struct(fields))) => Val::Obj(object(map, Some(fields))),
        (Value::Object(map), _) => Val::Obj(object(map, None)),
        (Value::Array(_), _) => Val::Str(value.to_string()),
    }
}

fn object(map: &serde_json::Map<String, Value>, fields: Option<&Fields>) -> Row {
    map.iter()
        .map(|(k, v)| {
            let ty = fields.and_then(|f| f.find(k)).map(|(_, f)| f.data_type());
            (k.clone(), from_json(v, ty))
        })
        .filter(|(_, v)| !matches!(v, Val::Null))
        .collect()
}

fn lines(text: &str, what: &str) -> Result<Vec<serde_json::Map<String, Value>>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| match serde_json::from_str(l) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(_) => Err(format!("line {} of {what} is not an object: {l}", i + 1)),
            Err(e) => Err(format!("line {} of {what} is not JSON: {e}: {l}", i + 1)),
        })
        .collect()
}

/// The rows of append output.
pub fn rows_of_json(text: &str, schema: &Schema, what: &str) -> Result<Vec<Row>, String> {
    Ok(lines(text, what)?
        .iter()
        .map(|map| object(map, Some(schema.fields())))
        .collect())
}

/// The rows left after replaying debezium changes.
pub fn final_rows_of_changes(text: &str, schema: &Schema, what: &str) -> Result<Vec<Row>, String> {
    let mut live: BTreeMap<Row, usize> = BTreeMap::new();
    for (i, change) in lines(text, what)?.iter().enumerate() {
        let n = i + 1;
        let side = |name: &str| match change.get(name) {
            Some(Value::Object(map)) => Some(object(map, Some(schema.fields()))),
            _ => None,
        };
        let op = change.get("op").and_then(Value::as_str).unwrap_or_default();
        let (remove, insert) = match op {
            "c" | "r" => (None, side("after")),
            "u" => (side("before"), side("after")),
            "d" => (side("before"), None),
            _ => return Err(format!("line {n} of {what} has no known op: {op:?}")),
        };
        if op != "d" && insert.is_none() {
            return Err(format!("line {n} of {what}: op {op:?} without \"after\""));
        }
        if let Some(row) = remove {
            match live.get_mut(&row) {
                Some(c) if *c > 1 => *c -= 1,
                Some(_) => {
                    live.remove(&row);
                }
                None => {
                    return Err(format!(
                        "line {n} of {what} retracts a row that is not there: {}",
                        RowDisplay(&row)
                    ));
                }
            }
        }
        if let Some(row) = insert {
            *live.entry(row).or_default() += 1;
        }
    }
    Ok(live
        .into_iter()
        .flat_map(|(row, c)| std::iter::repeat_n(row, c))
        .collect())
}

/// None when `got` equals `expected` as a multiset; else a report whose first line sums up
/// the difference and whose next lines show the first differing rows.
pub fn diff(expected: &[Row], got: &[Row], unit: &str) -> Option<String> {
    let keyed = |rows: &[Row]| {
        let mut map: BTreeMap<String, Vec<Row>> = BTreeMap::new();
        for row in rows {
            let mut key = String::new();
            row_key(row, &mut key);
            map.entry(key).or_default().push(row.clone());
        }
        map
    };
    let mut expected_left: Vec<Row> = Vec::new();
    let mut got_by_key = keyed(got);
    for (key, rows) in keyed(expected) {
        let candidates = got_by_key.entry(key).or_default();
        for row in rows {
            match candidates.iter().position(|g| rows_close(&row, g)) {
                Some(at) => {
                    candidates.swap_remove(at);
                }
                None => expected_left.push(row),
            }
        }
    }
    let mut got_left: Vec<Row> = got_by_key.into_values().flatten().collect();
    // Floats that round to different keys but are within the tolerance.
    expected_left.retain(
        |row| match got_left.iter().position(|g| rows_close(row, g)) {
            Some(at) => {
                got_left.swap_remove(at);
                false
            }
            None => true,
        },
    );
    if expected_left.is_empty() && got_left.is_empty() {
        return None;
    }
    expected_left.sort();
    got_left.sort();
    let mut report = format!(
        "expected {} {unit}, got {}; {} missing (-), {} unexpected (+)",
        expected.len(),
        got.len(),
        expected_left.len(),
        got_left.len()
    );
    let minus = expected_left.iter().take(SHOWN).map(|row| ('-', row));
    let plus = got_left.iter().take(SHOWN).map(|row| ('+', row));
    for (sign, row) in minus.chain(plus) {
        report.push_str(&format!("\n    {sign} {}", RowDisplay(row)));
    }
    Some(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{Field, TimeUnit};

    fn schema() -> Schema {
        let time = DataType::Timestamp(TimeUnit::Nanosecond, None);
        Schema::new(vec![
            Field::new("t", time.clone(), true),
            Field::new("n", DataType::Int64, true),
            Field::new("x", DataType::Float64, true),
            Field::new("s", DataType::Utf8, true),
            Field::new(
                "w",
                DataType::Struct(vec![Field::new("start", time, false)].into()),
                true,
            ),
        ])
    }

    fn json(text: &str) -> Vec<Row> {
        rows_of_json(text, &schema(), "test").unwrap()
    }

    #[test]
    fn timestamps_are_values_and_nulls_are_absent_fields() {
        let a = json(
            r#"{"t":"2024-01-01T00:00:01","n":1,"s":null,"w":{"start":"2024-01-01T00:00:00Z"}}"#,
        );
        let b = json(
            r#"{"n":1,"t":"2024-01-01T01:00:01.000+01:00","w":{"start":"2024-01-01 00:00:00"}}"#,
        );
        assert_eq!(diff(&a, &b, "rows"), None);
        let c =
            json(r#"{"n":1,"t":"2024-01-01T00:00:01.001","w":{"start":"2024-01-01T00:00:00"}}"#);
        assert!(diff(&a, &c, "rows").is_some());
        // A string that only looks like a time stays a string in a text column.
        assert!(matches!(
            json(r#"{"s":"2024-01-01T00:00:00"}"#)[0]["s"],
            Val::Str(_)
        ));
    }

    #[test]
    fn floats_are_equal_within_the_tolerance_and_rows_are_a_multiset() {
        let expected = json("{\"x\":0.1}\n{\"x\":0.1}\n{\"x\":1e300}\n{\"x\":2}");
        let close = json(
            "{\"x\":1.0000000000000002e300}\n{\"x\":0.10000000000000003}\n{\"x\":0.1}\n{\"x\":2.0}",
        );
        assert_eq!(diff(&expected, &close, "rows"), None);
        let far = json("{\"x\":0.1}\n{\"x\":0.1000001}\n{\"x\":1e300}\n{\"x\":2}");
        let report = diff(&expected, &far, "rows").unwrap();
        assert!(
            report.starts_with("expected 4 rows, got 4; 1 missing (-), 1 unexpected (+)"),
            "{report}"
        );
        assert!(report.contains("\n    + {x: 0.1000001}"), "{report}");
        // One duplicate more is a difference.
        let more = json("{\"x\":0.1}\n{\"x\":0.1}\n{\"x\":0.1}\n{\"x\":1e300}\n{\"x\":2}");
        assert!(
            diff(&expected, &more, "rows")
                .unwrap()
                .contains("1 unexpected")
        );
        // Integers are exact, and not floats.
        assert!(diff(&json(r#"{"n":5}"#), &json(r#"{"n":5.0}"#), "rows").is_some());
    }

    #[test]
    fn changes_replay_to_the_final_rows() {
        let changes = [
            r#"{"before":null,"after":{"s":"a","n":1},"op":"c"}"#,
            r#"{"before":null,"after":{"s":"b","n":1},"op":"c"}"#,
            r#"{"before":{"s":"a","n":1},"after":{"s":"a","n":2},"op":"u"}"#,
            r#"{"before":{"s":"b","n":1},"after":null,"op":"d"}"#,
            r#"{"before":null,"after":{"s":"c","n":1,"x":null},"op":"c"}"#,
        ]
        .join("\n");
        let rows = final_rows_of_changes(&changes, &schema(), "test").unwrap();
        assert_eq!(
            diff(
                &json("{\"s\":\"a\",\"n\":2}\n{\"s\":\"c\",\"n\":1}"),
                &rows,
                "final rows"
            ),
            None
        );
        let ghost = r#"{"before":{"s":"z","n":1},"after":null,"op":"d"}"#;
        let err = final_rows_of_changes(ghost, &schema(), "test").unwrap_err();
        assert!(err.contains("retracts a row that is not there"), "{err}");
    }
}
