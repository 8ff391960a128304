//! Joins: on the same window of both sides (instant joins), else inner joins without
//! windows whose sides are kept for the state TTL.

use super::*;

impl Builder {
    /// Adds join operator `op` of `j`, its sides shuffled by their keys.
    fn add_join(
        &mut self,
        j: &Join,
        op: Arc<dyn OperatorFactory>,
        left: (usize, Vec<Arc<dyn PhysicalExpr>>),
        right: (usize, Vec<Arc<dyn PhysicalExpr>>),
    ) -> Stream {
        let plan = LogicalPlan::Join(j.clone());
        self.add_operator(("join", &plan), op, vec![left, right], false)
    }

    /// The nodes feeding the two sides of a join (append-only inputs only).
    fn join_inputs(&mut self, j: &Join) -> Result<(usize, usize)> {
        let left = self.build(&j.left)?;
        let right = self.build(&j.right)?;
        if left.updating || right.updating {
            let side = if right.updating { "right" } else { "left" };
            return refuse(
                format!(
                    "can't handle an updating {side} side of a join: joins of updating inputs \
                     (a GROUP BY without a window, or a debezium_json source) are not \
                     supported; join windowed results instead"
                ),
                Anchor::Keyword("JOIN"),
            );
        }
        Ok((self.materialize(left), self.materialize(right)))
    }

    /// An inner join without windows: both sides kept for the state TTL.
    fn ttl_join(
        &mut self,
        j: &Join,
        keys: JoinKeys,
        left_keys: Vec<Arc<dyn PhysicalExpr>>,
        right_keys: Vec<Arc<dyn PhysicalExpr>>,
    ) -> Result<Stream> {
        if j.join_type != JoinType::Inner {
            // `IN (SELECT ...)` and `EXISTS (...)` are planned as semi or anti joins: say so,
            // since the query has no JOIN to point at.
            let subquery = matches!(
                j.join_type,
                JoinType::LeftSemi | JoinType::RightSemi | JoinType::LeftAnti | JoinType::RightAnti
            );
            let what = if subquery {
                "IN (SELECT ...) and EXISTS (...) subqueries (semi and anti joins)".to_string()
            } else {
                format!("{} joins", join_name(j.join_type))
            };
            return refuse(
                format!(
                    "{what} need both sides grouped by the same window: without windows only \
                     inner joins are supported (each side a subquery with GROUP BY \
                     tumble(...) or hop(...), joined on its window column)",
                ),
                if subquery {
                    Anchor::Keyword("SELECT")
                } else {
                    Anchor::Keyword("JOIN")
                },
            );
        }
        if left_keys.is_empty() {
            return refuse(
                "joins without windows need an equality condition (ON a.x = b.y)",
                Anchor::Keyword("JOIN"),
            );
        }
        let key_types = keys
            .keys
            .iter()
            .map(|(l, _, _)| l.get_type(j.left.schema()))
            .collect::<Result<Vec<_>>>()?;
        let filter = match &keys.filter {
            Some(f) => Some(self.physical(f, &j.schema)?),
            None => None,
        };
        let (left, right) = self.join_inputs(j)?;
        let op = TtlJoin {
            label: self.label("join"),
            left_keys: left_keys.clone(),
            right_keys: right_keys.clone(),
            nulls_equal: keys.keys.iter().map(|k| k.2).collect(),
            key_types,
            filter,
            ttl: self.updating_ttl,
            schema: with_timestamp(j.schema.as_arrow()),
        };
        Ok(self.add_join(j, Arc::new(op), (left, left_keys), (right, right_keys)))
    }

    /// A join: per window when both sides are results of the same window (the window is
    /// found through subqueries and projections, whatever the join's condition names), else
    /// a TTL join.
    pub(super) fn join(&mut self, j: &Join) -> Result<Stream> {
        let kind = match j.join_type {
            JoinType::Inner => JoinKind::Inner,
            JoinType::Left => JoinKind::Left,
            JoinType::Right => JoinKind::Right,
            JoinType::Full => JoinKind::Full,
            JoinType::LeftSemi => JoinKind::LeftSemi,
            JoinType::LeftAnti => JoinKind::LeftAnti,
            other => {
                return refuse(
                    format!(
                        "{} joins are not supported: use an inner, left, right or full join",
                        join_name(other)
                    ),
                    Anchor::Keyword("JOIN"),
                );
            }
        };
        let (ls, rs) = (j.left.schema().clone(), j.right.schema().clone());
        let keys = join_keys(j)?;
        let (mut left_keys, mut right_keys) = (Vec::new(), Vec::new());
        for (l, r, _) in &keys.keys {
            left_keys.push(self.physical(l, &ls)?);
            right_keys.push(self.physical(r, &rs)?);
        }
        let window = match (plan_window(&j.left)?, plan_window(&j.right)?) {
            (None, None) => return self.ttl_join(j, keys, left_keys, right_keys),
            (Some(w), None) | (None, Some(w)) => {
                return refuse(
                    format!(
                        "one side of this join is grouped by {} and the other by no window: \
                         join two results of the same window, or two streams without windows",
                        w.describe()
                    ),
                    Anchor::Window(w),
                );
            }
            (Some(l), Some(r)) if l != r => {
                return refuse(
                    format!(
                        "the two sides of this join have different windows ({} and {}): \
                         group both by the same window",
                        l.describe(),
                        r.describe()
                    ),
                    Anchor::Window(r),
                );
            }
            (Some(w), Some(_)) => w,
        };
        if let WindowSpec::Session { .. } = window {
            return refuse(
                "joins of SESSION windows are not supported: the sessions of the two sides \
                 end at different times; join TUMBLE or HOP windows",
                Anchor::Window(window),
            );
        }
        // The filter sees pairs of rows: left then right columns (nullable on the side an
        // outer join may leave out).
        let pair_type = match kind {
            JoinKind::LeftSemi | JoinKind::LeftAnti => JoinType::Inner,
            _ => j.join_type,
        };
        let pair_schema = build_join_schema(&ls, &rs, &pair_type)?;
        let filter = match &keys.filter {
            None => None,
            Some(_) if matches!(kind, JoinKind::Left | JoinKind::Right | JoinKind::Full) => {
                return refuse(
                    format!(
                        "a {} join of windows can only have equality conditions: move the \
                         other conditions into a WHERE above the join or into the subqueries",
                        join_name(j.join_type)
                    ),
                    Anchor::Keyword("JOIN"),
                );
            }
            Some(f) => Some(self.physical(f, &pair_schema)?),
        };
        let (left, right) = self.join_inputs(j)?;
        let op = InstantJoin {
            label: self.label("join"),
            kind,
            left_schema: with_timestamp(ls.as_arrow()),
            right_schema: with_timestamp(rs.as_arrow()),
            left_keys: left_keys.clone(),
            right_keys: right_keys.clone(),
            nulls_equal: keys.keys.iter().map(|k| k.2).collect(),
            filter,
            pair_schema: with_timestamp(pair_schema.as_arrow()),
            schema: with_timestamp(j.schema.as_arrow()),
        };
        Ok(self.add_join(j, Arc::new(op), (left, left_keys), (right, right_keys)))
    }
}
