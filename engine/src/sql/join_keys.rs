//! The keys a streaming join hashes on, and how each compares nulls.
//!
//! DataFusion puts `a = b` conditions in `Join::on` (null matches nothing) and, when the ON
//! clause has no `=` between the sides, its `IS NOT DISTINCT FROM` conditions instead, with
//! `null_equality` saying nulls match. With both kinds in one ON clause, the `IS NOT DISTINCT
//! FROM` conditions stay in the join's filter. A streaming join hashes rows by its keys and
//! never evaluates a filter of an outer join, so [`join_keys`] takes every `IS NOT DISTINCT
//! FROM` between the two sides out of the filter and makes it a key whose nulls match: the
//! answer is DataFusion's, and a windowed outer join on `l.window = r.window AND l.k IS NOT
//! DISTINCT FROM r.k` needs no filter.

use datafusion::common::{DFSchema, NullEquality};
use datafusion::error::Result;
use datafusion::logical_expr::utils::{
    conjunction, find_valid_equijoin_key_pair, split_conjunction,
};
use datafusion::logical_expr::{BinaryExpr, Expr, Join, Operator};

/// The keys and residual filter of a join.
#[derive(Debug)]
pub struct JoinKeys {
    /// (left expression, right expression, whether a null matches a null), per key.
    pub keys: Vec<(Expr, Expr, bool)>,
    /// What is left of the join's filter.
    pub filter: Option<Expr>,
}

/// The keys of `j`: its `on` pairs, then the `IS NOT DISTINCT FROM` conditions of its filter
/// that compare a left expression with a right one.
pub fn join_keys(j: &Join) -> Result<JoinKeys> {
    let nulls_equal = j.null_equality == NullEquality::NullEqualsNull;
    let mut keys: Vec<(Expr, Expr, bool)> =
        j.on.iter()
            .map(|(l, r)| (l.clone(), r.clone(), nulls_equal))
            .collect();
    let mut rest = Vec::new();
    if let Some(filter) = &j.filter {
        for conjunct in split_conjunction(filter) {
            match null_safe_pair(conjunct, j.left.schema(), j.right.schema())? {
                Some((l, r)) => keys.push((l, r, true)),
                None => rest.push(conjunct.clone()),
            }
        }
    }
    Ok(JoinKeys {
        keys,
        filter: conjunction(rest),
    })
}

/// `(left, right)` when `e` is `x IS NOT DISTINCT FROM y` with one operand of each side.
fn null_safe_pair(e: &Expr, left: &DFSchema, right: &DFSchema) -> Result<Option<(Expr, Expr)>> {
    match e {
        Expr::BinaryExpr(BinaryExpr {
            left: a,
            op: Operator::IsNotDistinctFrom,
            right: b,
        }) => find_valid_equijoin_key_pair(a, b, left, right),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::common::JoinType;
    use datafusion::logical_expr::{LogicalPlanBuilder, col, table_scan};

    fn null_safe(a: Expr, b: Expr) -> Expr {
        Expr::BinaryExpr(BinaryExpr::new(
            Box::new(a),
            Operator::IsNotDistinctFrom,
            Box::new(b),
        ))
    }

    fn scan(name: &str) -> LogicalPlanBuilder {
        let schema = Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new("g", DataType::Int64, true),
        ]);
        table_scan(Some(name), &schema, None).unwrap()
    }

    fn join_of(filter: Expr, on: Vec<(&str, &str)>) -> Join {
        let right = scan("r").build().unwrap();
        let (l, r): (Vec<_>, Vec<_>) = on.into_iter().unzip();
        let plan = scan("l")
            .join_detailed(
                right,
                JoinType::Full,
                (
                    l.into_iter()
                        .map(datafusion::common::Column::from)
                        .collect::<Vec<_>>(),
                    r.into_iter()
                        .map(datafusion::common::Column::from)
                        .collect::<Vec<_>>(),
                ),
                Some(filter),
                NullEquality::NullEqualsNothing,
            )
            .unwrap()
            .build()
            .unwrap();
        match plan {
            datafusion::logical_expr::LogicalPlan::Join(j) => j,
            other => panic!("not a join: {other}"),
        }
    }

    #[test]
    fn is_not_distinct_from_between_the_sides_becomes_a_key_whose_nulls_match() {
        let filter = null_safe(col("l.k"), col("r.k"))
            .and(col("l.g").gt(col("r.g")))
            .and(null_safe(col("r.k"), col("l.k")));
        let keys = join_keys(&join_of(filter, vec![("l.g", "r.g")])).unwrap();
        let flags: Vec<bool> = keys.keys.iter().map(|k| k.2).collect();
        assert_eq!(flags, [false, true, true]);
        // Both written orders give (left, right).
        assert_eq!(keys.keys[1].0, col("l.k"));
        assert_eq!(keys.keys[2].0, col("l.k"));
        assert_eq!(keys.filter, Some(col("l.g").gt(col("r.g"))));
    }

    #[test]
    fn is_not_distinct_from_within_one_side_stays_in_the_filter() {
        let filter = null_safe(col("l.k"), col("l.k"));
        let keys = join_keys(&join_of(filter.clone(), vec![("l.g", "r.g")])).unwrap();
        assert_eq!(keys.keys.len(), 1);
        assert_eq!(keys.filter, Some(filter));
    }
}
