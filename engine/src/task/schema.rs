//! The hidden columns every batch carries after the visible ones: an updating stream's
//! retraction flag, then the event time, always last.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// Name of the hidden event-time column every batch carries last.
pub const TIMESTAMP_FIELD: &str = "_timestamp";

/// Name of the hidden retraction flag of an updating stream (true: the row is withdrawn).
pub const RETRACT_FIELD: &str = "_retract";

/// The data type of the hidden event-time column.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Nanosecond, None)
}

/// `schema` with the hidden event-time column appended.
pub fn with_timestamp(schema: &Schema) -> SchemaRef {
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(TIMESTAMP_FIELD, timestamp_type(), false));
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// `schema` with the hidden columns of an updating stream appended: the retraction flag, then
/// the event time.
pub fn with_updating(schema: &Schema) -> SchemaRef {
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(RETRACT_FIELD, DataType::Boolean, false));
    fields.push(Field::new(TIMESTAMP_FIELD, timestamp_type(), false));
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}
