//! What the aggregating operators share (window aggregates, sessions, the updating
//! aggregate): DataFusion aggregates as [`AggregateSpec`]s, the schema of group keys, and
//! the layout of their state tables (group keys, then every accumulator's state columns).

use std::sync::Arc;

use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::GroupsAccumulator;
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::{GroupsAccumulatorAdapter, PhysicalExpr};

/// One aggregate of the GROUP BY.
#[derive(Clone)]
pub struct AggregateSpec {
    pub expr: Arc<AggregateFunctionExpr>,
    pub filter: Option<Arc<dyn PhysicalExpr>>,
}

impl AggregateSpec {
    /// A vectorized accumulator for many groups (DataFusion's adapter for aggregates that only
    /// have a per-group one).
    pub fn groups_accumulator(&self) -> Result<Box<dyn GroupsAccumulator>> {
        if self.expr.groups_accumulator_supported() {
            return self.expr.create_groups_accumulator();
        }
        let expr = self.expr.clone();
        Ok(Box::new(GroupsAccumulatorAdapter::new(move || {
            expr.create_accumulator()
        })))
    }

    /// The aggregate's input columns over `batch`: its arguments, then the columns of its
    /// ORDER BY (`array_agg(x ORDER BY y)`), as DataFusion's accumulators expect them.
    pub fn arguments(&self, batch: &RecordBatch) -> Result<Vec<ArrayRef>> {
        let mut exprs = self.expr.expressions();
        exprs.extend(self.expr.order_bys().iter().map(|s| s.expr.clone()));
        super::evaluate_all(&exprs, batch)
    }

    /// The FILTER (WHERE ...) column over `batch`, if any.
    pub fn filter_column(&self, batch: &RecordBatch) -> Result<Option<ArrayRef>> {
        self.filter
            .as_ref()
            .map(|f| f.evaluate(batch)?.into_array(batch.num_rows()))
            .transpose()
    }
}

/// Per aggregate, how many columns its intermediate state has.
pub(crate) fn state_widths(aggregates: &[AggregateSpec]) -> Result<Vec<usize>> {
    aggregates
        .iter()
        .map(|a| Ok(a.expr.state_fields()?.len()))
        .collect()
}

/// The key columns of a state table whose first columns are the group keys (named as in
/// `key_schema`), as expressions to re-partition it on: they hash like the shuffle's key
/// expressions over the input. None for a global aggregate, whose one group is subtask 0's.
pub(crate) fn state_keys(
    keys: &[Arc<dyn PhysicalExpr>],
    key_schema: &Schema,
) -> Vec<Arc<dyn PhysicalExpr>> {
    if keys.is_empty() {
        return vec![];
    }
    key_schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| Arc::new(Column::new(f.name(), i)) as Arc<dyn PhysicalExpr>)
        .collect()
}

/// A state table batch of `columns` named `names`, every column nullable.
pub(crate) fn state_batch(names: Vec<String>, columns: Vec<ArrayRef>) -> Result<RecordBatch> {
    let fields: Vec<Field> = names
        .into_iter()
        .zip(&columns)
        .map(|(name, c)| Field::new(name, c.data_type().clone(), true))
        .collect();
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

/// A state table that does not have the expected columns.
pub(crate) fn bad_state(table: &str) -> DataFusionError {
    DataFusionError::Execution(format!("state table '{table}' has unexpected columns"))
}

/// The key schema for `keys` evaluated over `input`; a constant column when there is no key.
pub fn key_schema(keys: &[Arc<dyn PhysicalExpr>], input: &Schema) -> Result<SchemaRef> {
    if keys.is_empty() {
        return Ok(Arc::new(Schema::new(vec![Field::new(
            "_const",
            DataType::UInt8,
            false,
        )])));
    }
    let fields = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            Ok(Field::new(
                format!("k{i}"),
                k.data_type(input)?,
                k.nullable(input)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Arc::new(Schema::new(fields)))
}
