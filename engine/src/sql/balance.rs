//! Long chains of `OR` or `AND` rebalanced into trees of logarithmic depth before planning.
//!
//! sqlparser reads `a OR b OR c ...` as a left-deep tree as deep as the chain is long.
//! DataFusion's analyzer and optimizer compute an expression's type by walking it, once per
//! node, so planning a left-deep chain of n terms costs n²: 3,000 generated `OR` terms took
//! 20 s, 10,000 more than five minutes. Both operators are associative (in SQL's three-valued
//! logic too), so a chain regrouped as a balanced tree means the same, keeps its operands in
//! order, and plans in n log n with a stack depth of log n.
//!
//! Chains shorter than [`BALANCE_FROM`] keep the parser's shape, so that the plans (and the
//! operator ids derived from them) of ordinary queries stay what they were.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{BinaryOperator, Expr, Statement, VisitMut, VisitorMut};

/// The number of operands from which a chain is rebalanced.
pub const BALANCE_FROM: usize = 64;

/// Rebalances every long `OR` and `AND` chain in `statement`.
pub fn balance_chains(statement: &mut Statement) {
    let _ = statement.visit(&mut Balancer);
}

struct Balancer;

impl VisitorMut for Balancer {
    type Break = ();

    /// Before the visitor descends: a chain is regrouped first, so the walk below it is only
    /// as deep as the balanced tree.
    fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        if let Expr::BinaryOp { op, .. } = expr
            && matches!(op, BinaryOperator::Or | BinaryOperator::And)
        {
            let op = op.clone();
            // A balanced chain is balanced again below its root, at the same cost as the
            // root; shorter chains (and the short parts of balanced ones) stay as they are.
            if count(expr, &op) >= BALANCE_FROM {
                let operands = flatten(expr, &op);
                *expr = build(operands, &op);
            }
        }
        ControlFlow::Continue(())
    }
}

/// The operands of the chain of `op` rooted at `expr`, in order, leaving `expr` a placeholder.
/// Iterative: a chain may be longer than the stack is deep.
fn flatten(expr: &mut Expr, op: &BinaryOperator) -> Vec<Expr> {
    let mut operands = Vec::new();
    let mut pending = vec![std::mem::replace(expr, Expr::value(placeholder()))];
    // Right-hand operands wait on the stack while the left spine is followed down.
    while let Some(next) = pending.pop() {
        match next {
            Expr::BinaryOp { left, op: o, right } if &o == op => {
                pending.push(*right);
                pending.push(*left);
            }
            other => operands.push(other),
        }
    }
    operands
}

/// How many operands the chain of `op` rooted at `expr` has, without changing it.
fn count(expr: &Expr, op: &BinaryOperator) -> usize {
    let mut n = 0;
    let mut pending = vec![expr];
    while let Some(next) = pending.pop() {
        match next {
            Expr::BinaryOp { left, op: o, right } if o == op => {
                pending.push(right);
                pending.push(left);
            }
            _ => n += 1,
        }
    }
    n
}

fn placeholder() -> datafusion::sql::sqlparser::ast::Value {
    datafusion::sql::sqlparser::ast::Value::Null
}

/// A balanced tree of `op` over `operands`, in order. Recursion depth is log2 of the length.
fn build(mut operands: Vec<Expr>, op: &BinaryOperator) -> Expr {
    if operands.len() == 1 {
        return operands.pop().expect("one operand");
    }
    let right = operands.split_off(operands.len() / 2);
    join(build(operands, op), op, build(right, op))
}

fn join(left: Expr, op: &BinaryOperator, right: Expr) -> Expr {
    Expr::BinaryOp {
        left: Box::new(left),
        op: op.clone(),
        right: Box::new(right),
    }
}

#[cfg(test)]
mod tests {
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    use super::*;

    fn depth(expr: &Expr) -> usize {
        match expr {
            Expr::BinaryOp { left, right, .. } => 1 + depth(left).max(depth(right)),
            Expr::Nested(e) => 1 + depth(e),
            _ => 0,
        }
    }

    fn selection(sql: &str) -> Expr {
        let mut statement = Parser::parse_sql(&GenericDialect {}, sql)
            .unwrap()
            .remove(0);
        balance_chains(&mut statement);
        let Statement::Query(q) = statement else {
            panic!("a query")
        };
        let datafusion::sql::sqlparser::ast::SetExpr::Select(s) = *q.body else {
            panic!("a select")
        };
        s.selection.unwrap()
    }

    #[test]
    fn long_chains_become_shallow_and_keep_their_operands_in_order() {
        let terms: Vec<String> = (0..1000).map(|i| format!("x = {i}")).collect();
        let sql = format!("SELECT x FROM t WHERE {}", terms.join(" OR "));
        let balanced = selection(&sql);
        assert!(depth(&balanced) <= 11, "depth {}", depth(&balanced));
        // Printed without parentheses, the same chain in the same order.
        assert_eq!(balanced.to_string(), terms.join(" OR "));
    }

    #[test]
    fn short_chains_and_mixed_operators_keep_their_shape() {
        let sql = "SELECT x FROM t WHERE a OR b AND c OR (d OR e) AND f";
        let parsed = Parser::parse_sql(&GenericDialect {}, sql)
            .unwrap()
            .remove(0);
        let Statement::Query(q) = parsed.clone() else {
            panic!()
        };
        let datafusion::sql::sqlparser::ast::SetExpr::Select(s) = *q.body else {
            panic!()
        };
        assert_eq!(selection(sql), s.selection.unwrap());
    }

    #[test]
    fn chains_under_other_operators_are_balanced_too() {
        let terms: Vec<String> = (0..200).map(|i| format!("y = {i}")).collect();
        let sql = format!("SELECT x FROM t WHERE NOT ({}) AND z", terms.join(" AND "));
        let balanced = selection(&sql);
        assert!(depth(&balanced) <= 12, "depth {}", depth(&balanced));
    }
}
