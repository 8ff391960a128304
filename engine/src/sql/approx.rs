//! `approx_median`, `approx_percentile_cont` and `approx_percentile_cont_with_weight` typed
//! as in Arroyo: of an integer column, an integer of the column's type (the estimate
//! truncated toward zero), as Arroyo's DataFusion 48 gave it; of a float column, the float.
//!
//! DataFusion 55 coerces their value argument to DOUBLE and so returns DOUBLE for a BIGINT
//! column: the same query would write `150.3598` here where Arroyo writes `150`. The
//! functions stay DataFusion's; this wrapper keeps integer arguments uncoerced, hands the
//! digest their values as DOUBLE, and casts its estimate back to the column's type.

use std::sync::Arc;

use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, FieldRef};
use datafusion::common::{Result, ScalarValue, plan_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Documentation, Signature, Volatility,
};

/// The functions this module types, by name.
pub(super) const NAMES: [&str; 3] = [
    "approx_median",
    "approx_percentile_cont",
    "approx_percentile_cont_with_weight",
];

/// `inner` (one of [`NAMES`]) typed by its value argument.
pub(super) fn typed_by_input(inner: Arc<AggregateUDF>) -> Arc<AggregateUDF> {
    Arc::new(AggregateUDF::new_from_impl(TypedByInput {
        signature: Signature::user_defined(Volatility::Immutable),
        inner,
    }))
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct TypedByInput {
    signature: Signature,
    inner: Arc<AggregateUDF>,
}

impl TypedByInput {
    /// What DataFusion's function is given for `fields`: the value argument as DOUBLE.
    fn inner_fields(fields: &[FieldRef]) -> Vec<FieldRef> {
        fields
            .iter()
            .enumerate()
            .map(|(i, f)| {
                if i == 0 && f.data_type().is_integer() {
                    Arc::new(f.as_ref().clone().with_data_type(DataType::Float64))
                } else {
                    f.clone()
                }
            })
            .collect()
    }

    fn inner_return(field: &FieldRef) -> FieldRef {
        if field.data_type().is_integer() {
            Arc::new(field.as_ref().clone().with_data_type(DataType::Float64))
        } else {
            field.clone()
        }
    }
}

impl AggregateUDFImpl for TypedByInput {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    /// The value argument stays as it is when it is an integer or a float (any other number
    /// becomes DOUBLE); the others take what DataFusion's function takes: a DOUBLE
    /// percentile and weight, a BIGINT number of centroids.
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        let name = self.name();
        let wanted: &[DataType] = match name {
            "approx_median" => &[],
            "approx_percentile_cont" => &[DataType::Float64, DataType::Int64],
            _ => &[DataType::Float64, DataType::Float64],
        };
        let Some((value, rest)) = arg_types.split_first() else {
            return plan_err!("{name} needs a value to aggregate");
        };
        if rest.len() > wanted.len() || (name != "approx_median" && rest.is_empty()) {
            return plan_err!("{name} takes {} arguments", wanted.len() + 1);
        }
        let value = match value {
            t if t.is_integer() || t.is_floating() => t.clone(),
            t if t.is_numeric() || t.is_null() => DataType::Float64,
            t => return plan_err!("{name} needs a numeric value, not {t}"),
        };
        Ok(std::iter::once(value)
            .chain(wanted.iter().take(rest.len()).cloned())
            .collect())
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        match arg_types.first() {
            Some(t) if t.is_integer() => Ok(t.clone()),
            _ => self.inner.return_type(arg_types),
        }
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        let expr_fields = Self::inner_fields(args.expr_fields);
        let return_type = args.return_field.data_type().clone();
        let inner = self.inner.accumulator(AccumulatorArgs {
            return_field: Self::inner_return(&args.return_field),
            expr_fields: &expr_fields,
            ..args
        })?;
        Ok(Box::new(Truncating { inner, return_type }))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        let input_fields = Self::inner_fields(args.input_fields);
        self.inner.state_fields(StateFieldsArgs {
            input_fields: &input_fields,
            return_field: Self::inner_return(&args.return_field),
            ..args
        })
    }

    fn supports_within_group_clause(&self) -> bool {
        self.inner.supports_within_group_clause()
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
}

/// DataFusion's digest, fed DOUBLE values, its estimate cast to `return_type`.
#[derive(Debug)]
struct Truncating {
    inner: Box<dyn Accumulator>,
    return_type: DataType,
}

fn as_double(values: &[ArrayRef]) -> Result<Vec<ArrayRef>> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            if i == 0 && v.data_type().is_integer() {
                Ok(cast(v, &DataType::Float64)?)
            } else {
                Ok(v.clone())
            }
        })
        .collect()
}

impl Accumulator for Truncating {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.inner.update_batch(&as_double(values)?)
    }

    fn retract_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.inner.retract_batch(&as_double(values)?)
    }

    fn supports_retract_batch(&self) -> bool {
        self.inner.supports_retract_batch()
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        self.inner.merge_batch(states)
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        self.inner.state()
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        let estimate = self.inner.evaluate()?;
        if estimate.data_type() == self.return_type {
            return Ok(estimate);
        }
        // A float cast to an integer type truncates toward zero, as Arroyo's `as` did.
        estimate.cast_to(&self.return_type)
    }

    fn size(&self) -> usize {
        self.inner.size() + std::mem::size_of::<DataType>()
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::prelude::SessionContext;

    use super::*;

    /// DataFusion's batch engine with the typed functions in place of its own.
    async fn run(sql: &str) -> String {
        let ctx = SessionContext::new();
        for name in NAMES {
            let inner = ctx
                .state()
                .aggregate_functions()
                .get(name)
                .cloned()
                .unwrap();
            ctx.register_udaf(typed_by_input(inner).as_ref().clone());
        }
        let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        let types: Vec<String> = batches[0]
            .schema()
            .fields()
            .iter()
            .map(|f| format!("{}: {}", f.name(), f.data_type()))
            .collect();
        format!(
            "{}\n{}",
            types.join(", "),
            pretty_format_batches(&batches).unwrap()
        )
    }

    #[tokio::test]
    async fn of_an_integer_column_they_give_the_columns_type_truncated() {
        let out = run(
            "SELECT approx_median(x) AS m, approx_percentile_cont(x, 0.9) AS p,
                    approx_percentile_cont(0.5) WITHIN GROUP (ORDER BY x) AS wg,
                    approx_percentile_cont_with_weight(w, 0.5) WITHIN GROUP (ORDER BY x) AS ww,
                    approx_median(f) AS mf
             FROM (VALUES (1, 1.0, 1), (2, 2.0, 1), (3, 3.0, 1), (4, 4.0, 1)) AS t(x, f, w)",
        )
        .await;
        let mut lines = out.lines();
        assert_eq!(
            lines.next(),
            Some("m: Int64, p: Int64, wg: Int64, ww: Int64, mf: Float64"),
            "{out}"
        );
        // The median of 1..4 is 2.5: 2 of the integers, 2.5 of the floats.
        assert!(out.contains("| 2 | 4 | 2  | 2  | 2.5 |"), "{out}");
    }
}
