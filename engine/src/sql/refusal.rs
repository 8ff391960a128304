//! What the rewrite refuses and how it says so: a [`Refusal`] carries its message and what in
//! the statement it points at ([`Anchor`]), so that the planner can put a line and column on
//! it; the plan nodes and window calls a streaming query cannot have, with what to write
//! instead.

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::error::Result;
use datafusion::logical_expr::{Expr, LogicalPlan};

use super::window_fn::{WINDOW_FUNCTIONS, WindowSpec};

/// A query the streaming engine refuses, with what in the statement the message is about.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    pub message: String,
    pub anchor: Anchor,
}

/// What a [`Refusal`] points at in the statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Anchor {
    /// A call of a window function: the one asking for this window when there is one.
    Window(WindowSpec),
    /// A call of the window function of this name.
    Function(&'static str),
    /// The first occurrence of this keyword (`ORDER`, `LIMIT`, `JOIN`, ...).
    Keyword(&'static str),
    /// The statement as a whole.
    Statement,
}

/// A [`Refusal`] as the error the rewrite returns.
pub(super) fn refuse<T>(message: impl Into<String>, anchor: Anchor) -> Result<T> {
    Err(datafusion::error::DataFusionError::External(Box::new(
        Refusal {
            message: message.into(),
            anchor,
        },
    )))
}

/// Why a plan node cannot be part of a streaming query, and what to do instead.
pub(super) fn unsupported<T>(plan: &LogicalPlan) -> Result<T> {
    let top_n = "for the top rows of each window, number them with ROW_NUMBER() OVER \
                 (PARTITION BY window ORDER BY ...) in a subquery and keep those WHERE the \
                 number is small enough";
    match plan {
        LogicalPlan::Sort(_) => refuse(
            format!("ORDER BY is not supported in a streaming query, which never ends; {top_n}"),
            Anchor::Keyword("ORDER"),
        ),
        LogicalPlan::Limit(_) => refuse(
            format!("LIMIT is not supported in a streaming query, which never ends; {top_n}"),
            Anchor::Keyword("LIMIT"),
        ),
        LogicalPlan::Values(_) => refuse(
            "VALUES is not supported in a streaming query: read rows from a table (a \
             single_file source, for example)",
            Anchor::Keyword("VALUES"),
        ),
        LogicalPlan::EmptyRelation(e) if e.produce_one_row => refuse(
            "a streaming query reads from a table: add a FROM clause",
            Anchor::Statement,
        ),
        LogicalPlan::EmptyRelation(_) => refuse(
            "this query can never produce a row (a condition that is always false, or LIMIT 0)",
            Anchor::Statement,
        ),
        LogicalPlan::RecursiveQuery(_) => refuse(
            "recursive queries are not supported in a streaming query",
            Anchor::Keyword("RECURSIVE"),
        ),
        LogicalPlan::Subquery(_) => refuse(
            "this subquery is not supported in a streaming query: write it as a join",
            Anchor::Keyword("SELECT"),
        ),
        LogicalPlan::Unnest(_) => refuse(
            "only UNNEST of lists is supported (not of structs, nor of nested lists at once)",
            Anchor::Keyword("UNNEST"),
        ),
        other => refuse(
            format!(
                "'{}' is not supported in a streaming query",
                other
                    .display()
                    .to_string()
                    .split(':')
                    .next()
                    .unwrap_or("this")
            ),
            Anchor::Statement,
        ),
    }
}

/// Refuses a call of a window function anywhere but in a GROUP BY: it has no value of its own.
pub(super) fn check_window_calls(plan: &LogicalPlan) -> Result<()> {
    let mut misplaced = None;
    let mut find = |e: &Expr| {
        e.apply(|e| {
            if let Expr::ScalarFunction(f) = e
                && let Some(name) = WINDOW_FUNCTIONS.iter().find(|n| **n == f.func.name())
            {
                misplaced = Some(*name);
                return Ok(TreeNodeRecursion::Stop);
            }
            Ok(TreeNodeRecursion::Continue)
        })
    };
    plan.apply(|node| match node {
        LogicalPlan::Aggregate(agg) => {
            for e in &agg.aggr_expr {
                if find(e)? == TreeNodeRecursion::Stop {
                    return Ok(TreeNodeRecursion::Stop);
                }
            }
            Ok(TreeNodeRecursion::Continue)
        }
        other => other.apply_expressions(&mut find),
    })?;
    match misplaced {
        Some(name) => refuse(
            format!(
                "time window function {name} is not allowed in this context. Are you missing \
                 a GROUP BY clause?"
            ),
            Anchor::Function(name),
        ),
        None => Ok(()),
    }
}
