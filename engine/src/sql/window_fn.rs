//! The window functions of Arroyo's dialect: `TUMBLE(width)`, `HOP(slide, width)` and
//! `SESSION(gap)`. They plan as scalar functions returning the window struct
//! `{start, end}` so that DataFusion can type the query; the rewrite turns a GROUP BY on one of
//! them into a window aggregate, and evaluating them anywhere else is an error.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Fields, TimeUnit};
use datafusion::common::{ScalarValue, exec_err, plan_err};
use datafusion::error::Result;
use datafusion::logical_expr::{
    ColumnarValue, Expr, ExprSchemable, LogicalPlan, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
    Signature, Volatility,
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

/// The names of the window functions.
pub const WINDOW_FUNCTIONS: [&str; 3] = ["tumble", "hop", "session"];

/// The UDFs to register for planning.
pub fn window_udfs() -> Vec<Arc<ScalarUDF>> {
    WINDOW_FUNCTIONS
        .into_iter()
        .zip([1, 2, 1])
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

/// True for the `{start, end}` struct of a window.
pub fn is_window_struct(t: &DataType) -> bool {
    match t {
        DataType::Struct(fields) => {
            fields.len() == 2
                && fields[0].name() == "start"
                && fields[1].name() == "end"
                && fields
                    .iter()
                    .all(|f| matches!(f.data_type(), DataType::Timestamp(_, _)))
        }
        _ => false,
    }
}

/// The window of the rows `plan` produces, when they are the results of a windowed aggregate
/// (through projections, filters, subqueries, ranking functions, windowed joins and unions of
/// the same window): one instant per window, at its end. None for rows of a table or of an
/// updating aggregate.
pub fn plan_window(plan: &LogicalPlan) -> Result<Option<WindowSpec>> {
    match plan {
        LogicalPlan::Aggregate(agg) => {
            for g in &agg.group_expr {
                if let Some(spec) = window_spec(g)? {
                    return Ok(Some(spec));
                }
            }
            let input = agg.input.schema();
            for g in &agg.group_expr {
                if is_window_struct(&g.get_type(input)?) {
                    return plan_window(&agg.input);
                }
            }
            Ok(None)
        }
        LogicalPlan::TableScan(_) | LogicalPlan::EmptyRelation(_) | LogicalPlan::Values(_) => {
            Ok(None)
        }
        other => {
            let inputs = other.inputs();
            let Some(first) = inputs.first() else {
                return Ok(None);
            };
            let window = plan_window(first)?;
            for input in &inputs[1..] {
                if plan_window(input)? != window {
                    return Ok(None);
                }
            }
            Ok(window)
        }
    }
}

impl WindowSpec {
    /// The call that asks for this window, as a user writes it.
    pub fn describe(&self) -> String {
        match *self {
            WindowSpec::Tumble { width } => format!("tumble({})", seconds(width)),
            WindowSpec::Hop { slide, width } => {
                format!("hop({}, {})", seconds(slide), seconds(width))
            }
            WindowSpec::Session { gap } => format!("session({})", seconds(gap)),
        }
    }

    /// How long a window is (for a session, its gap).
    pub fn width(&self) -> i64 {
        match *self {
            WindowSpec::Tumble { width } | WindowSpec::Hop { width, .. } => width,
            WindowSpec::Session { gap } => gap,
        }
    }

    /// The function name of the call.
    pub fn function(&self) -> &'static str {
        match self {
            WindowSpec::Tumble { .. } => "tumble",
            WindowSpec::Hop { .. } => "hop",
            WindowSpec::Session { .. } => "session",
        }
    }
}
