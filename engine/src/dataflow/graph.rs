//! The dataflow graph a query plans to: nodes (sources and operators, sinks being operators
//! without outputs) and the edges between them.
//!
//! Every node has an id that stays the same when other parts of the plan change, so that a
//! checkpoint's state finds its node again in a new plan (Flink's operator uid, derived):
//!
//! 1. a source is `source-<h>` with `h` the hash of its table's name (a table read with
//!    several column sets: its first scan, in plan order, has the bare name; each further one
//!    adds its column names);
//! 2. a sink is `sink-<h>`, `h` the hash of its table's name;
//! 3. any other node is `<kind>-<h>`, `h` the hash of its own definition (the logical plan
//!    node it comes from, as DataFusion prints it, or the expressions a transform applies)
//!    and of the ids of its inputs in order: it changes when the node or anything upstream
//!    changes, and only then;
//! 4. a node whose id an earlier node of the plan already has (the same definition over the
//!    same inputs, twice) gets `-2`, `-3`... after it, in plan order.
//!
//! `h` is FNV-1a 64 over the text, in 16 hex digits.

use std::fmt;
use std::sync::Arc;

use datafusion::physical_expr::PhysicalExpr;

use crate::storage::checksum::fnv1a64;
use crate::task::{OperatorFactory, SourceFactory};

/// A planned query, ready to run at any parallelism.
#[derive(Debug, Clone, Default)]
pub struct Program {
    /// Nodes in topological order: every edge goes from a lower to a higher index.
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
}

#[derive(Clone)]
pub struct Node {
    /// Stable identity (see the module's rules): what a checkpoint files its state under.
    pub id: String,
    /// Human-readable name, used in logs and task names (`source:impulse`, `sink:stdout`).
    pub label: String,
    pub kind: NodeKind,
    /// A fixed parallelism (a file source reads on one subtask); `None` takes the job's.
    pub parallelism: Option<usize>,
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.id)
            .field("label", &self.label)
            .field("parallelism", &self.parallelism)
            .finish()
    }
}

#[derive(Clone)]
pub enum NodeKind {
    Source(Arc<dyn SourceFactory>),
    Operator(Arc<dyn OperatorFactory>),
}

/// How batches move from every subtask of `from` to the subtasks of `to`.
#[derive(Debug, Clone)]
pub struct Edge {
    pub from: usize,
    pub to: usize,
    pub kind: EdgeKind,
}

#[derive(Clone)]
pub enum EdgeKind {
    /// Subtask i feeds subtask i; when the parallelisms differ, batches go round-robin to
    /// the downstream subtasks (a rebalance).
    Forward,
    /// Rows go to the subtask their key hashes to; the expressions evaluate on the upstream
    /// node's output batches.
    Shuffle(Vec<Arc<dyn PhysicalExpr>>),
}

impl fmt::Debug for EdgeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EdgeKind::Forward => f.write_str("Forward"),
            EdgeKind::Shuffle(keys) => write!(f, "Shuffle({} keys)", keys.len()),
        }
    }
}

/// The id of a node of kind `kind` (`source`, `join`...) from its definition and the ids of
/// its inputs, in order.
pub fn node_id(kind: &str, definition: &str, inputs: &[&str]) -> String {
    let mut text = definition.to_string();
    for input in inputs {
        text.push_str("\n<- ");
        text.push_str(input);
    }
    format!("{kind}-{:016x}", fnv1a64(text.as_bytes()))
}

impl Program {
    /// The labels of the sinks (nodes without outputs) that commit output for good at each
    /// checkpoint ([`OperatorFactory::rewinds`] false): a restore may not fall back past a
    /// checkpoint they committed.
    pub fn committing_sinks(&self) -> Vec<&str> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.edges.iter().any(|e| e.from == *i))
            .filter(|(_, n)| match &n.kind {
                NodeKind::Operator(f) => !f.rewinds(),
                NodeKind::Source(_) => false,
            })
            .map(|(_, n)| n.label.as_str())
            .collect()
    }

    /// Adds a node with id `id` (made unique: see rule 4) and returns its index.
    pub fn add_node(&mut self, label: impl Into<String>, id: String, kind: NodeKind) -> usize {
        self.nodes.push(Node {
            id: String::new(),
            label: label.into(),
            kind,
            parallelism: None,
        });
        let node = self.nodes.len() - 1;
        self.set_id(node, id);
        node
    }

    /// Gives node `node` the id `id`, made unique (see rule 4): for a node added before its
    /// inputs were known.
    pub fn set_id(&mut self, node: usize, id: String) {
        let mut unique = id.clone();
        let mut n = 1;
        while self
            .nodes
            .iter()
            .enumerate()
            .any(|(i, other)| i != node && other.id == unique)
        {
            n += 1;
            unique = format!("{id}-{n}");
        }
        self.nodes[node].id = unique;
    }

    /// The id of node `node`.
    pub fn id(&self, node: usize) -> &str {
        &self.nodes[node].id
    }

    pub fn add_edge(&mut self, from: usize, to: usize, kind: EdgeKind) {
        self.edges.push(Edge { from, to, kind });
    }

    /// Edges into `node`, in the order they were added; their position is the operator's
    /// input index.
    pub fn in_edges(&self, node: usize) -> impl Iterator<Item = &Edge> {
        self.edges.iter().filter(move |e| e.to == node)
    }

    pub fn out_edges(&self, node: usize) -> impl Iterator<Item = &Edge> {
        self.edges.iter().filter(move |e| e.from == node)
    }

    /// A one-line-per-node description, for logs and `EXPLAIN`-like output.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let outs: Vec<String> = self
                .out_edges(i)
                .map(|e| format!("{}({:?})", e.to, e.kind))
                .collect();
            s.push_str(&format!(
                "{i}: {} ({}) -> [{}]\n",
                n.label,
                n.id,
                outs.join(", ")
            ));
        }
        s
    }
}

/// What a node does in the graph, as `explain` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Source,
    Operator,
    /// An operator without outputs.
    Sink,
}

/// A node as `explain` shows it.
#[derive(Debug, Clone)]
pub struct NodeShape {
    pub id: String,
    pub label: String,
    pub role: Role,
    /// Its subtasks at the parallelism the shape was made for.
    pub parallelism: usize,
}

/// How an edge routes batches, as `explain` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Subtask i feeds subtask i.
    Forward,
    /// A forward edge between nodes of different parallelism: round robin.
    Rebalance,
    /// By the hash of these key expressions (column references without their index).
    Shuffle(Vec<String>),
}

/// An edge as `explain` shows it; nodes by their index in [`Shape::nodes`].
#[derive(Debug, Clone)]
pub struct EdgeShape {
    pub from: usize,
    pub to: usize,
    pub route: Route,
}

/// The graph of a program at one parallelism: what runs, and how batches move.
#[derive(Debug, Clone)]
pub struct Shape {
    /// In topological order.
    pub nodes: Vec<NodeShape>,
    pub edges: Vec<EdgeShape>,
}

/// An expression as DataFusion prints it, without the `@index` of its column references.
fn key_text(expr: &dyn PhysicalExpr) -> String {
    let printed = expr.to_string();
    let mut out = String::with_capacity(printed.len());
    let mut chars = printed.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '@' && chars.peek().is_some_and(char::is_ascii_digit) {
            while chars.peek().is_some_and(char::is_ascii_digit) {
                chars.next();
            }
            continue;
        }
        out.push(c);
    }
    out
}

impl Program {
    /// The graph as it runs at `parallelism` (nodes with a fixed parallelism keep it), the
    /// same rule as the runtime's.
    pub fn shape(&self, parallelism: usize) -> Shape {
        let par: Vec<usize> = self
            .nodes
            .iter()
            .map(|n| n.parallelism.unwrap_or(parallelism).max(1))
            .collect();
        let nodes = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| NodeShape {
                id: n.id.clone(),
                label: n.label.clone(),
                role: match n.kind {
                    NodeKind::Source(_) => Role::Source,
                    NodeKind::Operator(_) if self.out_edges(i).next().is_none() => Role::Sink,
                    NodeKind::Operator(_) => Role::Operator,
                },
                parallelism: par[i],
            })
            .collect();
        let edges = self
            .edges
            .iter()
            .map(|e| EdgeShape {
                from: e.from,
                to: e.to,
                route: match &e.kind {
                    EdgeKind::Forward if par[e.from] == par[e.to] => Route::Forward,
                    EdgeKind::Forward => Route::Rebalance,
                    EdgeKind::Shuffle(keys) => {
                        Route::Shuffle(keys.iter().map(|k| key_text(k.as_ref())).collect())
                    }
                },
            })
            .collect();
        Shape { nodes, edges }
    }
}

#[cfg(test)]
mod tests {
    use datafusion::physical_expr::expressions::Column;

    use super::*;

    #[test]
    fn keys_are_shown_without_column_indexes() {
        let key = Column::new("bidder", 3);
        assert_eq!(key_text(&key), "bidder");
    }
}
