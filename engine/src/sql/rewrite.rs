//! Rewrites DataFusion logical plans into the streaming dataflow.
//!
//! Stateless nodes (filters, projections, aliases) are evaluated by a fused
//! [`Transform`](crate::operator::Transform) after the node that feeds them; every expression
//! becomes a DataFusion physical expression over the input's visible columns (the hidden
//! event-time column sits after them and is carried through).

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;

use datafusion::common::{DFSchema, not_impl_err, plan_err};
use datafusion::error::Result;
use datafusion::logical_expr::LogicalPlan;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::physical_expr::execution_props::ExecutionProps;
use datafusion::physical_expr::{PhysicalExpr, create_physical_expr};

use super::provider::TableEntry;
use crate::connector::{ConnectorConfig, ConnectorTable, with_timestamp};
use crate::dataflow::{EdgeKind, NodeKind, Program};
use crate::operator::Transform;
use crate::operator::transform::Step;

/// A stream under construction: the node that produces it and stateless steps still to apply.
struct Stream {
    node: usize,
    label: String,
    steps: Vec<Step>,
}

/// Accumulates the dataflow of every INSERT INTO and SELECT of a file.
#[derive(Default)]
pub struct Builder {
    program: Program,
    sinks: HashMap<String, usize>,
    sink_order: Vec<String>,
    props: ExecutionProps,
}

impl Builder {
    /// Table names written to, in the order first written.
    pub fn sinks(&self) -> &[String] {
        &self.sink_order
    }

    pub fn finish(self) -> Program {
        self.program
    }

    /// Adds `plan`, writing into `table`.
    pub fn add_insert(&mut self, table: &ConnectorTable, plan: &LogicalPlan) -> Result<()> {
        let stream = self.build(plan)?;
        let input = self.materialize(stream);
        let sink = match self.sinks.get(&table.name) {
            Some(&node) => node,
            None => {
                let factory = table
                    .sink_factory()
                    .map_err(|e| datafusion::error::DataFusionError::Plan(e.to_string()))?;
                let node = self
                    .program
                    .add_node(format!("sink:{}", table.name), NodeKind::Operator(factory));
                if matches!(table.config, ConnectorConfig::SingleFile { .. }) {
                    // One file, one writer.
                    self.program.nodes[node].parallelism = Some(1);
                }
                self.sinks.insert(table.name.clone(), node);
                self.sink_order.push(table.name.clone());
                node
            }
        };
        self.program.add_edge(input, sink, EdgeKind::Forward);
        Ok(())
    }

    /// Gives the stream a node of its own, adding a transform for pending steps.
    fn materialize(&mut self, stream: Stream) -> usize {
        if stream.steps.is_empty() {
            return stream.node;
        }
        let transform = Transform::new(stream.label.clone(), stream.steps);
        let node = self
            .program
            .add_node(stream.label, NodeKind::Operator(Arc::new(transform)));
        self.program.add_edge(stream.node, node, EdgeKind::Forward);
        node
    }

    fn physical(
        &self,
        expr: &datafusion::logical_expr::Expr,
        schema: &DFSchema,
    ) -> Result<Arc<dyn PhysicalExpr>> {
        create_physical_expr(
            expr,
            schema,
            &self.props,
            &PhysicalPlanningContext::default(),
        )
    }

    fn build(&mut self, plan: &LogicalPlan) -> Result<Stream> {
        match plan {
            LogicalPlan::TableScan(scan) => {
                let Some(entry) = (scan.source.as_ref() as &dyn Any).downcast_ref::<TableEntry>()
                else {
                    return plan_err!("table '{}' cannot be read", scan.table_name);
                };
                if !scan.filters.is_empty() || scan.fetch.is_some() {
                    return plan_err!(
                        "unexpected pushed-down filter or limit on '{}'",
                        scan.table_name
                    );
                }
                let factory = entry
                    .table
                    .source_factory(scan.projection.clone())
                    .map_err(|e| datafusion::error::DataFusionError::Plan(e.to_string()))?;
                let label = format!("source:{}", entry.table.name);
                let node = self
                    .program
                    .add_node(label.clone(), NodeKind::Source(factory));
                Ok(Stream {
                    node,
                    label: format!("{label}:transform"),
                    steps: vec![],
                })
            }
            LogicalPlan::Filter(filter) => {
                let mut stream = self.build(&filter.input)?;
                let predicate = self.physical(&filter.predicate, filter.input.schema())?;
                stream.steps.push(Step::Filter(predicate));
                Ok(stream)
            }
            LogicalPlan::Projection(projection) => {
                let mut stream = self.build(&projection.input)?;
                let exprs = projection
                    .expr
                    .iter()
                    .map(|e| self.physical(e, projection.input.schema()))
                    .collect::<Result<Vec<_>>>()?;
                let schema = with_timestamp(projection.schema.as_arrow());
                stream.steps.push(Step::Project(exprs, schema));
                Ok(stream)
            }
            LogicalPlan::SubqueryAlias(alias) => self.build(&alias.input),
            other => not_impl_err!(
                "{} is not supported in a streaming query yet",
                other.display()
            ),
        }
    }
}
