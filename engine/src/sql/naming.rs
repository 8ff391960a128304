//! The names of a sink's columns: what the rows a sink writes are keyed by.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::error::Result;
use datafusion::logical_expr::{Expr, LogicalPlan, Projection};

use super::refusal::{Anchor, refuse};

/// A sink's rows are written by column name: two output columns of one name (`a.x, b.x`
/// of a join, or `SELECT *` over one) would make a JSON object with a repeated key, whose
/// readers keep one value and lose the other. Such columns are named by their table as well
/// (`a.x`, `b.x`); None when every name is distinct.
pub(super) fn distinct_names(plan: &LogicalPlan) -> Result<Option<LogicalPlan>> {
    let schema = plan.schema();
    let mut seen = HashMap::new();
    for field in schema.fields() {
        *seen.entry(field.name().as_str()).or_insert(0) += 1;
    }
    if seen.values().all(|n| *n == 1) {
        return Ok(None);
    }
    let mut exprs = Vec::with_capacity(schema.fields().len());
    for (qualifier, field) in schema.iter() {
        let name = field.name();
        let column = Expr::Column(datafusion::common::Column::new(qualifier.cloned(), name));
        exprs.push(match qualifier {
            Some(q) if seen[name.as_str()] > 1 => column.alias(format!("{q}.{name}")),
            None if seen[name.as_str()] > 1 => {
                return refuse(
                    format!(
                        "the query's output has two columns named '{name}': name them apart \
                         with AS"
                    ),
                    Anchor::Keyword("SELECT"),
                );
            }
            _ => column,
        });
    }
    let projection = Projection::try_new(exprs, Arc::new(plan.clone()))?;
    Ok(Some(LogicalPlan::Projection(projection)))
}
