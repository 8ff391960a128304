//! JSON in Arroyo's dialect: JSON values are text columns, and
//!
//! - `json -> key` (or an array index) gives the member as JSON text (`'null'` when absent),
//! - `json ->> key` gives it as text: a string unquoted, anything else as JSON; NULL when absent,
//! - `extract_json(json, path)` gives every value a JSONPath (RFC 9535: `$.a.b[0]`,
//!   wildcards `[*]`, filters) selects, as a list of JSON texts;
//! - `extract_json_string(json, path)` the first selected value when it is a string,
//!   `get_first_json_object(json, path)` the first selected value as JSON text.
//!
//! The rest of the family (`json_get_str`, `json_get_int`, `json_get_float`, `json_get_bool`,
//! `json_get_json`, `json_as_text`, `json_contains`, `json_length`, `json_object_keys`, and the
//! `?` operator) comes from the `datafusion-functions-json` crate, as in Arroyo.
//!
//! These parse JSON row by row (serde_json): JSON text has no columnar form to work on.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, ListBuilder, StringArray, StringBuilder};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field};
use datafusion::common::{DFSchema, exec_err};
use datafusion::error::Result;
use datafusion::logical_expr::planner::{ExprPlanner, PlannerResult, RawBinaryExpr};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::sql::sqlparser::ast::BinaryOperator;
use serde_json::Value;
use serde_json_path::JsonPath;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum JsonOp {
    /// `->`
    Get,
    /// `->>`
    GetText,
    /// `extract_json`
    Extract,
    /// `extract_json_string`
    ExtractString,
    /// `get_first_json_object`
    FirstObject,
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

/// The JSONPaths of a call, parsed once each.
#[derive(Default)]
struct Paths(HashMap<String, JsonPath>);

impl Paths {
    fn get(&mut self, path: &str) -> Result<&JsonPath> {
        if !self.0.contains_key(path) {
            let parsed = match JsonPath::parse(path) {
                Ok(p) => p,
                Err(e) => return exec_err!("invalid JSON path '{path}': {e}"),
            };
            self.0.insert(path.to_string(), parsed);
        }
        Ok(&self.0[path])
    }
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
            JsonOp::Extract => "extract_json",
            JsonOp::ExtractString => "extract_json_string",
            JsonOp::FirstObject => "get_first_json_object",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(match self.op {
            JsonOp::Extract => {
                DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true)))
            }
            _ => DataType::Utf8,
        })
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
        let parse = |i: usize| -> Option<Value> {
            if json.is_null(i) || keys.is_null(i) {
                return None;
            }
            serde_json::from_str::<Value>(json.value(i)).ok()
        };
        let mut paths = Paths::default();
        if self.op == JsonOp::Extract {
            let mut out = ListBuilder::with_capacity(StringBuilder::new(), rows);
            for i in 0..rows {
                match parse(i) {
                    None => out.append_null(),
                    Some(value) => {
                        let path = paths.get(keys.value(i))?;
                        for v in path.query(&value).all() {
                            out.values().append_value(v.to_string());
                        }
                        out.append(true);
                    }
                }
            }
            return Ok(ColumnarValue::Array(Arc::new(out.finish())));
        }
        let mut out = StringBuilder::with_capacity(rows, rows * 8);
        for i in 0..rows {
            let Some(value) = parse(i) else {
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
                JsonOp::Extract | JsonOp::ExtractString | JsonOp::FirstObject => {
                    paths.get(key)?.query(&value).first()
                }
            };
            match (self.op, found) {
                (JsonOp::Get, Some(v)) => out.append_value(v.to_string()),
                (JsonOp::Get, None) => out.append_value("null"),
                (JsonOp::FirstObject, Some(v)) => out.append_value(v.to_string()),
                (JsonOp::ExtractString, Some(Value::String(s))) => out.append_value(s),
                (JsonOp::ExtractString, _) => out.append_null(),
                (_, Some(Value::Null)) | (_, None) => out.append_null(),
                (_, Some(v)) => out.append_value(as_text(v)),
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// The JSON scalar functions to register: the dialect's own, then the crate's.
pub fn json_udfs() -> Vec<Arc<ScalarUDF>> {
    use datafusion_functions_json::udfs;
    vec![
        JsonFunction::udf(JsonOp::Get),
        JsonFunction::udf(JsonOp::GetText),
        JsonFunction::udf(JsonOp::Extract),
        JsonFunction::udf(JsonOp::ExtractString),
        JsonFunction::udf(JsonOp::FirstObject),
        udfs::json_get_str_udf(),
        udfs::json_get_int_udf(),
        udfs::json_get_float_udf(),
        udfs::json_get_bool_udf(),
        udfs::json_get_json_udf(),
        udfs::json_as_text_udf(),
        udfs::json_contains_udf(),
        udfs::json_length_udf(),
        udfs::json_object_keys_udf(),
    ]
}

/// Plans `->` and `->>` as [`json_udfs`] calls, and `json ? key` as `json_contains`.
#[derive(Debug)]
pub struct JsonOperators;

impl ExprPlanner for JsonOperators {
    fn plan_binary_op(
        &self,
        expr: RawBinaryExpr,
        _schema: &DFSchema,
    ) -> Result<PlannerResult<RawBinaryExpr>> {
        let call = match expr.op {
            BinaryOperator::Arrow => {
                JsonFunction::udf(JsonOp::Get).call(vec![expr.left, expr.right])
            }
            BinaryOperator::LongArrow => {
                JsonFunction::udf(JsonOp::GetText).call(vec![expr.left, expr.right])
            }
            BinaryOperator::Question => datafusion_functions_json::udfs::json_contains_udf()
                .call(vec![expr.left, expr.right]),
            _ => return Ok(PlannerResult::Original(expr)),
        };
        Ok(PlannerResult::Planned(call))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_select_members_indices_and_wildcards() {
        let v: Value =
            serde_json::from_str(r#"{"a": {"b": [10, "x"]}, "t": [{"n": 1}, {"n": 2}]}"#).unwrap();
        let mut paths = Paths::default();
        let one = paths.get("$.a.b[1]").unwrap().query(&v).first().cloned();
        assert_eq!(one, Some(Value::String("x".into())));
        let all: Vec<Value> = paths
            .get("$.t[*].n")
            .unwrap()
            .query(&v)
            .all()
            .into_iter()
            .cloned()
            .collect();
        assert_eq!(all, vec![Value::from(1), Value::from(2)]);
        assert!(paths.get("a.b").is_err());
    }
}
