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

use crate::task::{Collector, TaskError};
use crate::task::{Operator, OperatorFactory, TaskInfo};

/// One step of a stateless chain.
#[derive(Clone)]
pub enum Step {
    /// Keep the rows for which the predicate is true.
    Filter(Arc<dyn PhysicalExpr>),
    /// Replace the columns by these expressions; hidden columns are carried over. The schema
    /// includes the hidden columns last.
    Project(Vec<Arc<dyn PhysicalExpr>>, SchemaRef),
    /// One row per element of the list columns `columns`, zipped (as DataFusion does): a row
    /// gives as many rows as its longest list has elements, the shorter lists' columns null
    /// beyond their end. Output column `i` comes from input column `sources[i]` (a list
    /// column gives its elements). Rows whose lists are all empty or null produce nothing. The
    /// schema includes the hidden columns last.
    Unnest {
        columns: Vec<usize>,
        sources: Vec<usize>,
        schema: SchemaRef,
    },
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
                Step::Unnest {
                    columns,
                    sources,
                    schema,
                } => unnest(&batch, columns, sources, schema)?,
            };
        }
        Ok((batch.num_rows() > 0).then_some(batch))
    }
}

/// The elements of a list column and where each row's list starts and ends.
fn list_parts(list: &ArrayRef) -> Result<(ArrayRef, Vec<usize>), DataFusionError> {
    use datafusion::arrow::array::{AsArray, GenericListArray};
    use datafusion::arrow::datatypes::DataType;
    fn parts<O: datafusion::arrow::array::OffsetSizeTrait>(
        l: &GenericListArray<O>,
    ) -> (ArrayRef, Vec<usize>) {
        (
            l.values().clone(),
            l.value_offsets().iter().map(|o| o.as_usize()).collect(),
        )
    }
    match list.data_type() {
        DataType::List(_) => Ok(parts(list.as_list::<i32>())),
        DataType::LargeList(_) => Ok(parts(list.as_list::<i64>())),
        other => Err(DataFusionError::NotImplemented(format!(
            "UNNEST of {other} is not supported"
        ))),
    }
}

/// See [`Step::Unnest`].
fn unnest(
    batch: &RecordBatch,
    lists: &[usize],
    sources: &[usize],
    schema: &SchemaRef,
) -> Result<RecordBatch, DataFusionError> {
    use datafusion::arrow::array::{Array, UInt32Array};
    use datafusion::arrow::compute::take;
    let parts: Vec<(ArrayRef, Vec<usize>)> = lists
        .iter()
        .map(|&c| list_parts(batch.column(c)))
        .collect::<Result<_, _>>()?;
    let length = |l: usize, row: usize| {
        if batch.column(lists[l]).is_null(row) {
            0
        } else {
            parts[l].1[row + 1] - parts[l].1[row]
        }
    };
    let mut repeat = Vec::new();
    let mut elements: Vec<Vec<Option<u32>>> = vec![Vec::new(); lists.len()];
    for row in 0..batch.num_rows() {
        let longest = (0..lists.len()).map(|l| length(l, row)).max().unwrap_or(0);
        for e in 0..longest {
            repeat.push(row as u32);
            for (l, out) in elements.iter_mut().enumerate() {
                out.push((e < length(l, row)).then(|| (parts[l].1[row] + e) as u32));
            }
        }
    }
    let repeat = UInt32Array::from(repeat);
    let elements: Vec<ArrayRef> = parts
        .iter()
        .zip(elements)
        .map(|((values, _), idx)| take(values.as_ref(), &UInt32Array::from(idx), None))
        .collect::<Result<_, _>>()?;
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for &source in sources {
        match lists.iter().position(|&l| l == source) {
            Some(l) => columns.push(elements[l].clone()),
            None => columns.push(take(batch.column(source).as_ref(), &repeat, None)?),
        }
    }
    let hidden = schema.fields().len() - sources.len();
    let n = batch.num_columns();
    for c in &batch.columns()[n - hidden..] {
        columns.push(take(c.as_ref(), &repeat, None)?);
    }
    Ok(RecordBatch::try_new_with_options(
        schema.clone(),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(repeat.len())),
    )?)
}

impl OperatorFactory for Transform {
    fn create(&self, _info: &TaskInfo) -> Result<Box<dyn Operator>, TaskError> {
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
    ) -> Result<(), TaskError> {
        let result = self
            .apply(batch)
            .map_err(TaskError::expression(&self.label))?;
        match result {
            Some(batch) => out.collect(batch).await,
            None => Ok(()),
        }
    }
}
