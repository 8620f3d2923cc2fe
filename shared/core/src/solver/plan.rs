//! Plans, their cost breakdown under the cost model, and the order plans are ranked in.
//!
//! A plan is a list of segments: the device's (always first, possibly empty: the device holds
//! the raw input even when it computes nothing), then one per used tier in chain order, each a
//! non-empty contiguous block range on one machine. Between consecutive segments the sending
//! machine hands over what crosses the boundary; with `return_result` the output travels back
//! to the device along the same chain, as the runtime relays it (each tier answers the one that
//! sent it work).

use alloc::vec::Vec;
use core::cmp::Ordering;
use serde::{Deserialize, Serialize};

use super::constraints::Compiled;
use super::problem::Problem;

/// One tier's share of a plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Segment {
    /// Tier index.
    pub tier: usize,
    /// Machine index.
    pub machine: usize,
    /// First block.
    pub start: usize,
    /// One past the last block.
    pub end: usize,
}

/// One message between machines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hop {
    /// Sending machine.
    pub from: usize,
    /// Receiving machine.
    pub to: usize,
    /// Bytes on the wire.
    pub bytes: u64,
    /// Latency plus serialisation time.
    pub ns: u64,
}

/// What a plan costs, term by term.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Breakdown {
    /// Compute time of each segment.
    pub compute_ns: Vec<u64>,
    /// Forward hops, in order (`hops[i]` feeds `segments[i + 1]`).
    pub hops: Vec<Hop>,
    /// The result's way back to the device, if charged: one hop per forward hop, in reverse
    /// (`result_hops[0]` leaves the last machine).
    pub result_hops: Vec<Hop>,
    /// End-to-end latency: all compute, all hops, all queueing.
    pub latency_ns: u64,
    /// Expected queueing delay on the machines the plan hands work to.
    #[serde(default)]
    pub queue_ns: u64,
    /// The device's compute time.
    pub device_ns: u64,
    /// Bytes that leave the device.
    pub device_upload_bytes: u64,
    /// Bytes that reach the last tier.
    pub cloud_bytes: u64,
    /// Slowest stage (one segment's compute or one hop) when requests are pipelined.
    pub bottleneck_ns: u64,
    /// Bytes sent over all forward hops.
    pub total_bytes: u64,
}

/// A ranked plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Device segment first, then used tiers in order.
    pub segments: Vec<Segment>,
    /// Its cost.
    pub cost: Breakdown,
}

/// What to minimise. Ties are broken by latency, then by the plan's segments in order
/// (tier, machine, end), so rankings are deterministic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Objective {
    /// End-to-end latency of one request.
    #[default]
    Latency,
    /// The slowest pipeline stage (maximises requests per second).
    Throughput,
    /// Compute time on the device (battery).
    DeviceTime,
    /// Bytes leaving the device (radio, privacy, tariffs).
    DeviceUpload,
}

impl Objective {
    /// `(primary, latency)` of a breakdown: plans are ranked by this pair.
    pub fn key(self, b: &Breakdown) -> (u64, u64) {
        let primary = match self {
            Objective::Latency => 0,
            Objective::Throughput => b.bottleneck_ns,
            Objective::DeviceTime => b.device_ns,
            Objective::DeviceUpload => b.device_upload_bytes,
        };
        (primary, b.latency_ns)
    }
}

/// Segments as the tie-break sequence `(tier, machine, end)`.
pub(crate) fn compare_segments(a: &[Segment], b: &[Segment]) -> Ordering {
    let seq = |s: &Segment| (s.tier, s.machine, s.end);
    a.iter().map(seq).cmp(b.iter().map(seq))
}

/// Ranks plans: by objective key, then by segments.
pub fn compare_plans(objective: Objective, a: &Plan, b: &Plan) -> Ordering {
    objective.key(&a.cost).cmp(&objective.key(&b.cost)).then_with(|| compare_segments(&a.segments, &b.segments))
}

/// Costs `segments` under the problem's cost model. `None` when a needed link is missing.
pub fn evaluate(problem: &Problem, segments: &[Segment]) -> Option<Breakdown> {
    let compute_ns: Vec<u64> = segments.iter().map(|s| problem.machines[s.machine].segment_ns(s.start, s.end)).collect();
    let mut hops = Vec::with_capacity(segments.len());
    for pair in segments.windows(2) {
        let bytes = problem.handover_bytes(pair[1].start);
        let ns = problem.hop_ns(pair[0].machine, pair[1].machine, bytes)?;
        hops.push(Hop { from: pair[0].machine, to: pair[1].machine, bytes, ns });
    }
    let result_hops = match problem.options.return_result {
        true => hops
            .iter()
            .rev()
            .map(|h| {
                let bytes = problem.result_bytes();
                Some(Hop { from: h.to, to: h.from, bytes, ns: problem.hop_ns(h.to, h.from, bytes)? })
            })
            .collect::<Option<Vec<Hop>>>()?,
        false => Vec::new(),
    };
    let hop_ns = hops.iter().chain(&result_hops).map(|h| h.ns);
    let queue_ns: u64 = segments.iter().skip(1).map(|s| problem.machines[s.machine].queue_ns).sum();
    let latency_ns = compute_ns.iter().sum::<u64>() + hop_ns.clone().sum::<u64>() + queue_ns;
    let bottleneck_ns = compute_ns.iter().copied().chain(hop_ns).max().unwrap_or(0);
    let last_tier = problem.tiers.len() - 1;
    let cloud_bytes =
        segments.iter().zip(segments.iter().skip(1)).zip(&hops).find(|((_, s), _)| s.tier == last_tier).map_or(0, |(_, h)| h.bytes);
    Some(Breakdown {
        device_ns: compute_ns[0],
        device_upload_bytes: hops.first().map_or(0, |h| h.bytes),
        total_bytes: hops.iter().map(|h| h.bytes).sum(),
        compute_ns,
        hops,
        result_hops,
        latency_ns,
        queue_ns,
        cloud_bytes,
        bottleneck_ns,
    })
}

/// Memory a segment needs: its weights plus the largest activations of any of its blocks.
pub(crate) fn segment_memory(problem: &Problem, s: &Segment) -> u64 {
    let weights: u64 = problem.block_weight_bytes[s.start..s.end].iter().sum();
    let activations = problem.block_activation_bytes[s.start..s.end].iter().copied().max().unwrap_or(0);
    weights + activations
}

/// Whether `segments` form a valid plan that meets every constraint. This is the reference
/// check the brute-force enumerator uses; the dynamic program enforces the same rules
/// incrementally.
pub(crate) fn satisfies(problem: &Problem, c: &Compiled, segments: &[Segment], cost: &Breakdown) -> bool {
    let Some(first) = segments.first() else { return false };
    let shape_ok = first.tier == 0
        && first.start == 0
        && segments.last().is_some_and(|s| s.end == problem.blocks())
        && segments.windows(2).all(|w| w[0].tier < w[1].tier && w[0].end == w[1].start && w[1].start < w[1].end);
    if !shape_ok || segments.iter().any(|s| !c.allowed[s.machine] || problem.machines[s.machine].tier != s.tier) {
        return false;
    }
    let used = |t: usize| segments.iter().any(|s| s.tier == t && s.end > s.start);
    let tiers_ok = (0..problem.tiers.len()).all(|t| (!c.must_use[t] || used(t)) && !(c.must_not_use[t] && used(t)));
    let segments_ok = segments.iter().zip(&cost.compute_ns).all(|(s, &ns)| {
        !c.bad[s.tier][s.start..s.end].iter().any(|&b| b)
            && ns <= c.compute_cap[s.machine]
            && ns <= c.stage_cap
            && segment_memory(problem, s) <= c.memory_cap[s.tier]
    });
    let hops_ok = cost.hops.iter().zip(segments).all(|(h, s)| h.bytes <= c.upload_cap[s.tier] && h.ns <= c.stage_cap);
    let result_ok = cost.result_hops.iter().all(|h| h.ns <= c.stage_cap);
    tiers_ok && segments_ok && hops_ok && result_ok && cost.cloud_bytes <= c.cloud_bytes_cap
}
