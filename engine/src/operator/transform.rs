//! The stateless operator: a filter and a projection, evaluated as DataFusion physical
//! expressions over whole batches. Consecutive filters and projections of a query fuse into one.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, BooleanArray};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::error::DataFusionError;
use datafusion::physical_expr::PhysicalExpr;

use super::{Operator, OperatorFactory, TaskInfo};
use crate::dataflow::{Collector, DataflowError};

/// One step of a stateless chain.
#[derive(Clone)]
pub enum Step {
    /// Keep the rows for which the predicate is true.
    Filter(Arc<dyn PhysicalExpr>),
    /// Replace the columns by these expressions; hidden columns are carried over. The schema
    /// includes the hidden columns last.
    Project(Vec<Arc<dyn PhysicalExpr>>, SchemaRef),
}

/// A fused chain of filters and projections.
#[derive(Clone)]
pub struct Transform {
    label: String,
    steps: Vec<Step>,
}

impl Transform {
    pub fn new(label: impl Into<String>, steps: Vec<Step>) -> Self {
        Transform {
            label: label.into(),
            steps,
        }
    }

    /// Runs every step over `batch`; `None` when no row is left.
    pub fn apply(&self, mut batch: RecordBatch) -> Result<Option<RecordBatch>, DataFusionError> {
        for step in &self.steps {
            if batch.num_rows() == 0 {
                return Ok(None);
            }
            batch = match step {
                Step::Filter(predicate) => {
                    let mask = predicate.evaluate(&batch)?.into_array(batch.num_rows())?;
                    let mask = mask
                        .as_any()
                        .downcast_ref::<BooleanArray>()
                        .ok_or_else(|| {
                            DataFusionError::Internal("filter predicate is not boolean".into())
                        })?;
                    if mask.true_count() == batch.num_rows() {
                        batch
                    } else {
                        filter_record_batch(&batch, mask)?
                    }
                }
                Step::Project(exprs, schema) => {
                    let rows = batch.num_rows();
                    let mut columns: Vec<ArrayRef> = exprs
                        .iter()
                        .map(|e| e.evaluate(&batch)?.into_array(rows))
                        .collect::<Result<_, _>>()?;
                    // Hidden columns (the event time, and the retraction flag of an updating
                    // stream) are carried over from the end of the input.
                    let hidden = schema.fields().len() - exprs.len();
                    let n = batch.num_columns();
                    columns.extend(batch.columns()[n - hidden..].iter().cloned());
                    RecordBatch::try_new_with_options(
                        schema.clone(),
                        columns,
                        &RecordBatchOptions::new().with_row_count(Some(rows)),
                    )?
                }
            };
        }
        Ok((batch.num_rows() > 0).then_some(batch))
    }
}

impl OperatorFactory for Transform {
    fn create(&self, _info: &TaskInfo) -> Result<Box<dyn Operator>, DataflowError> {
        Ok(Box::new(self.clone()))
    }
}

#[async_trait]
impl Operator for Transform {
    async fn process_batch(
        &mut self,
        batch: RecordBatch,
        _input: usize,
        out: &mut Collector,
    ) -> Result<(), DataflowError> {
        let result = self
            .apply(batch)
            .map_err(|source| DataflowError::Expression {
                node: self.label.clone(),
                source,
            })?;
        match result {
            Some(batch) => out.collect(batch).await,
            None => Ok(()),
        }
    }
}
