//! What a slice costs in memory on the tier that runs it: the bound the runtime checks before it
//! uses a plan, from the graph summary alone.
//!
//! Measured with `tests/bench/slice-formats.sh` (peak RSS of a process that loads an artifact
//! and runs it): tract holds the loaded weights and their packed copy at once while it
//! optimises, plus the activations and the process itself. So a slice needs at most
//! `2 x weights + 2 x its largest activation + RUNTIME_OVERHEAD`; every slice measured stayed
//! under it (ResNet50 [0,167): 74 MiB of 111; VGG16 [0,31): 143 of 176). Since the loader stopped
//! keeping a copy of the graph through codegen, VGG16's [0,31) peaks at 116 MiB; ResNet50's
//! [0,192), whose reloaded graph tract cannot declutter again, still at 127 of 191 (`scission-cloud
//! run-slice`). The rule stays the safe bound.

use crate::cut::Block;
use crate::graph::GraphSummary;

/// Bytes of the process and runtime around a slice (tract, QUIC, HTTP, buffers).
pub const RUNTIME_OVERHEAD: u64 = 40 << 20;

/// The largest tensor a slice reads or produces.
pub fn largest_activation(graph: &GraphSummary, block: Block) -> u64 {
    let inside = |p: usize| (block.start..block.end).contains(&p);
    graph
        .tensors
        .iter()
        .filter(|t| t.producer.is_some_and(inside) || t.consumers.iter().any(|&c| inside(c)))
        .map(|t| t.bytes)
        .max()
        .unwrap_or(0)
}

/// The most memory running `block` takes (see the module's documentation); saturating, and a
/// block outside the graph counts only what lies inside it.
pub fn slice_need(graph: &GraphSummary, block: Block) -> u64 {
    let end = block.end.min(graph.len());
    let weights = if block.start < end { graph.weight_bytes(block.start, end) } else { 0 };
    weights.saturating_mul(2).saturating_add(largest_activation(graph, block).saturating_mul(2)).saturating_add(RUNTIME_OVERHEAD)
}

/// The cap on a slice's weights plus activations (the solver's memory model, see
/// [`Constraints::memory_cap`](crate::solver::Constraints)) under which a slice fits in
/// `available` bytes by [`slice_need`]'s rule. Approximate: the solver counts the activations
/// crossing its blocks' boundaries, not those inside them, so a tier still checks each route
/// with [`slice_need`] before it runs it.
pub fn solver_cap(available: u64) -> u64 {
    available.saturating_sub(RUNTIME_OVERHEAD) / 2
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{NodeInfo, TensorInfo};
    use alloc::string::ToString;
    use alloc::vec;

    /// Three nodes in a chain: tensor i+1 is node i's output; node i has (i+1) MiB of weights.
    fn chain() -> GraphSummary {
        let tensor = |t: usize, bytes: u64| TensorInfo {
            name: t.to_string(),
            dtype: "F32".into(),
            shape: vec![bytes / 4],
            bytes,
            producer: t.checked_sub(1),
            consumers: if t < 3 { vec![t] } else { vec![] },
        };
        GraphSummary {
            nodes: (0..3)
                .map(|i| NodeInfo {
                    name: i.to_string(),
                    op: "Conv".into(),
                    inputs: vec![i],
                    outputs: vec![i + 1],
                    weight_bytes: (i as u64 + 1) << 20,
                })
                .collect(),
            tensors: vec![tensor(0, 100), tensor(1, 4000), tensor(2, 300), tensor(3, 8)],
            inputs: vec![0],
            outputs: vec![3],
        }
    }

    #[test]
    fn a_slice_needs_twice_its_weights_and_largest_activation_plus_the_runtime() {
        let g = chain();
        assert_eq!(largest_activation(&g, Block { start: 0, end: 1 }), 4000);
        assert_eq!(largest_activation(&g, Block { start: 2, end: 3 }), 300);
        assert_eq!(slice_need(&g, Block { start: 0, end: 1 }), 2 * (1 << 20) + 2 * 4000 + RUNTIME_OVERHEAD);
        assert_eq!(slice_need(&g, Block { start: 1, end: 3 }), 2 * (5 << 20) + 2 * 4000 + RUNTIME_OVERHEAD);
        // Out of range: only what lies inside counts, nothing panics.
        assert_eq!(slice_need(&g, Block { start: 2, end: 99 }), 2 * (3 << 20) + 2 * 300 + RUNTIME_OVERHEAD);
        assert_eq!(slice_need(&g, Block { start: 7, end: 9 }), RUNTIME_OVERHEAD);
    }
}
