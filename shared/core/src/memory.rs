//! What a slice costs in memory on the tier that runs it: the bound the runtime checks before it
//! uses a plan, and the solver's model of it.
//!
//! **The rule**, from the graph summary alone (`tests/bench/slice-formats.sh`: peak RSS of a
//! process that loads an artifact and runs it): tract holds loaded weights and their packed
//! copy at once while it optimises, plus the activations and the process itself, so a slice
//! needs at most `2 x weights + 2 x its largest activation + RUNTIME_OVERHEAD` ([`slice_need`]).
//! The device binary stays well below it (ResNet50 [0,192): 113 MiB of 191; VGG16 [0,31): 114
//! of 177, `scission-device run-slice`).
//!
//! **Measured**, where the device's profile counted its blocks' heap (`bench --memory`,
//! [`BlockMemory`]): [`measured_need`] replaces the rule with what
//! the blocks keep loaded, plus the largest transient of any one of them (loading: about twice
//! its largest weight tensor; running: its activations and scratch), plus
//! [`MEASURED_OVERHEAD`] for what the heap count cannot see. Against the peak RSS of the device
//! binary loading and running artifacts of the same ranges it bounds every one measured, and
//! for large slices it is 30 % below the rule (README, "Memory").

use crate::cut::Block;
use crate::graph::GraphSummary;
use crate::profile::{BlockMemory, BlockProfile};
use crate::solver::Problem;
use alloc::vec::Vec;

/// Bytes of the process and runtime around a slice (tract, QUIC, HTTP, buffers).
pub const RUNTIME_OVERHEAD: u64 = 40 << 20;

/// Bytes of a process beyond the heap bytes it counts live: its code, stacks and libraries,
/// and what the allocator holds that is not live (freed blocks it keeps, fragmentation).
/// Measured as peak RSS less the counted peak heap of the device binary (`device` profile)
/// loading and running artifacts of ResNet50 and VGG16 at seven boundaries: 16 to 32 MiB.
pub const MEASURED_OVERHEAD: u64 = 40 << 20;

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

/// The most memory running `range` takes by the heap its blocks were measured to take (see
/// the module's documentation): `None` unless blocks with measured memory tile `range`
/// exactly. Saturating.
pub fn measured_need(blocks: &[BlockProfile], range: Block) -> Option<u64> {
    let first = blocks.iter().position(|b| b.range.start == range.start)?;
    let (mut at, mut resident, mut transient) = (range.start, 0u64, 0u64);
    for block in &blocks[first..] {
        if at == range.end {
            break;
        }
        let memory = block.memory.filter(|_| block.range.start == at && block.range.end <= range.end)?;
        resident = resident.saturating_add(memory.resident_bytes);
        transient = transient.max(memory.transient_bytes());
        at = block.range.end;
    }
    (at == range.end && range.start < range.end).then(|| resident.saturating_add(transient).saturating_add(MEASURED_OVERHEAD))
}

/// What running `range` takes: [`measured_need`] from `blocks` where they tile it, otherwise
/// [`slice_need`]'s rule on the graph.
pub fn need(graph: &GraphSummary, blocks: &[BlockProfile], range: Block) -> u64 {
    measured_need(blocks, range).unwrap_or_else(|| slice_need(graph, range))
}

/// The solver's cap on a slice's resident plus transient bytes where the blocks carry measured
/// memory (the solver then sums [`BlockMemory::resident_bytes`](crate::profile::BlockMemory)
/// and takes the largest transient, as [`measured_need`] does).
pub fn measured_cap(available: u64) -> u64 {
    available.saturating_sub(MEASURED_OVERHEAD)
}

/// Sets the solver's memory model for a device (tier 0) with `available` bytes and returns
/// its cap: where every block of the device's profile counted its memory, the problem's
/// per-block figures become the measured ones (resident bytes, transient bytes) under
/// [`measured_cap`]; otherwise they stay the profile's tensor sizes under [`solver_cap`].
pub fn device_memory_cap(problem: &mut Problem, device_blocks: &[BlockProfile], available: u64) -> u64 {
    let measured: Option<Vec<BlockMemory>> = device_blocks.iter().map(|b| b.memory).collect();
    match measured {
        Some(measured) if measured.len() == problem.block_weight_bytes.len() && !measured.is_empty() => {
            problem.block_weight_bytes = measured.iter().map(|m| m.resident_bytes).collect();
            problem.block_activation_bytes = measured.iter().map(BlockMemory::transient_bytes).collect();
            measured_cap(available)
        }
        _ => solver_cap(available),
    }
}

/// The cap on a slice's weights plus activations (the solver's memory model, see
/// [`Constraints::memory_cap`](crate::solver::Constraints)) under which a slice fits in
/// `available` bytes by [`slice_need`]'s rule. Approximate: the solver counts the activations
/// crossing its blocks' boundaries, not those inside them, so a tier still checks each route
/// with [`slice_need`] before it runs it.
pub fn solver_cap(available: u64) -> u64 {
    available.saturating_sub(RUNTIME_OVERHEAD) / 2
}

/// What a built slice keeps resident, from the bytes of its weights: tract's packed copy of
/// them, a sixteenth more and 1 MiB for its plan and constants. An upper bound measured on
/// ResNet50 ranges holding 1.5 to 73 MiB of weights, which keep 0.5 to 2.1 MiB over them
/// (`scission-cloud run-slice --model zoo:resnet50 --range A,B`, "the loaded slice keeps").
pub fn slice_kept(weights: u64) -> u64 {
    weights.saturating_add(weights / 16).saturating_add(1 << 20)
}

/// The most a slice holds while it is built: what it keeps, and the weights as loaded, until
/// they are packed.
pub fn slice_build(weights: u64) -> u64 {
    slice_kept(weights).saturating_add(weights)
}

/// Why a slice is not built: what it needs is more than the whole budget for built slices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OverBudget {
    /// Bytes building the slice takes ([`slice_build`]).
    pub need: u64,
    /// The budget for built slices.
    pub budget: u64,
}

/// How many of the built slices `held` (their kept bytes, least recently used first) to drop so
/// that building one more, needing `need` bytes, stays within `budget`: the fewest, oldest
/// first. Over budget when `need` alone is more than `budget`.
pub fn slices_to_drop(held: &[u64], need: u64, budget: u64) -> Result<usize, OverBudget> {
    let over = OverBudget { need, budget };
    let room = u128::from(budget.checked_sub(need).ok_or(over)?);
    // Summed wide: no count of held slices can overflow it.
    let mut total: u128 = held.iter().map(|&b| u128::from(b)).sum();
    let mut dropped = 0;
    for &bytes in held {
        if total <= room {
            break;
        }
        total -= u128::from(bytes);
        dropped += 1;
    }
    Ok(dropped)
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

    /// Blocks of nodes [0,2), [2,5), [5,6) with the given (resident, peak) MiB, if measured.
    fn measured(memory: [Option<(u64, u64)>; 3]) -> Vec<BlockProfile> {
        let ranges = [(0, 2), (2, 5), (5, 6)];
        ranges
            .iter()
            .zip(memory)
            .map(|(&(start, end), m)| BlockProfile {
                range: Block { start, end },
                first_node: start.to_string(),
                last_node: (end - 1).to_string(),
                time: crate::stats::Summary::default(),
                weight_bytes: 1 << 20,
                activation_bytes: 1 << 10,
                memory: m.map(|(r, p)| BlockMemory { resident_bytes: r << 20, peak_bytes: p << 20 }),
            })
            .collect()
    }

    #[test]
    fn a_measured_slice_needs_what_its_blocks_keep_and_its_largest_transient() {
        let blocks = measured([Some((10, 15)), Some((20, 50)), Some((30, 35))]);
        let of = |start, end| measured_need(&blocks, Block { start, end });
        assert_eq!(of(0, 2), Some(((10 + 5) << 20) + MEASURED_OVERHEAD));
        assert_eq!(of(0, 5), Some(((10 + 20 + 30) << 20) + MEASURED_OVERHEAD));
        assert_eq!(of(0, 6), Some(((60 + 30) << 20) + MEASURED_OVERHEAD));
        assert_eq!(of(5, 6), Some(((30 + 5) << 20) + MEASURED_OVERHEAD));
        // Only whole blocks tile a range; an empty or foreign range has no measured need.
        for (start, end) in [(0, 3), (1, 5), (0, 7), (2, 2), (6, 9)] {
            assert_eq!(of(start, end), None, "[{start}, {end})");
        }
        // One unmeasured block leaves the ranges through it to the rule.
        let partly = measured([Some((10, 15)), None, Some((30, 35))]);
        assert_eq!(measured_need(&partly, Block { start: 0, end: 5 }), None);
        assert_eq!(measured_need(&partly, Block { start: 5, end: 6 }), Some((35 << 20) + MEASURED_OVERHEAD));
        let g = chain();
        assert_eq!(need(&g, &partly, Block { start: 0, end: 3 }), slice_need(&g, Block { start: 0, end: 3 }));
    }

    /// A device and a cloud that computes every block 1000 times slower: the device keeps as
    /// many blocks as its memory lets it.
    fn problem(blocks: usize) -> Problem {
        use crate::solver::{CostOptions, Link, Machine};
        let fast = Link { latency_ns: 1_000, bits_per_sec: 1_000_000_000_000 };
        Problem {
            tiers: vec!["device".into(), "cloud".into()],
            machines: vec![Machine::new("d", 0, vec![1_000; blocks]), Machine::new("c", 1, vec![1_000_000; blocks])],
            boundary_bytes: vec![1 << 20; blocks + 1],
            input_bytes: 1 << 20,
            block_weight_bytes: vec![1 << 20; blocks],
            block_activation_bytes: vec![1 << 10; blocks],
            links: vec![(0, 1, fast), (1, 0, fast)],
            options: CostOptions::default(),
        }
    }

    #[test]
    fn the_solver_keeps_on_the_device_exactly_what_its_measured_memory_fits() {
        use crate::solver::{Constraints, Objective, solve};
        let blocks = measured([Some((10, 15)), Some((20, 50)), Some((30, 35))]);
        for available_mib in [40, 70, 90, 100, 120, 200] {
            let available = (available_mib << 20) + MEASURED_OVERHEAD;
            let mut p = problem(3);
            let cap = device_memory_cap(&mut p, &blocks, available);
            assert_eq!(cap, available - MEASURED_OVERHEAD);
            let constraints = Constraints { memory_cap: vec![(0, cap)], ..Constraints::default() };
            let best = solve(&p, &constraints, Objective::Latency, 1).expect("solvable");
            let kept = best[0].segments.iter().find(|s| s.tier == 0).map_or(0, |s| s.end);
            // The most blocks whose measured need fits, by the core's own sum.
            let fitting = (1..=3)
                .rev()
                .find(|&k| measured_need(&blocks, Block { start: 0, end: blocks[k - 1].range.end }).is_some_and(|n| n <= available));
            assert_eq!(kept, fitting.unwrap_or(0), "{available_mib} MiB");
        }
        // Without measured memory, the rule's figures and cap stay.
        let mut p = problem(3);
        let before = p.clone();
        let unmeasured = measured([Some((10, 15)), None, Some((30, 35))]);
        assert_eq!(device_memory_cap(&mut p, &unmeasured, 200 << 20), solver_cap(200 << 20));
        assert_eq!(p, before);
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
    #[test]
    fn the_oldest_slices_go_first_and_only_as_many_as_needed() {
        // 10 + 20 + 30 held, 40 more needed within 80: dropping the 10 and the 20 leaves 30 + 40.
        assert_eq!(slices_to_drop(&[10, 20, 30], 40, 80), Ok(2));
        assert_eq!(slices_to_drop(&[10, 20, 30], 20, 80), Ok(0), "60 + 20 fits");
        assert_eq!(slices_to_drop(&[10, 20, 30], 21, 80), Ok(1));
        assert_eq!(slices_to_drop(&[], 80, 80), Ok(0));
        assert_eq!(slices_to_drop(&[10], 80, 80), Ok(1), "a slice needing the whole budget is built alone");
        assert_eq!(slices_to_drop(&[10], 81, 80), Err(OverBudget { need: 81, budget: 80 }));
        assert_eq!(slices_to_drop(&[u64::MAX, u64::MAX], 1, u64::MAX), Ok(2), "no sum overflows");
    }

    #[test]
    fn a_built_slice_keeps_its_weights_and_a_little_more_and_its_build_holds_them_twice() {
        let weights = 64 << 20;
        assert_eq!(slice_kept(weights), (68 << 20) + (1 << 20));
        assert_eq!(slice_build(weights), slice_kept(weights) + weights);
        assert_eq!(slice_kept(u64::MAX), u64::MAX);
    }
}
