//! The dataflow graph a query plans to: nodes (sources and operators, sinks being operators
//! without outputs) and the edges between them.

use std::fmt;
use std::sync::Arc;

use datafusion::physical_expr::PhysicalExpr;

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
    /// Human-readable name, used in logs and task names (`source:impulse`, `sink:stdout`).
    pub label: String,
    pub kind: NodeKind,
    /// A fixed parallelism (a file source reads on one subtask); `None` takes the job's.
    pub parallelism: Option<usize>,
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
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
    /// Subtask i feeds subtask i; becomes [`EdgeKind::Rebalance`] when the parallelisms differ.
    Forward,
    /// Batches go round-robin to the downstream subtasks.
    Rebalance,
    /// Rows go to the subtask their key hashes to; the expressions evaluate on the upstream
    /// node's output batches.
    Shuffle(Vec<Arc<dyn PhysicalExpr>>),
}

impl fmt::Debug for EdgeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EdgeKind::Forward => f.write_str("Forward"),
            EdgeKind::Rebalance => f.write_str("Rebalance"),
            EdgeKind::Shuffle(keys) => write!(f, "Shuffle({} keys)", keys.len()),
        }
    }
}

impl Program {
    /// Adds a node and returns its index.
    pub fn add_node(&mut self, label: impl Into<String>, kind: NodeKind) -> usize {
        self.nodes.push(Node {
            label: label.into(),
            kind,
            parallelism: None,
        });
        self.nodes.len() - 1
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
            s.push_str(&format!("{i}: {} -> [{}]\n", n.label, outs.join(", ")));
        }
        s
    }
}
