//! What a checkpoint of a dataflow holds beside its MANIFEST, per format, and how it is read
//! back into the nodes of a plan.
//!
//! Format 1 (this binary): `topology.json` is `{"format": 1, "nodes": [{"id", "label",
//! "parallelism"}]}` and a subtask's state table is the file `<node id>/<subtask>/<table>`.
//! A restore matches nodes by id (see [`super::graph`]): a node of the plan that the
//! checkpoint does not have starts empty; a node of the checkpoint that the plan does not
//! have is refused if it holds state (more than the runtime's watermark), since that state
//! would be lost, and dropped otherwise. When the ids differ but the labels are the same,
//! node by node (the same query, its ids derived by another DataFusion's printing), nodes
//! match by position.
//!
//! Format 0 (the first arroyod): `topology.json` is `{"nodes": [[label, parallelism]]}` and the
//! file is `<node index>/<subtask>/<table>`; the plan must have the same labels, in order.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use tracing::warn;

use super::Program;
use super::error::DataflowError;
use crate::storage::{CheckpointStore, FORMAT, Manifest};
use crate::task::protocol::{Pending, RUNTIME_TABLE, RuntimeState};
use crate::task::{RestoredState, StateError, TaskState};

/// The file that describes the dataflow a checkpoint was taken of.
pub(super) const TOPOLOGY: &str = "topology.json";

/// A checkpoint file: name and bytes.
pub(super) type File = (String, Vec<u8>);

/// A node as a checkpoint of format 1 records it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct TopologyNode {
    pub id: String,
    pub label: String,
    pub parallelism: usize,
}

/// `topology.json` of format 1.
#[derive(Debug, Serialize, Deserialize)]
struct Topology {
    format: u32,
    nodes: Vec<TopologyNode>,
}

/// `topology.json` of format 0: per node, label and parallelism.
#[derive(Debug, Deserialize)]
struct TopologyV0 {
    nodes: Vec<(String, usize)>,
}

/// The `topology.json` of a checkpoint of `nodes`.
pub(super) fn topology(nodes: &[TopologyNode]) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(&Topology {
        format: FORMAT,
        nodes: nodes.to_vec(),
    })
}

/// The checkpoint files of a subtask's snapshot: one Arrow IPC file per table, named
/// `<node id>/<subtask>/<table>` (`ids`: by node index).
pub(super) fn encode(pending: &Pending, ids: &[String]) -> Result<Vec<File>, StateError> {
    let (node, subtask) = pending.task;
    let id = &ids[node];
    Ok(pending
        .state
        .encode()?
        .into_iter()
        .map(|(table, bytes)| (format!("{id}/{subtask}/{table}"), bytes))
        .collect())
}

/// Reads checkpoint `manifest` into the state of each node of `program` (None: the node has
/// no state in it).
pub(super) async fn load(
    store: &CheckpointStore,
    manifest: &Manifest,
    program: &Program,
) -> Result<Vec<Option<RestoredState>>, DataflowError> {
    let epoch = manifest.epoch;
    let failed = |source| DataflowError::Checkpoint {
        what: format!("reading checkpoint {epoch} under {}", store.display()),
        source,
    };
    let incompatible = |reason: String| DataflowError::Incompatible {
        epoch,
        location: store.display().to_string(),
        reason,
    };
    let text = store.read(manifest, TOPOLOGY).await.map_err(failed)?;
    // Per node of the checkpoint: the key its files are named by, its label, its parallelism,
    // and the node of the plan it is (None: the plan does not have it).
    let nodes: Vec<(String, String, usize, Option<usize>)> = if manifest.format == 0 {
        let topology: TopologyV0 = serde_json::from_slice(&text)
            .map_err(|source| DataflowError::Topology { epoch, source })?;
        let labels: Vec<&str> = program.nodes.iter().map(|n| n.label.as_str()).collect();
        let taken: Vec<&str> = topology.nodes.iter().map(|(l, _)| l.as_str()).collect();
        if labels != taken {
            return Err(incompatible(format!(
                "was taken of another dataflow ({} nodes, this one has {})",
                taken.len(),
                labels.len()
            )));
        }
        (topology.nodes.iter().enumerate())
            .map(|(i, (label, p))| (i.to_string(), label.clone(), *p, Some(i)))
            .collect()
    } else {
        let topology: Topology = serde_json::from_slice(&text)
            .map_err(|source| DataflowError::Topology { epoch, source })?;
        match_nodes(&topology.nodes, program)
    };
    let mut restored: Vec<Option<RestoredState>> = vec![None; program.nodes.len()];
    let mut by_key = HashMap::new();
    for (key, label, parallelism, node) in nodes {
        if let Some(node) = node {
            restored[node] = Some(RestoredState {
                parallelism,
                subtasks: vec![TaskState::new(); parallelism],
                watermark: None,
                epoch,
            });
        }
        by_key.insert(key, (label, node));
    }
    for entry in manifest.files.iter().filter(|f| f.name != TOPOLOGY) {
        let mut parts = entry.name.splitn(3, '/');
        let (Some(key), Some(subtask), Some(table)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(incompatible(format!(
                "has a file {} of no subtask",
                entry.name
            )));
        };
        if let Some((label, None)) = by_key.get(key) {
            // A node this plan does not have: only its watermark may be left behind.
            if table == RUNTIME_TABLE {
                continue;
            }
            return Err(incompatible(format!(
                "holds state of {label} ({key}, table '{table}'), which this query does not have: restoring it would lose that state"
            )));
        }
        let slot = subtask.parse::<usize>().ok().and_then(|subtask| {
            let node = by_key.get(key)?.1?;
            restored[node].as_mut()?.subtasks.get_mut(subtask)
        });
        let Some(slot) = slot else {
            return Err(incompatible(format!(
                "has a file {} of no subtask of this dataflow",
                entry.name
            )));
        };
        let bytes = store.read(manifest, &entry.name).await.map_err(failed)?;
        slot.decode_into(table, bytes)
            .map_err(|source| DataflowError::State { epoch, source })?;
    }
    for node in restored.iter_mut().flatten() {
        let marks: Vec<Option<i64>> = node
            .json::<RuntimeState>(RUNTIME_TABLE)
            .map_err(|source| DataflowError::State { epoch, source })?
            .into_iter()
            .map(|s| s.first().and_then(|r| r.watermark))
            .collect();
        // The lowest watermark of the old subtasks; none if one had none.
        node.watermark = if marks.iter().all(Option::is_some) {
            marks.into_iter().flatten().min()
        } else {
            None
        };
    }
    Ok(restored)
}

/// The node of `program` each node of a checkpoint of format 1 is: (file key, label,
/// parallelism, plan node or None when the plan does not have it).
fn match_nodes(
    taken: &[TopologyNode],
    program: &Program,
) -> Vec<(String, String, usize, Option<usize>)> {
    let index: HashMap<&str, usize> = (program.nodes.iter().enumerate())
        .map(|(i, n)| (n.id.as_str(), i))
        .collect();
    let by_id: Vec<Option<usize>> = taken
        .iter()
        .map(|t| index.get(t.id.as_str()).copied())
        .collect();
    let same_labels = taken.len() == program.nodes.len()
        && taken
            .iter()
            .zip(&program.nodes)
            .all(|(t, n)| t.label == n.label);
    let nodes = match taken.iter().zip(&by_id).find(|(_, n)| n.is_none()) {
        Some((missing, _)) if same_labels => {
            warn!(
                node = %missing.label,
                id = %missing.id,
                "the checkpoint's node ids differ from this plan's, but its nodes are the same: matching them in order"
            );
            (0..taken.len()).map(Some).collect()
        }
        _ => by_id,
    };
    taken
        .iter()
        .zip(nodes)
        .map(|(t, node)| (t.id.clone(), t.label.clone(), t.parallelism, node))
        .collect()
}
