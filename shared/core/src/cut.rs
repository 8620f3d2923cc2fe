//! Cut analysis: which tensors cross each position of the evaluation order, where a DNN can be
//! cut, and the blocks between consecutive cut points.
//!
//! Position `k` (0..=n) sits before compute node `k`. A tensor crosses `k` when it exists
//! before `k` (a graph input, or produced by a node before `k`) and is still needed at or after
//! `k` (read by a node at or after `k`, or a graph output). Whatever crosses `k` is exactly what
//! one machine must hand to the next if the DNN is split there, skip connections included.
//! Weights never cross: they belong to the node that reads them.

use alloc::vec;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

use crate::graph::{GraphSummary, TensorId};

/// A half-open range `[start, end)` of compute-node positions run as one unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Block {
    /// First node position.
    pub start: usize,
    /// One past the last node position.
    pub end: usize,
}

/// The crossing set of every position of a graph.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CutAnalysis {
    crossing: Vec<Vec<TensorId>>,
    bytes: Vec<u64>,
}

impl CutAnalysis {
    /// Computes the crossing sets of `graph` (which must be [validated](GraphSummary::validate)).
    pub fn new(graph: &GraphSummary) -> Self {
        let n = graph.len();
        let mut crossing = vec![Vec::new(); n + 1];
        let mut bytes = vec![0u64; n + 1];
        for t in 0..graph.tensors.len() {
            let (from, to) = (graph.available_from(t), graph.last_use(t));
            for k in from..=to.min(n) {
                crossing[k].push(t);
                bytes[k] = bytes[k].saturating_add(graph.tensors[t].bytes);
            }
        }
        Self { crossing, bytes }
    }

    /// Number of positions (`nodes + 1`).
    pub fn positions(&self) -> usize {
        self.crossing.len()
    }

    /// Tensors crossing position `k`, ascending.
    pub fn crossing(&self, k: usize) -> &[TensorId] {
        &self.crossing[k]
    }

    /// Total bytes crossing position `k`.
    pub fn bytes(&self, k: usize) -> u64 {
        self.bytes[k]
    }

    /// Cut points: 0, every inner position crossed by between 1 and `max_crossing` tensors, and
    /// the end. Ascending, no duplicates.
    pub fn cut_points(&self, max_crossing: usize) -> Vec<usize> {
        let last = self.positions() - 1;
        (0..=last).filter(|&k| k == 0 || k == last || (1..=max_crossing).contains(&self.crossing[k].len())).collect()
    }

    /// The rule of the original Scission: an inner position is a cut when exactly one tensor
    /// crosses it, that tensor is the output of the node just before, and it has one consumer.
    /// It misses every layer whose output fans out. Kept for comparison only.
    pub fn legacy_cut_points(&self, graph: &GraphSummary) -> Vec<usize> {
        let last = self.positions() - 1;
        (0..=last)
            .filter(|&k| {
                if k == 0 || k == last {
                    return true;
                }
                let [t] = self.crossing[k][..] else { return false };
                let tensor = &graph.tensors[t];
                tensor.producer == Some(k - 1) && tensor.consumers.len() == 1
            })
            .collect()
    }
}

/// The blocks between consecutive cut points.
pub fn blocks(cut_points: &[usize]) -> Vec<Block> {
    cut_points.windows(2).map(|w| Block { start: w[0], end: w[1] }).collect()
}

/// Inputs and outputs of the slice `[a, b)`: the tensors crossing `a` that the slice reads, and
/// the tensors crossing `b` that the slice produces. Tensors crossing both `a` and `b` that the
/// slice does not produce pass through untouched and appear in neither list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SliceIo {
    /// Tensors the slice reads from outside, ascending.
    pub inputs: Vec<TensorId>,
    /// Tensors the slice hands on, ascending.
    pub outputs: Vec<TensorId>,
}

impl SliceIo {
    /// Computes the interface of the node range `block`.
    pub fn new(graph: &GraphSummary, cuts: &CutAnalysis, block: Block) -> Self {
        let inside = |p: usize| (block.start..block.end).contains(&p);
        let inputs =
            cuts.crossing(block.start).iter().copied().filter(|&t| graph.tensors[t].consumers.iter().any(|&c| inside(c))).collect();
        let outputs = cuts.crossing(block.end).iter().copied().filter(|&t| graph.tensors[t].producer.is_some_and(inside)).collect();
        Self { inputs, outputs }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{NodeInfo, TensorInfo};
    use alloc::string::ToString;

    /// Builds a summary from `(inputs)` per node; node i produces tensor i + 1, tensor 0 is the
    /// graph input, the last node's output is the graph output. Every tensor is 10 bytes.
    fn graph(reads: &[&[usize]]) -> GraphSummary {
        let n = reads.len();
        let mut tensors: Vec<TensorInfo> = (0..=n)
            .map(|t| TensorInfo {
                name: t.to_string(),
                dtype: "F32".into(),
                shape: vec![10],
                bytes: 10,
                producer: t.checked_sub(1),
                consumers: Vec::new(),
            })
            .collect();
        let nodes = reads
            .iter()
            .enumerate()
            .map(|(pos, ins)| {
                for &t in *ins {
                    tensors[t].consumers.push(pos);
                }
                NodeInfo { name: pos.to_string(), op: "Op".into(), inputs: ins.to_vec(), outputs: vec![pos + 1], weight_bytes: 1 }
            })
            .collect();
        GraphSummary { nodes, tensors, inputs: vec![0], outputs: vec![n] }
    }

    #[test]
    fn chain_has_one_tensor_everywhere() {
        let g = graph(&[&[0], &[1], &[2]]);
        g.validate().unwrap();
        let c = CutAnalysis::new(&g);
        for k in 0..=3 {
            assert_eq!(c.crossing(k), &[k][..]);
            assert_eq!(c.bytes(k), 10);
        }
        assert_eq!(c.cut_points(1), vec![0, 1, 2, 3]);
        assert_eq!(c.legacy_cut_points(&g), vec![0, 1, 2, 3]);
    }

    #[test]
    fn residual_skip_crosses_the_block_and_fan_out_is_a_cut() {
        // 0: a = f(x); 1: b = g(a); 2: c = h(b); 3: d = a + c; 4: e = k(d)
        let g = graph(&[&[0], &[1], &[2], &[1, 3], &[4]]);
        let c = CutAnalysis::new(&g);
        assert_eq!(c.crossing(1), &[1][..], "a alone: a fan-out point");
        assert_eq!(c.crossing(2), &[1, 2][..], "skip + main path");
        assert_eq!(c.crossing(3), &[1, 3][..]);
        assert_eq!(c.crossing(4), &[4][..]);
        assert_eq!(c.cut_points(1), vec![0, 1, 4, 5]);
        assert_eq!(c.cut_points(2), vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(c.legacy_cut_points(&g), vec![0, 4, 5], "the legacy rule misses the fan-out at 1");
    }

    #[test]
    fn slice_io_excludes_pass_through_tensors() {
        let g = graph(&[&[0], &[1], &[2], &[1, 3], &[4]]);
        let c = CutAnalysis::new(&g);
        let io = SliceIo::new(&g, &c, Block { start: 2, end: 3 });
        assert_eq!(io.inputs, vec![2], "the skip tensor 1 passes through");
        assert_eq!(io.outputs, vec![3]);
        let io = SliceIo::new(&g, &c, Block { start: 1, end: 4 });
        assert_eq!((io.inputs, io.outputs), (vec![1], vec![4]));
    }

    #[test]
    fn graph_output_read_inside_still_crosses_the_end() {
        // node 1 reads node 0's output, which is also a graph output.
        let mut g = graph(&[&[0], &[1]]);
        g.outputs = vec![1, 2];
        let c = CutAnalysis::new(&g);
        assert_eq!(c.crossing(2), &[1, 2][..]);
        assert_eq!(blocks(&c.cut_points(2)), vec![Block { start: 0, end: 1 }, Block { start: 1, end: 2 }]);
    }

    #[test]
    fn validate_rejects_reads_before_writes() {
        let g = graph(&[&[2], &[1]]);
        assert_eq!(g.validate(), Err(crate::graph::GraphError::NotTopological { node: 0, tensor: 2 }));
    }
}
