//! Rewrites DataFusion logical plans into the streaming dataflow.
//!
//! Stateless nodes (filters, projections, aliases) are evaluated by a fused
//! [`Transform`](crate::operator::Transform) after the node that feeds them; every expression
//! becomes a DataFusion physical expression over the input's visible columns (the hidden
//! event-time column sits after them and is carried through).

mod joins;

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{DFSchema, plan_err};
use datafusion::error::Result;
use datafusion::logical_expr::LogicalPlan;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::physical_expr::execution_props::ExecutionProps;
use datafusion::physical_expr::{PhysicalExpr, create_physical_expr};

use super::join_keys::{JoinKeys, join_keys};
use super::provider::TableEntry;
use super::refusal::{Anchor, check_window_calls, refuse, unsupported};
use super::row_time::evaluate_row_time;
use super::window_fn::{WindowSpec, is_window_struct, plan_window, window_spec};
use crate::connector::PlannedSink;
use crate::operator::aggregate::{AggregateSpec, key_schema};
use crate::operator::instant::{InstantJoin, JoinKind, RankSpec, Ranking, WindowFunctions};
use crate::operator::window::{WindowAggregate, WindowKind};
use datafusion::arrow::compute::SortOptions;
use datafusion::common::JoinType;
use datafusion::logical_expr::{Aggregate, Expr, ExprSchemable, Join, Window, build_join_schema};
use datafusion::physical_expr::aggregate::LoweredAggregateBuilder;

use crate::connector::{ConnectorConfig, ConnectorTable};
use crate::dataflow::{EdgeKind, NodeKind, Program, node_id};
use crate::operator::Transform;
use crate::operator::join::TtlJoin;
use crate::operator::transform::Step;
use crate::operator::updating::UpdatingAggregate;
use crate::task::{OperatorFactory, with_timestamp, with_updating};

/// A stream under construction: the node that produces it and stateless steps still to apply.
struct Stream {
    node: usize,
    label: String,
    steps: Vec<Step>,
    /// The definition of the steps (the logical plan nodes they come from), for the id of the
    /// transform that applies them.
    definition: Vec<String>,
    /// Rows carry a retraction flag before the event time (an updating result).
    updating: bool,
}

/// How long a windowless join keeps rows, and an updating aggregate a group no row was added
/// to, unless `SET updating_ttl` says otherwise (Arroyo's default).
pub const DEFAULT_UPDATING_TTL: i64 = 24 * 3600 * 1_000_000_000;

/// Accumulates the dataflow of every INSERT INTO and SELECT of a file.
pub struct Builder {
    /// State TTL of windowless joins and updating aggregates, in nanoseconds (`SET
    /// updating_ttl`).
    pub updating_ttl: i64,
    program: Program,
    /// Source nodes by table and projected columns.
    scans: HashMap<(String, Option<Vec<usize>>), usize>,
    sinks: HashMap<String, usize>,
    sink_order: Vec<PlannedSink>,
    props: ExecutionProps,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            updating_ttl: DEFAULT_UPDATING_TTL,
            program: Program::default(),
            scans: HashMap::new(),
            sinks: HashMap::new(),
            sink_order: Vec::new(),
            props: ExecutionProps::new(),
        }
    }
}

impl Builder {
    /// The tables written to, in the order first written.
    pub fn sinks(&self) -> &[PlannedSink] {
        &self.sink_order
    }

    pub fn finish(self) -> Program {
        self.program
    }

    /// Adds `plan`, writing into `table`.
    pub fn add_insert(&mut self, table: &ConnectorTable, plan: &LogicalPlan) -> Result<()> {
        // Window definitions are checked first, wherever they are, so that their errors come
        // before those of what is built on them.
        plan.apply(|node| {
            if let LogicalPlan::Aggregate(agg) = node {
                for g in &agg.group_expr {
                    window_spec(g)?;
                }
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
        check_window_calls(plan)?;
        let renamed = super::naming::distinct_names(plan)?;
        let plan = renamed.as_ref().unwrap_or(plan);
        let stream = self.build(plan)?;
        let updating = stream.updating;
        let input = self.materialize(stream);
        let sink = match self.sinks.get(&table.name) {
            Some(&node) => node,
            None => {
                let factory = table
                    .sink_factory(updating, plan.schema().as_arrow())
                    .map_err(|e| datafusion::error::DataFusionError::Plan(e.to_string()))?;
                let id = node_id("sink", &format!("table {}", table.name), &[]);
                let node = self.program.add_node(
                    format!("sink:{}", table.name),
                    id,
                    NodeKind::Operator(factory),
                );
                if matches!(table.config, ConnectorConfig::SingleFile { .. }) {
                    // One file, one writer.
                    self.program.nodes[node].parallelism = Some(1);
                }
                self.sinks.insert(table.name.clone(), node);
                self.sink_order.push(crate::connector::rerun(table));
                node
            }
        };
        self.program.add_edge(input, sink, EdgeKind::Forward);
        Ok(())
    }

    /// Adds a stateful operator of kind `kind`, defined by the logical plan node `plan` and
    /// fed by `inputs` (node, shuffle keys: input index = position), and returns the stream
    /// it produces.
    fn add_operator(
        &mut self,
        (kind, plan): (&str, &LogicalPlan),
        op: Arc<dyn OperatorFactory>,
        inputs: Vec<(usize, Vec<Arc<dyn PhysicalExpr>>)>,
        updating: bool,
    ) -> Stream {
        let label = self.label(kind);
        let upstream: Vec<&str> = inputs
            .iter()
            .map(|(from, _)| self.program.id(*from))
            .collect();
        let id = node_id(kind, &plan.display().to_string(), &upstream);
        let node = self
            .program
            .add_node(label.clone(), id, NodeKind::Operator(op));
        for (from, keys) in inputs {
            self.program.add_edge(from, node, EdgeKind::Shuffle(keys));
        }
        Stream {
            node,
            label: format!("{label}:transform"),
            steps: vec![],
            definition: vec![],
            updating,
        }
    }

    /// The label of the next node, of kind `kind`: `<kind>:<its index>`.
    fn label(&self, kind: &str) -> String {
        format!("{kind}:{}", self.program.nodes.len())
    }

    /// Gives the stream a node of its own, adding a transform for pending steps.
    fn materialize(&mut self, stream: Stream) -> usize {
        if stream.steps.is_empty() {
            return stream.node;
        }
        let transform = Transform::new(stream.label.clone(), stream.steps);
        let id = node_id(
            "transform",
            &stream.definition.join("\n"),
            &[self.program.id(stream.node)],
        );
        let node = self
            .program
            .add_node(stream.label, id, NodeKind::Operator(Arc::new(transform)));
        self.program.add_edge(stream.node, node, EdgeKind::Forward);
        node
    }

    fn physical(
        &self,
        expr: &datafusion::logical_expr::Expr,
        schema: &DFSchema,
    ) -> Result<Arc<dyn PhysicalExpr>> {
        let expr = create_physical_expr(
            expr,
            schema,
            &self.props,
            &PhysicalPlanningContext::default(),
        )?;
        evaluate_row_time(expr)
    }

    fn window_functions(&mut self, w: &Window) -> Result<Stream> {
        let input_schema = w.input.schema().clone();
        let mut functions = Vec::new();
        for e in &w.window_expr {
            let inner = match e {
                Expr::Alias(a) => a.expr.as_ref(),
                other => other,
            };
            let Expr::WindowFunction(wf) = inner else {
                return refuse(
                    format!("window expression {e} is not supported"),
                    Anchor::Keyword("OVER"),
                );
            };
            let function = match wf.fun.name() {
                "row_number" => Ranking::RowNumber,
                "rank" => Ranking::Rank,
                "dense_rank" => Ranking::DenseRank,
                other => {
                    return refuse(
                        format!(
                            "window function {other}() is not supported: use ROW_NUMBER(), \
                             RANK() or DENSE_RANK()"
                        ),
                        Anchor::Keyword("OVER"),
                    );
                }
            };
            let mut windowed = false;
            let mut partition_by = Vec::new();
            for p in &wf.params.partition_by {
                windowed |= is_window_struct(&p.get_type(&input_schema)?);
                partition_by.push(self.physical(p, &input_schema)?);
            }
            if !windowed {
                return refuse(
                    format!(
                        "{}() needs PARTITION BY a window column: ranking functions run on \
                         windowed input, one window at a time",
                        wf.fun.name()
                    ),
                    Anchor::Keyword("OVER"),
                );
            }
            let order_by = wf
                .params
                .order_by
                .iter()
                .map(|s| {
                    Ok((
                        self.physical(&s.expr, &input_schema)?,
                        SortOptions {
                            descending: !s.asc,
                            nulls_first: s.nulls_first,
                        },
                    ))
                })
                .collect::<Result<Vec<_>>>()?;
            functions.push(RankSpec {
                function,
                partition_by,
                order_by,
            });
        }
        let keys = functions[0].partition_by.clone();
        let stream = self.build(&w.input)?;
        if stream.updating {
            return refuse(
                "ranking functions over updating input are not supported: they run on \
                 windowed input",
                Anchor::Keyword("OVER"),
            );
        }
        let input = self.materialize(stream);
        let op = WindowFunctions {
            label: self.label("window_functions"),
            functions,
            schema: with_timestamp(w.schema.as_arrow()),
        };
        let plan = LogicalPlan::Window(w.clone());
        Ok(self.add_operator(
            ("window_functions", &plan),
            Arc::new(op),
            vec![(input, keys)],
            false,
        ))
    }

    /// The aggregates of `agg`, as physical expressions.
    fn aggregate_specs(&self, agg: &Aggregate) -> Result<Vec<AggregateSpec>> {
        let input_schema = agg.input.schema();
        agg.aggr_expr
            .iter()
            .map(|e| {
                let (name, inner) = match e {
                    Expr::Alias(a) => (a.name.clone(), a.expr.as_ref()),
                    other => (other.schema_name().to_string(), other),
                };
                let lowered = LoweredAggregateBuilder::new(
                    inner,
                    input_schema,
                    input_schema.as_arrow(),
                    &self.props,
                    &PhysicalPlanningContext::default(),
                )
                .with_name(name)
                .build()?;
                // `row_time()` among the arguments reads the rows' event time.
                let mut aggregate = lowered.aggregate;
                let exprs = aggregate.all_expressions();
                let args = exprs
                    .args
                    .into_iter()
                    .map(evaluate_row_time)
                    .collect::<Result<Vec<_>>>()?;
                let order_by = exprs
                    .order_by_exprs
                    .into_iter()
                    .map(evaluate_row_time)
                    .collect::<Result<Vec<_>>>()?;
                if let Some(replaced) = aggregate.with_new_expressions(args, order_by) {
                    aggregate = Arc::new(replaced);
                }
                Ok(AggregateSpec {
                    expr: aggregate,
                    filter: lowered.filter.map(evaluate_row_time).transpose()?,
                })
            })
            .collect()
    }

    /// GROUP BY without a window: an updating result.
    fn updating_aggregate(
        &mut self,
        agg: &Aggregate,
        keys: Vec<Arc<dyn PhysicalExpr>>,
    ) -> Result<Stream> {
        let aggregates = self.aggregate_specs(agg)?;
        let key_schema = key_schema(&keys, agg.input.schema().as_arrow())?;
        let stream = self.build(&agg.input)?;
        let updating_input = stream.updating;
        let input = self.materialize(stream);
        let op = UpdatingAggregate {
            label: self.label("updating_aggregate"),
            keys: keys.clone(),
            key_schema,
            aggregates,
            input_schema: Arc::new(agg.input.schema().as_arrow().clone()),
            updating_input,
            ttl: self.updating_ttl,
            schema: with_updating(agg.schema.as_arrow()),
        };
        let plan = LogicalPlan::Aggregate(agg.clone());
        Ok(self.add_operator(
            ("updating_aggregate", &plan),
            Arc::new(op),
            vec![(input, keys)],
            true,
        ))
    }

    fn aggregate(&mut self, agg: &Aggregate) -> Result<Stream> {
        let input_schema = agg.input.schema().clone();
        let input_window = plan_window(&agg.input)?;
        let mut window = None;
        let mut window_position = None;
        let mut instant = false;
        let mut keys = Vec::new();
        for (i, g) in agg.group_expr.iter().enumerate() {
            if let Some(spec) = window_spec(g)? {
                if window.is_some() {
                    return refuse(
                        "a GROUP BY can have only one window function",
                        Anchor::Window(spec),
                    );
                }
                window = Some(spec);
                window_position = Some(i);
                continue;
            }
            if is_window_struct(&g.get_type(&input_schema)?) {
                instant = true;
            }
            keys.push(self.physical(g, &input_schema)?);
        }
        let kind = match (window, input_window) {
            // A window over the results of another: it must be the same window, whose
            // results then form the groups as they are.
            (Some(outer), Some(inner)) if outer != inner => {
                return refuse(
                    format!(
                        "the window in GROUP BY, {}, does not match the window of its input, \
                         {}: group by the input's window column, or by the same window",
                        outer.describe(),
                        inner.describe()
                    ),
                    Anchor::Window(outer),
                );
            }
            (Some(WindowSpec::Session { .. }), Some(_)) => {
                return refuse(
                    "a SESSION window cannot be formed again over the results of sessions: \
                     group by the input's window column instead",
                    Anchor::Function("session"),
                );
            }
            (Some(spec), Some(_)) => WindowKind::Instant {
                width: spec.width(),
            },
            (Some(WindowSpec::Tumble { width }), None) => WindowKind::Tumble { width },
            (Some(WindowSpec::Hop { slide, width }), None) => WindowKind::Hop { slide, width },
            (Some(WindowSpec::Session { gap }), None) => WindowKind::Session { gap },
            (None, Some(inner)) if instant => WindowKind::Instant {
                width: inner.width(),
            },
            (None, Some(inner)) => {
                return refuse(
                    format!(
                        "this aggregate reads the results of {} but groups by no window: add \
                         the input's window column (or the same window function) to its GROUP \
                         BY; an aggregate over every window would never be complete",
                        inner.describe()
                    ),
                    Anchor::Window(inner),
                );
            }
            (None, None) if instant => WindowKind::Instant { width: 1 },
            (None, None) => return self.updating_aggregate(agg, keys),
        };
        let aggregates = self.aggregate_specs(agg)?;
        let key_schema = key_schema(&keys, input_schema.as_arrow())?;
        let stream = self.build(&agg.input)?;
        if stream.updating {
            return refuse(
                "windowed aggregates over updating input (a GROUP BY without a window, or a \
                 debezium_json source) are not supported: aggregate it without a window",
                window.map_or(Anchor::Statement, Anchor::Window),
            );
        }
        let input = self.materialize(stream);
        let op = WindowAggregate {
            label: self.label("window_aggregate"),
            window: kind,
            keys: keys.clone(),
            key_schema,
            aggregates,
            window_position,
            schema: with_timestamp(agg.schema.as_arrow()),
        };
        let plan = LogicalPlan::Aggregate(agg.clone());
        Ok(self.add_operator(
            ("window_aggregate", &plan),
            Arc::new(op),
            vec![(input, keys)],
            false,
        ))
    }

    fn build(&mut self, plan: &LogicalPlan) -> Result<Stream> {
        match plan {
            LogicalPlan::TableScan(scan) => {
                let table = match (scan.source.as_ref() as &dyn Any).downcast_ref::<TableEntry>() {
                    Some(TableEntry::Connector(table)) => table,
                    Some(TableEntry::Memory { .. }) => {
                        return plan_err!(
                            "memory table '{}' is read before any INSERT INTO it",
                            scan.table_name
                        );
                    }
                    _ => return plan_err!("table '{}' cannot be read", scan.table_name),
                };
                if !scan.filters.is_empty() || scan.fetch.is_some() {
                    return plan_err!(
                        "unexpected pushed-down filter or limit on '{}'",
                        scan.table_name
                    );
                }
                let label = format!("source:{}", table.name);
                let updating = table.updating();
                // Every read of a table with the same columns shares one source: the table is
                // read (and decoded) once, and its rows go to each reader.
                let key = (table.name.clone(), scan.projection.clone());
                let node = match self.scans.get(&key) {
                    Some(&node) => node,
                    None => {
                        let factory = table
                            .source_factory(scan.projection.clone())
                            .map_err(|e| datafusion::error::DataFusionError::Plan(e.to_string()))?;
                        let mut definition = format!("table {}", table.name);
                        if self.scans.keys().any(|(name, _)| name == &table.name) {
                            // A further scan of the table, with other columns: rule 1.
                            let columns = scan.projected_schema.fields().iter().map(|f| f.name());
                            definition.push_str(&format!(
                                " ({})",
                                columns.cloned().collect::<Vec<_>>().join(", ")
                            ));
                        }
                        let id = node_id("source", &definition, &[]);
                        let node =
                            self.program
                                .add_node(label.clone(), id, NodeKind::Source(factory));
                        self.scans.insert(key, node);
                        node
                    }
                };
                Ok(Stream {
                    node,
                    label: format!("{label}:transform"),
                    steps: vec![],
                    definition: vec![],
                    updating,
                })
            }
            LogicalPlan::Filter(filter) => {
                let mut stream = self.build(&filter.input)?;
                let predicate = self.physical(&filter.predicate, filter.input.schema())?;
                stream.steps.push(Step::Filter(predicate));
                stream.definition.push(plan.display().to_string());
                Ok(stream)
            }
            LogicalPlan::Projection(projection) => {
                let mut stream = self.build(&projection.input)?;
                let exprs = projection
                    .expr
                    .iter()
                    .map(|e| self.physical(e, projection.input.schema()))
                    .collect::<Result<Vec<_>>>()?;
                let schema = if stream.updating {
                    with_updating(projection.schema.as_arrow())
                } else {
                    with_timestamp(projection.schema.as_arrow())
                };
                stream.steps.push(Step::Project(exprs, schema));
                stream.definition.push(plan.display().to_string());
                Ok(stream)
            }
            LogicalPlan::SubqueryAlias(alias) => self.build(&alias.input),
            LogicalPlan::Unnest(unnest) => {
                if unnest.list_type_columns.is_empty()
                    || !unnest.struct_type_columns.is_empty()
                    || unnest.list_type_columns.iter().any(|(_, l)| l.depth != 1)
                {
                    return unsupported(plan);
                }
                let mut stream = self.build(&unnest.input)?;
                let schema = if stream.updating {
                    with_updating(unnest.schema.as_arrow())
                } else {
                    with_timestamp(unnest.schema.as_arrow())
                };
                stream.steps.push(Step::Unnest {
                    columns: unnest.list_type_columns.iter().map(|(c, _)| *c).collect(),
                    sources: unnest.dependency_indices.clone(),
                    schema,
                });
                stream.definition.push(plan.display().to_string());
                Ok(stream)
            }
            LogicalPlan::Aggregate(agg) => self.aggregate(agg),
            LogicalPlan::Window(window) => self.window_functions(window),
            LogicalPlan::Join(join) => self.join(join),
            LogicalPlan::Union(union) => {
                let label = self.label("union");
                let merge = Transform::new(label.clone(), vec![]);
                // Added before its inputs (which keeps the labels and order of earlier
                // versions); its id once they are known.
                let node = self.program.add_node(
                    label.clone(),
                    String::new(),
                    NodeKind::Operator(Arc::new(merge)),
                );
                let mut updating = Vec::new();
                let mut inputs = Vec::new();
                for input in &union.inputs {
                    let stream = self.build(input)?;
                    updating.push(stream.updating);
                    let from = self.materialize(stream);
                    self.program.add_edge(from, node, EdgeKind::Forward);
                    inputs.push(from);
                }
                let upstream: Vec<&str> = inputs.iter().map(|i| self.program.id(*i)).collect();
                let id = node_id("union", &plan.display().to_string(), &upstream);
                self.program.set_id(node, id);
                if updating.iter().any(|u| *u != updating[0]) {
                    return refuse(
                        "UNION ALL of updating and append-only inputs is not supported",
                        Anchor::Keyword("UNION"),
                    );
                }
                Ok(Stream {
                    node,
                    label,
                    steps: vec![],
                    definition: vec![],
                    updating: updating[0],
                })
            }
            other => unsupported(other),
        }
    }
}

/// A join type as SQL spells it.
fn join_name(t: JoinType) -> &'static str {
    match t {
        JoinType::Inner => "INNER",
        JoinType::Left => "LEFT",
        JoinType::Right => "RIGHT",
        JoinType::Full => "FULL",
        JoinType::LeftSemi | JoinType::RightSemi => "SEMI",
        JoinType::LeftAnti | JoinType::RightAnti => "ANTI",
        JoinType::LeftMark | JoinType::RightMark => "MARK",
    }
}
