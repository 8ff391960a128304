//! `row_time()`: the event time of the row, as Arroyo's dialect has it. It plans as a volatile
//! scalar function (so that it is never folded into a constant) and is evaluated by
//! [`RowTime`], which reads the hidden event-time column every batch carries last.

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Schema, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::exec_err;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::error::Result;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::physical_expr::{PhysicalExpr, ScalarFunctionExpr};

const NAME: &str = "row_time";

#[derive(Debug, PartialEq, Eq, Hash)]
struct RowTimeFunction {
    signature: Signature,
}

impl ScalarUDFImpl for RowTimeFunction {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Timestamp(TimeUnit::Nanosecond, None))
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        exec_err!("row_time() is evaluated by the streaming rewrite")
    }
}

/// The UDF to register for planning.
pub fn row_time_udf() -> Arc<ScalarUDF> {
    Arc::new(ScalarUDF::new_from_impl(RowTimeFunction {
        signature: Signature::nullary(Volatility::Volatile),
    }))
}

/// The event time of each row: the last column of the batch.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RowTime;

impl fmt::Display for RowTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("row_time()")
    }
}

impl PhysicalExpr for RowTime {
    fn data_type(&self, _input_schema: &Schema) -> Result<DataType> {
        Ok(DataType::Timestamp(TimeUnit::Nanosecond, None))
    }

    fn nullable(&self, _input_schema: &Schema) -> Result<bool> {
        Ok(false)
    }

    fn evaluate(&self, batch: &RecordBatch) -> Result<ColumnarValue> {
        match batch.columns().last() {
            Some(times) => Ok(ColumnarValue::Array(times.clone())),
            None => exec_err!("row_time() over a batch without columns"),
        }
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        vec![]
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn PhysicalExpr>>,
    ) -> Result<Arc<dyn PhysicalExpr>> {
        Ok(self)
    }

    fn fmt_sql(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("row_time()")
    }
}

/// `expr` with every `row_time()` call replaced by [`RowTime`].
pub fn evaluate_row_time(expr: Arc<dyn PhysicalExpr>) -> Result<Arc<dyn PhysicalExpr>> {
    expr.transform_up(|e| {
        let is_row_time = e
            .as_ref()
            .downcast_ref::<ScalarFunctionExpr>()
            .is_some_and(|f| f.name() == NAME);
        Ok(if is_row_time {
            Transformed::yes(Arc::new(RowTime) as Arc<dyn PhysicalExpr>)
        } else {
            Transformed::no(e)
        })
    })
    .map(|t| t.data)
}
