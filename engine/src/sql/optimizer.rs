//! The logical optimizer rules a streaming query runs through: DataFusion's default list, less
//! the rules whose rewrites are wrong (or fail) on a stream, and with filter push-down kept
//! above the aggregates that form windows.
//!
//! Each of DataFusion's rules was checked against every window kind (TUMBLE, HOP, SESSION,
//! instant: grouping by an upstream window column) and against updating input:
//!
//! - `single_distinct_aggregation_to_group_by` is left out. It turns `count(DISTINCT v)` into
//!   two aggregations, the inner one grouped by `v` too: for SESSION windows that forms
//!   sessions per value (sessions depend on the grouping), and for a GROUP BY without a window
//!   it puts an updating aggregate over an updating one. DataFusion's distinct accumulators
//!   give the same answer in one aggregation.
//! - `eliminate_filter` is left out: it turns a filter it proves always false (`k = 'a' AND
//!   k = 'b'`) into an empty relation, which a stream cannot have. The filter stays, and
//!   simply lets no row through.
//! - `extract_leaf_expressions` and `push_down_leaf_projections` are left out: they only move
//!   struct field accesses towards the scan, and DataFusion 55 fails on a windowed subquery
//!   that repeats an aggregate ("Schema contains duplicate unqualified field name").
//! - `push_down_filter` is wrapped by [`KeepWindowFilters`]: DataFusion pushes a predicate on
//!   a group column below the aggregate by replacing the column with its group expression,
//!   which for a window column is the planning-only `tumble(...)` call; and it pushes
//!   predicates without columns (`row_time() > ...`) below aggregates too.
//! - Every other rule is kept: they rewrite expressions, subqueries, joins, unions and
//!   projections, and none of them looks at the rows of a window.

use std::sync::Arc;

use datafusion::common::Column;
use datafusion::common::Result;
use datafusion::common::tree_node::Transformed;
use datafusion::logical_expr::utils::{conjunction, split_conjunction, split_conjunction_owned};
use datafusion::logical_expr::{Expr, Filter, LogicalPlan};
use datafusion::optimizer::common_subexpr_eliminate::CommonSubexprEliminate;
use datafusion::optimizer::decorrelate_lateral_join::DecorrelateLateralJoin;
use datafusion::optimizer::decorrelate_predicate_subquery::DecorrelatePredicateSubquery;
use datafusion::optimizer::eliminate_cross_join::EliminateCrossJoin;
use datafusion::optimizer::eliminate_duplicated_expr::EliminateDuplicatedExpr;
use datafusion::optimizer::eliminate_group_by_constant::EliminateGroupByConstant;
use datafusion::optimizer::eliminate_join::EliminateJoin;
use datafusion::optimizer::eliminate_limit::EliminateLimit;
use datafusion::optimizer::eliminate_outer_join::EliminateOuterJoin;
use datafusion::optimizer::extract_equijoin_predicate::ExtractEquijoinPredicate;
use datafusion::optimizer::filter_null_join_keys::FilterNullJoinKeys;
use datafusion::optimizer::optimize_projections::OptimizeProjections;
use datafusion::optimizer::optimize_unions::OptimizeUnions;
use datafusion::optimizer::propagate_empty_relation::PropagateEmptyRelation;
use datafusion::optimizer::push_down_filter::PushDownFilter;
use datafusion::optimizer::push_down_limit::PushDownLimit;
use datafusion::optimizer::replace_distinct_aggregate::ReplaceDistinctWithAggregate;
use datafusion::optimizer::rewrite_set_comparison::RewriteSetComparison;
use datafusion::optimizer::scalar_subquery_to_join::ScalarSubqueryToJoin;
use datafusion::optimizer::simplify_expressions::SimplifyExpressions;
use datafusion::optimizer::unions_to_filter::UnionsToFilter;
use datafusion::optimizer::{ApplyOrder, OptimizerConfig, OptimizerRule};

use super::window_fn::window_spec;

/// The rules, in DataFusion's order.
pub fn rules() -> Vec<Arc<dyn OptimizerRule + Send + Sync>> {
    vec![
        Arc::new(RewriteSetComparison::new()),
        Arc::new(OptimizeUnions::new()),
        Arc::new(UnionsToFilter::new()),
        Arc::new(SimplifyExpressions::new()),
        Arc::new(ReplaceDistinctWithAggregate::new()),
        Arc::new(EliminateJoin::new()),
        Arc::new(DecorrelatePredicateSubquery::new()),
        Arc::new(ScalarSubqueryToJoin::new()),
        Arc::new(DecorrelateLateralJoin::new()),
        Arc::new(ExtractEquijoinPredicate::new()),
        Arc::new(EliminateDuplicatedExpr::new()),
        Arc::new(EliminateCrossJoin::new()),
        Arc::new(EliminateLimit::new()),
        Arc::new(PropagateEmptyRelation::new()),
        Arc::new(FilterNullJoinKeys::default()),
        Arc::new(EliminateOuterJoin::new()),
        Arc::new(PushDownLimit::new()),
        Arc::new(KeepWindowFilters(PushDownFilter::new())),
        Arc::new(EliminateGroupByConstant::new()),
        Arc::new(CommonSubexprEliminate::new()),
        Arc::new(OptimizeProjections::new()),
    ]
}

/// DataFusion's filter push-down, except that a predicate on the window column of a windowed
/// aggregate stays above it (below, the window does not exist yet), and so does a volatile
/// one such as `row_time() > ...` (below, it would see the input rows' times).
#[derive(Debug)]
struct KeepWindowFilters(PushDownFilter);

impl OptimizerRule for KeepWindowFilters {
    fn name(&self) -> &str {
        self.0.name()
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        self.0.apply_order()
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let LogicalPlan::Filter(filter) = &plan else {
            return self.0.rewrite(plan, config);
        };
        if let LogicalPlan::Filter(child) = filter.input.as_ref() {
            // DataFusion merges a filter into the one below it and goes on with the merged
            // filter itself, past this wrapper: merge here instead (the child's predicates
            // first, as DataFusion does).
            let mut predicates = split_conjunction_owned(child.predicate.clone());
            for p in split_conjunction_owned(filter.predicate.clone()) {
                if !predicates.contains(&p) {
                    predicates.push(p);
                }
            }
            let merged = conjunction(predicates).expect("a filter has a predicate");
            let merged = LogicalPlan::Filter(Filter::try_new(merged, child.input.clone())?);
            return Ok(Transformed::yes(self.rewrite(merged, config)?.data));
        }
        let LogicalPlan::Aggregate(agg) = filter.input.as_ref() else {
            return self.0.rewrite(plan, config);
        };
        // The output columns of the aggregate's window group expressions.
        let mut windows = Vec::new();
        for (i, g) in agg.group_expr.iter().enumerate() {
            if window_spec(g).ok().flatten().is_some() {
                windows.push(Column::from(agg.schema.qualified_field(i)));
            }
        }
        let stays =
            |e: &Expr| e.is_volatile() || e.column_refs().iter().any(|c| windows.contains(*c));
        if !split_conjunction(&filter.predicate).into_iter().any(stays) {
            return self.0.rewrite(plan, config);
        }
        let LogicalPlan::Filter(filter) = plan else {
            unreachable!("matched above")
        };
        let (keep, push): (Vec<Expr>, Vec<Expr>) = split_conjunction_owned(filter.predicate)
            .into_iter()
            .partition(stays);
        let input = filter.input;
        let Some(push) = conjunction(push) else {
            let keep = conjunction(keep).expect("a filter has a predicate");
            return Ok(Transformed::no(LogicalPlan::Filter(Filter::try_new(
                keep, input,
            )?)));
        };
        let pushed = self
            .0
            .rewrite(LogicalPlan::Filter(Filter::try_new(push, input)?), config)?
            .data;
        let plan = match conjunction(keep) {
            Some(keep) => LogicalPlan::Filter(Filter::try_new(keep, Arc::new(pushed))?),
            None => pushed,
        };
        Ok(Transformed::yes(plan))
    }
}
