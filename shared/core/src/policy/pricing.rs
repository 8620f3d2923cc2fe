//! Pricing a planning problem with what was observed: measured stage times as measured ranges,
//! and each hop's residual over its link figures on that link's latency. Shared by the device's
//! local planner (the closed loop) and `plan --calibration` (its replay from a run report).

use alloc::vec::Vec;

use super::observed::{ObservedCosts, TierHop};
use crate::cut::Block;
use crate::link::Link;
use crate::profile::BlockProfile;
use crate::solver::{self, Problem, RangeCost, Segment};
use crate::wire::message::Stage;

/// The profile's blocks `[first, end)` that node range `block` covers, if it falls on block
/// boundaries.
pub fn block_span(blocks: &[BlockProfile], block: Block) -> Option<(usize, usize)> {
    let first = blocks.iter().position(|b| b.range.start == block.start)?;
    let end = blocks.iter().position(|b| b.range.end == block.end)?.checked_add(1)?;
    (first < end).then_some((first, end))
}

/// The solver's segments for a route's `stages` in a problem with one machine per tier (the
/// first of each): the device's first, empty when it computes nothing.
pub fn route_segments(problem: &Problem, blocks: &[BlockProfile], stages: &[Stage]) -> Option<Vec<Segment>> {
    let machine = |tier: u8| problem.machines.iter().position(|m| m.tier == usize::from(tier));
    let mut segments = Vec::with_capacity(stages.len().saturating_add(1));
    if stages.first().is_none_or(|s| s.tier != 0) {
        segments.push(Segment { tier: 0, machine: machine(0)?, start: 0, end: 0 });
    }
    for stage in stages {
        let (start, end) = block_span(blocks, stage.block())?;
        segments.push(Segment { tier: usize::from(stage.tier), machine: machine(stage.tier)?, start, end });
    }
    Some(segments)
}

/// How much longer (or, negative, shorter) each `measured` hop of a route took than `problem`'s
/// link figures predict for its message and the result's way back over it. `None` when the
/// route does not fit the problem or the hops do not match its segments.
pub fn hop_residuals(
    problem: &Problem,
    blocks: &[BlockProfile],
    stages: &[Stage],
    measured: &[(TierHop, u64)],
) -> Option<Vec<(TierHop, i64)>> {
    let predicted = solver::evaluate(problem, &route_segments(problem, blocks, stages)?)?;
    if predicted.hops.len() != measured.len() {
        return None;
    }
    let residuals = measured
        .iter()
        .zip(&predicted.hops)
        .map(|((hop, ns), figure)| {
            let back = predicted.result_hops.iter().find(|h| (h.from, h.to) == (figure.to, figure.from)).map_or(0, |h| h.ns);
            (*hop, signed(*ns).saturating_sub(signed(figure.ns.saturating_add(back))))
        })
        .collect();
    Some(residuals)
}

/// `link` with `residual_ns` added to its latency (never below zero, never above the solver's
/// bound).
pub fn with_residual(link: Link, residual_ns: i64) -> Link {
    let latency = signed(link.latency_ns).saturating_add(residual_ns);
    Link { latency_ns: u64::try_from(latency.max(0)).unwrap_or(0).min(solver::MAX_LATENCY_NS), ..link }
}

/// Prices `problem` with `observed`: each stage estimate from the first block or to the last
/// becomes a measured range of its tier's machines (the solver costs only those exactly; others
/// are left out), and each hop's residual goes onto the latency of the links between its tiers'
/// machines.
pub fn price(problem: &mut Problem, blocks: &[BlockProfile], observed: &ObservedCosts) {
    let n = blocks.len();
    for (tier, block, ns) in observed.estimates() {
        let Some((first, end)) = block_span(blocks, block) else { continue };
        if first != 0 && end != n {
            continue;
        }
        for machine in problem.machines.iter_mut().filter(|m| m.tier == usize::from(tier)) {
            machine.ranges.retain(|r| (r.start, r.end) != (first, end));
            machine.ranges.push(RangeCost { start: first, end, ns });
        }
    }
    let tiers: Vec<usize> = problem.machines.iter().map(|m| m.tier).collect();
    for ((from, to), residual) in observed.hop_estimates() {
        let between = |a: usize, b: usize| tiers.get(a) == Some(&usize::from(from)) && tiers.get(b) == Some(&usize::from(to));
        for (_, _, link) in problem.links.iter_mut().filter(|(a, b, _)| between(*a, *b)) {
            *link = with_residual(*link, residual);
        }
    }
}

/// `ns` as a signed figure, saturating.
fn signed(ns: u64) -> i64 {
    i64::try_from(ns).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINK: Link = Link { latency_ns: 1_000_000, bits_per_sec: 8_000_000 };

    #[test]
    fn a_residual_moves_the_latency_but_never_below_zero_or_past_the_bound() {
        assert_eq!(with_residual(LINK, 250_000).latency_ns, 1_250_000);
        assert_eq!(with_residual(LINK, -5_000_000).latency_ns, 0);
        assert_eq!(with_residual(LINK, i64::MAX).latency_ns, solver::MAX_LATENCY_NS);
        assert_eq!(with_residual(LINK, 7).bits_per_sec, LINK.bits_per_sec);
    }
}
