//! The window functions of Arroyo's dialect: `TUMBLE(width)`, `HOP(slide, width)` and
//! `SESSION(gap)`. They plan as scalar functions returning the window struct
//! `{start, end}` so that DataFusion can type the query; the rewrite turns a GROUP BY on one of
//! them into a window aggregate, and evaluating them anywhere else is an error.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Fields, TimeUnit};
use datafusion::common::{ScalarValue, exec_err, plan_err};
use datafusion::error::Result;
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

/// The window struct's type: `{start: timestamp, end: timestamp}`.
pub fn window_type() -> DataType {
    let ts = DataType::Timestamp(TimeUnit::Nanosecond, None);
    DataType::Struct(Fields::from(vec![
        Field::new("start", ts.clone(), false),
        Field::new("end", ts, false),
    ]))
}

/// Which window a GROUP BY asks for; sizes in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowSpec {
    Tumble { width: i64 },
    Hop { slide: i64, width: i64 },
    Session { gap: i64 },
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct WindowFunction {
    name: &'static str,
    signature: Signature,
}

impl ScalarUDFImpl for WindowFunction {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(window_type())
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        exec_err!("{}() can only be used in GROUP BY", self.name)
    }
}

/// The UDFs to register for planning.
pub fn window_udfs() -> Vec<Arc<ScalarUDF>> {
    [("tumble", 1), ("hop", 2), ("session", 1)]
        .into_iter()
        .map(|(name, args)| {
            Arc::new(ScalarUDF::new_from_impl(WindowFunction {
                name,
                signature: Signature::any(args, Volatility::Volatile),
            }))
        })
        .collect()
}

/// The length of an interval literal in nanoseconds (`what` names it in errors).
pub fn interval_nanos(func: &str, e: &Expr) -> Result<i64> {
    let e = match e {
        Expr::Alias(a) => a.expr.as_ref(),
        Expr::Cast(c) => c.expr.as_ref(),
        other => other,
    };
    let nanos = match e {
        Expr::Literal(ScalarValue::IntervalMonthDayNano(Some(v)), _) => {
            if v.months != 0 {
                return plan_err!(
                    "{func}() takes a fixed interval: months and years vary in length"
                );
            }
            v.days as i64 * 86_400_000_000_000 + v.nanoseconds
        }
        Expr::Literal(ScalarValue::IntervalDayTime(Some(v)), _) => {
            v.days as i64 * 86_400_000_000_000 + v.milliseconds as i64 * 1_000_000
        }
        Expr::Literal(ScalarValue::IntervalYearMonth(Some(_)), _) => {
            return plan_err!("{func}() takes a fixed interval: months and years vary in length");
        }
        other => {
            return plan_err!(
                "{func}() takes an interval literal such as INTERVAL '1' MINUTE, not {other}"
            );
        }
    };
    if nanos <= 0 {
        return plan_err!("{func}() needs a positive interval");
    }
    Ok(nanos)
}

fn seconds(nanos: i64) -> String {
    if nanos % 1_000_000_000 == 0 {
        format!("{}s", nanos / 1_000_000_000)
    } else {
        format!("{}ms", nanos / 1_000_000)
    }
}

/// The window of `expr` when it is a call of a window function (possibly aliased).
pub fn window_spec(expr: &Expr) -> Result<Option<WindowSpec>> {
    let expr = match expr {
        Expr::Alias(a) => a.expr.as_ref(),
        other => other,
    };
    let Expr::ScalarFunction(f) = expr else {
        return Ok(None);
    };
    let name = f.func.name();
    let spec = match name {
        "tumble" => WindowSpec::Tumble {
            width: interval_nanos(name, &f.args[0])?,
        },
        "hop" => {
            let slide = interval_nanos(name, &f.args[0])?;
            let width = interval_nanos(name, &f.args[1])?;
            if width % slide != 0 {
                return plan_err!(
                    "hop() width {} currently must be a multiple of slide {}",
                    seconds(width),
                    seconds(slide)
                );
            }
            if width == slide {
                WindowSpec::Tumble { width }
            } else {
                WindowSpec::Hop { slide, width }
            }
        }
        "session" => WindowSpec::Session {
            gap: interval_nanos(name, &f.args[0])?,
        },
        _ => return Ok(None),
    };
    Ok(Some(spec))
}
