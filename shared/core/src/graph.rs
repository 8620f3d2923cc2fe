//! A framework-neutral summary of a DNN's dataflow graph: compute nodes in evaluation order and
//! the tensors that flow between them. Cut analysis, profiles and the solver work on this
//! summary only, so they stay independent of tract and run in `no_std`.

use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

/// Index of a tensor in [`GraphSummary::tensors`].
pub type TensorId = usize;

/// One tensor of the graph (a node output or a graph input). Weights are not tensors here:
/// they belong to the node that reads them and count in [`NodeInfo::weight_bytes`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorInfo {
    /// Name, unique in the graph (the producing node's name, with `.slot` for extra outputs).
    pub name: String,
    /// Element type, e.g. `F32`.
    pub dtype: String,
    /// Concrete shape.
    pub shape: Vec<u64>,
    /// Bytes of the dense tensor (elements × element size).
    pub bytes: u64,
    /// Position of the producing node in evaluation order; `None` for a graph input.
    pub producer: Option<usize>,
    /// Positions of the consuming nodes, ascending.
    pub consumers: Vec<usize>,
}

/// One compute node (weights and graph inputs excluded), at its position in evaluation order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Node name as in the model.
    pub name: String,
    /// Operator name, e.g. `Conv`.
    pub op: String,
    /// Non-constant inputs.
    pub inputs: Vec<TensorId>,
    /// Outputs.
    pub outputs: Vec<TensorId>,
    /// Bytes of the constant inputs (weights, biases) this node reads.
    pub weight_bytes: u64,
}

/// A DNN's dataflow in evaluation order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphSummary {
    /// Compute nodes; a node's index is its position in evaluation order.
    pub nodes: Vec<NodeInfo>,
    /// All tensors.
    pub tensors: Vec<TensorInfo>,
    /// Graph inputs, in model order.
    pub inputs: Vec<TensorId>,
    /// Graph outputs, in model order.
    pub outputs: Vec<TensorId>,
}

/// Why a [`GraphSummary`] is inconsistent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    /// A node reads a tensor produced at or after its own position.
    #[error("node {node} reads tensor {tensor} before it is produced")]
    NotTopological {
        /// Position of the reading node.
        node: usize,
        /// The tensor read too early.
        tensor: TensorId,
    },
    /// A tensor id is out of range.
    #[error("tensor id {0} is out of range")]
    UnknownTensor(TensorId),
    /// A tensor names a producing or consuming position outside the graph, or consumers out of
    /// order.
    #[error("tensor {0} names a node position outside the graph or out of order")]
    BadPosition(TensorId),
}

impl GraphSummary {
    /// Number of compute nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True when the graph has no compute node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Total weight bytes of nodes in positions `[a, b)`.
    pub fn weight_bytes(&self, a: usize, b: usize) -> u64 {
        // Saturating: a summary read from a file or a peer may carry absurd figures.
        self.nodes[a..b].iter().map(|n| n.weight_bytes).fold(0, u64::saturating_add)
    }

    /// Checks that every id and position is in range and that the order is topological (a
    /// summary read from a file or a peer is validated before anything indexes with it).
    pub fn validate(&self) -> Result<(), GraphError> {
        let check = |t: TensorId| self.tensors.get(t).ok_or(GraphError::UnknownTensor(t));
        for (t, tensor) in self.tensors.iter().enumerate() {
            let producer_ok = tensor.producer.is_none_or(|p| p < self.len());
            let consumers_ok = tensor.consumers.windows(2).all(|w| w[0] <= w[1]) && tensor.consumers.iter().all(|&c| c < self.len());
            if !producer_ok || !consumers_ok {
                return Err(GraphError::BadPosition(t));
            }
        }
        for t in self.inputs.iter().chain(&self.outputs) {
            check(*t)?;
        }
        for (pos, node) in self.nodes.iter().enumerate() {
            for &t in &node.inputs {
                if check(t)?.producer.is_some_and(|p| p >= pos) {
                    return Err(GraphError::NotTopological { node: pos, tensor: t });
                }
            }
            for &t in &node.outputs {
                check(t)?;
            }
        }
        Ok(())
    }

    /// Last position at which tensor `t` is still needed: its last consumer, or `len()` for a
    /// graph output (it must reach the end of the pipeline).
    pub fn last_use(&self, t: TensorId) -> usize {
        let last_consumer = self.tensors[t].consumers.last().copied().unwrap_or(0);
        if self.outputs.contains(&t) { self.len() } else { last_consumer }
    }

    /// Position after which tensor `t` exists: 0 for a graph input, producer + 1 otherwise.
    pub fn available_from(&self, t: TensorId) -> usize {
        self.tensors[t].producer.map_or(0, |p| p + 1)
    }
}
