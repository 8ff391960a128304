//! Debezium change events: `{"before": row|null, "after": row|null, "op": "c"|"r"|"u"|"d"}`.
//!
//! A source of them is an updating source: a create or snapshot read (`c`, `r`) inserts
//! `after`, a delete (`d`) retracts `before`, an update (`u`) retracts `before` then inserts
//! `after`. As in Arroyo, a numeric timestamp is read in the column's unit (nanoseconds), and
//! a Debezium sink writes timestamps as epoch milliseconds.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, StringArray, StructArray};
use datafusion::arrow::compute::{cast, interleave};
use datafusion::arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;

/// The fields of a row inside an event: all nullable (a delete has no `after`).
fn row_fields(schema: &Schema) -> Fields {
    schema
        .fields()
        .iter()
        .map(|f| Arc::new(f.as_ref().clone().with_nullable(true)))
        .collect()
}

/// `batch` with every timestamp column as epoch milliseconds (Int64), for a Debezium sink.
pub fn timestamps_as_millis(batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    if !batch
        .schema()
        .fields()
        .iter()
        .any(|f| matches!(f.data_type(), DataType::Timestamp(_, _)))
    {
        return Ok(batch.clone());
    }
    let mut fields = Vec::with_capacity(batch.num_columns());
    let mut columns = Vec::with_capacity(batch.num_columns());
    for (f, c) in batch.schema().fields().iter().zip(batch.columns()) {
        if let DataType::Timestamp(_, tz) = f.data_type() {
            let millis = cast(c, &DataType::Timestamp(TimeUnit::Millisecond, tz.clone()))?;
            columns.push(cast(&millis, &DataType::Int64)?);
            fields.push(Field::new(f.name(), DataType::Int64, f.is_nullable()));
        } else {
            columns.push(c.clone());
            fields.push(f.as_ref().clone());
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}

/// The schema the decoder reads a change event with.
pub fn envelope(schema: &SchemaRef) -> SchemaRef {
    let row = DataType::Struct(row_fields(schema));
    Arc::new(Schema::new(vec![
        Field::new("before", row.clone(), true),
        Field::new("after", row, true),
        Field::new("op", DataType::Utf8, true),
    ]))
}

/// Turns decoded change events into rows of `schema` and their retraction flags.
pub fn changes(
    events: &RecordBatch,
    schema: &SchemaRef,
) -> Result<(RecordBatch, BooleanArray), ArrowError> {
    let as_struct = |i: usize| {
        events
            .column(i)
            .as_any()
            .downcast_ref::<StructArray>()
            .cloned()
            .ok_or_else(|| ArrowError::SchemaError("before/after must be objects".into()))
    };
    let (before, after) = (as_struct(0)?, as_struct(1)?);
    let ops = events
        .column(2)
        .as_any()
        .downcast_ref::<StringArray>()
        .ok_or_else(|| ArrowError::SchemaError("op must be a string".into()))?;
    let mut picks: Vec<(usize, usize)> = Vec::with_capacity(events.num_rows());
    let mut retract = Vec::with_capacity(events.num_rows());
    for i in 0..events.num_rows() {
        let op = if ops.is_null(i) { "" } else { ops.value(i) };
        let (take_before, take_after) = match op {
            "c" | "r" => (false, true),
            "u" => (true, true),
            "d" => (true, false),
            other => {
                return Err(ArrowError::ParseError(format!(
                    "unknown Debezium op '{other}' (expected c, r, u or d)"
                )));
            }
        };
        if take_before {
            if before.is_null(i) {
                return Err(ArrowError::ParseError(format!(
                    "op '{op}' without 'before'"
                )));
            }
            picks.push((0, i));
            retract.push(true);
        }
        if take_after {
            if after.is_null(i) {
                return Err(ArrowError::ParseError(format!("op '{op}' without 'after'")));
            }
            picks.push((1, i));
            retract.push(false);
        }
    }
    let columns: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(c, field)| {
            let sides: [&dyn Array; 2] = [before.column(c).as_ref(), after.column(c).as_ref()];
            let values = interleave(&sides, &picks)?;
            cast(&values, field.data_type())
        })
        .collect::<Result<_, _>>()?;
    let batch = RecordBatch::try_new(schema.clone(), columns)?;
    Ok((batch, BooleanArray::from(retract)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::json::ReaderBuilder;

    #[test]
    fn updates_become_a_retraction_and_an_insert() {
        let schema: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("at", DataType::Timestamp(TimeUnit::Nanosecond, None), true),
        ]));
        let input = r#"{"before":null,"after":{"id":1,"at":1000000000},"op":"c"}
{"before":{"id":1,"at":1000000000},"after":{"id":1,"at":2000000000},"op":"u"}
{"before":{"id":1,"at":2000000000},"after":null,"op":"d"}
"#;
        let mut reader = ReaderBuilder::new(envelope(&schema))
            .build(std::io::Cursor::new(input))
            .unwrap();
        let events = reader.next().unwrap().unwrap();
        let (rows, retract) = changes(&events, &schema).unwrap();
        assert_eq!(rows.num_rows(), 4);
        assert_eq!(
            retract.iter().map(|r| r.unwrap()).collect::<Vec<_>>(),
            vec![false, true, false, true]
        );
        let at = rows
            .column(1)
            .as_any()
            .downcast_ref::<datafusion::arrow::array::TimestampNanosecondArray>()
            .unwrap();
        assert_eq!(at.value(0), 1_000_000_000);
        let millis = timestamps_as_millis(&rows).unwrap();
        let at = millis
            .column(1)
            .as_any()
            .downcast_ref::<datafusion::arrow::array::Int64Array>()
            .unwrap();
        assert_eq!(at.value(1), 1_000);
    }
}
