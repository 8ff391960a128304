//! JSON in Arroyo's dialect: JSON values are text columns, and
//!
//! - `json -> key` (or an array index) gives the member as JSON text (`'null'` when absent),
//! - `json ->> key` gives it as text: a string unquoted, anything else as JSON; NULL when absent,
//! - `extract_json_string(json, '$.a.b[0]')` gives the string (or JSON text) at a path.
//!
//! These parse JSON row by row (with serde_json): JSON text has no columnar form to work on.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, StringArray, StringBuilder};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{DFSchema, exec_err};
use datafusion::error::Result;
use datafusion::logical_expr::planner::{ExprPlanner, PlannerResult, RawBinaryExpr};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::sql::sqlparser::ast::BinaryOperator;
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum JsonOp {
    /// `->`
    Get,
    /// `->>`
    GetText,
    /// `extract_json_string`
    ExtractString,
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct JsonFunction {
    op: JsonOp,
    signature: Signature,
}

impl JsonFunction {
    fn udf(op: JsonOp) -> Arc<ScalarUDF> {
        Arc::new(ScalarUDF::new_from_impl(JsonFunction {
            op,
            signature: Signature::any(2, Volatility::Immutable),
        }))
    }
}

/// One step of a path: a member or an array index.
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

fn walk<'v>(value: &'v Value, steps: &[Step<'_>]) -> Option<&'v Value> {
    steps.iter().try_fold(value, |v, step| match step {
        Step::Key(k) => v.get(*k),
        Step::Index(i) => v.get(*i),
    })
}

/// Parses a JSONPath such as `$.a.b[0]` (members and indices only).
fn parse_path(path: &str) -> Option<Vec<Step<'_>>> {
    let rest = path.trim().strip_prefix('$')?;
    let mut steps = Vec::new();
    let mut s = rest;
    while !s.is_empty() {
        if let Some(r) = s.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            steps.push(Step::Key(&r[..end]));
            s = &r[end..];
        } else if let Some(r) = s.strip_prefix('[') {
            let end = r.find(']')?;
            let inner = r[..end].trim();
            match inner.parse::<usize>() {
                Ok(i) => steps.push(Step::Index(i)),
                Err(_) => steps.push(Step::Key(inner.trim_matches(['\'', '"']))),
            }
            s = &r[end + 1..];
        } else {
            return None;
        }
    }
    Some(steps)
}

fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl ScalarUDFImpl for JsonFunction {
    fn name(&self) -> &str {
        match self.op {
            JsonOp::Get => "json_get",
            JsonOp::GetText => "json_get_text",
            JsonOp::ExtractString => "extract_json_string",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let arrays: Vec<ArrayRef> = args
            .args
            .iter()
            .map(|a| a.clone().into_array(rows))
            .collect::<Result<_>>()?;
        let json = cast(&arrays[0], &DataType::Utf8)?;
        let json = json
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("cast to Utf8");
        let key_is_index = arrays[1].data_type().is_integer();
        let keys = cast(&arrays[1], &DataType::Utf8)?;
        let keys = keys
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("cast to Utf8");
        let mut out = StringBuilder::with_capacity(rows, rows * 8);
        for i in 0..rows {
            if json.is_null(i) || keys.is_null(i) {
                out.append_null();
                continue;
            }
            let Ok(value) = serde_json::from_str::<Value>(json.value(i)) else {
                out.append_null();
                continue;
            };
            let key = keys.value(i);
            let found = match self.op {
                JsonOp::Get | JsonOp::GetText if key_is_index => match key.parse::<usize>() {
                    Ok(idx) => value.get(idx),
                    Err(_) => None,
                },
                JsonOp::Get | JsonOp::GetText => value.get(key),
                JsonOp::ExtractString => match parse_path(key) {
                    Some(steps) => walk(&value, &steps),
                    None => return exec_err!("invalid JSON path '{key}': use $.member[index]..."),
                },
            };
            match (self.op, found) {
                (JsonOp::Get, Some(v)) => out.append_value(v.to_string()),
                (JsonOp::Get, None) => out.append_value("null"),
                (_, Some(Value::Null)) | (_, None) => out.append_null(),
                (_, Some(v)) => out.append_value(as_text(v)),
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// The JSON scalar functions to register.
pub fn json_udfs() -> Vec<Arc<ScalarUDF>> {
    vec![
        JsonFunction::udf(JsonOp::Get),
        JsonFunction::udf(JsonOp::GetText),
        JsonFunction::udf(JsonOp::ExtractString),
    ]
}

/// Plans `->` and `->>` as [`json_udfs`] calls.
#[derive(Debug)]
pub struct JsonOperators;

impl ExprPlanner for JsonOperators {
    fn plan_binary_op(
        &self,
        expr: RawBinaryExpr,
        _schema: &DFSchema,
    ) -> Result<PlannerResult<RawBinaryExpr>> {
        let op = match expr.op {
            BinaryOperator::Arrow => JsonOp::Get,
            BinaryOperator::LongArrow => JsonOp::GetText,
            _ => return Ok(PlannerResult::Original(expr)),
        };
        let call = JsonFunction::udf(op).call(vec![expr.left, expr.right]);
        Ok(PlannerResult::Planned(call))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_walk_members_and_indices() {
        let v: Value = serde_json::from_str(r#"{"a": {"b": [10, "x"]}}"#).unwrap();
        let steps = parse_path("$.a.b[1]").unwrap();
        assert_eq!(walk(&v, &steps), Some(&Value::String("x".into())));
        assert!(parse_path("a.b").is_none());
    }
}
