//! Warnings: what plans and runs, but probably not as meant. They never refuse a query; the
//! daemon returns them from `Validate` and `arroyod run` prints them.
//!
//! - A window (`tumble`, `hop`, `session`) over a source without a WATERMARK (nor
//!   `event_time_field`, nor `watermark_field`): its event time is the time each row was read,
//!   so its windows run on processing time.

use std::any::Any;
use std::collections::BTreeSet;

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::LogicalPlan;
use datafusion::sql::sqlparser::tokenizer::Location;

use super::SqlError;
use super::provider::TableEntry;
use super::window_fn::window_spec;
use crate::connector::{ConnectorConfig, TableKind};

/// The warnings of the query `plan`, placed at `at` (its statement).
pub fn of_query(plan: &LogicalPlan, at: Location) -> Vec<SqlError> {
    let mut tables = BTreeSet::new();
    windowed_sources(plan, false, &mut tables);
    tables
        .into_iter()
        .map(|table| {
            SqlError::at(
                format!(
                    "windows over '{table}' run on processing time (the time each row \
                     is read), as it has no WATERMARK: declare `WATERMARK FOR <column>` (or \
                     event_time_field) for event-time windows"
                ),
                at,
            )
        })
        .collect()
}

/// Adds to `out` the connector tables without event time read below a windowed aggregate
/// (`windowed`: `plan` is below one).
fn windowed_sources(plan: &LogicalPlan, windowed: bool, out: &mut BTreeSet<String>) {
    let _ = plan.apply(|node| {
        match node {
            LogicalPlan::Aggregate(agg)
                if !windowed
                    && agg
                        .group_expr
                        .iter()
                        .any(|g| window_spec(g).ok().flatten().is_some()) =>
            {
                windowed_sources(&agg.input, true, out);
                return Ok(TreeNodeRecursion::Jump);
            }
            LogicalPlan::TableScan(scan) => {
                if let Some(entry) = (scan.source.as_ref() as &dyn Any).downcast_ref::<TableEntry>()
                {
                    match entry {
                        TableEntry::Connector(t) => {
                            let timed = t.event_time.field.is_some()
                                || t.event_time.watermark.is_some()
                                // The generators make their own event times.
                                || matches!(
                                    t.config,
                                    ConnectorConfig::Impulse(_) | ConnectorConfig::Nexmark(_)
                                );
                            if windowed && !timed && t.kind == TableKind::Source {
                                out.insert(t.name.clone());
                            }
                        }
                        TableEntry::View { plan, .. } => {
                            windowed_sources(&plan.clone(), windowed, out)
                        }
                        TableEntry::Memory { plan, .. } => {
                            if let Some(plan) = plan.lock().expect("not poisoned").as_ref() {
                                windowed_sources(plan, windowed, out);
                            }
                        }
                    }
                }
            }
            _ => {}
        }
        Ok(TreeNodeRecursion::Continue)
    });
}
