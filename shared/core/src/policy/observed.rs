//! What stages and hops really cost where they run: running estimates of each (tier, node
//! range)'s compute time and of each hop's cost beyond what its link figures predict, from the
//! timings answered requests bring back, for a planner to use in place of its profiles' and
//! links' figures (the closed loop: predictions follow the deployment, not the benchmark).

use alloc::vec::Vec;

use crate::cut::Block;
use crate::wire::message::{Stage, StageTiming};

/// Samples kept per stage or hop (the most recent).
pub const WINDOW: usize = 8;
/// Samples a stage or hop needs before it has an estimate.
pub const MIN_SAMPLES: usize = 3;
/// Stages remembered; the one measured longest ago is forgotten first.
pub const MAX_STAGES: usize = 64;
/// Hops remembered (a hop is a pair of tiers), likewise.
pub const MAX_HOPS: usize = 64;

/// The median of the last [`WINDOW`] samples, once there are [`MIN_SAMPLES`].
#[derive(Clone, Copy, Debug)]
struct Window<T> {
    /// Ring of the last samples; `count` of them are valid.
    samples: [T; WINDOW],
    count: usize,
    next: usize,
}

impl<T: Copy + Ord + Default> Window<T> {
    fn new() -> Self {
        Self { samples: [T::default(); WINDOW], count: 0, next: 0 }
    }

    fn record(&mut self, sample: T) {
        if let Some(slot) = self.samples.get_mut(self.next) {
            *slot = sample;
        }
        self.next = (self.next + 1) % WINDOW;
        self.count = (self.count + 1).min(WINDOW);
    }

    fn median(&self) -> Option<T> {
        if self.count < MIN_SAMPLES {
            return None;
        }
        let mut sorted = self.samples;
        let valid = sorted.get_mut(..self.count)?;
        valid.sort_unstable();
        valid.get(self.count / 2).copied()
    }
}

/// Windows by key, the least recently measured first; at most `limit` keys.
#[derive(Clone, Debug)]
struct Recent<K, T> {
    entries: Vec<(K, Window<T>)>,
}

impl<K, T> Default for Recent<K, T> {
    fn default() -> Self {
        Self { entries: Vec::new() }
    }
}

impl<K: PartialEq + Copy, T: Copy + Ord + Default> Recent<K, T> {
    fn record(&mut self, key: K, sample: T, limit: usize) {
        let mut window = match self.entries.iter().position(|(k, _)| *k == key) {
            Some(i) => self.entries.remove(i).1,
            None => Window::new(),
        };
        window.record(sample);
        if self.entries.len() >= limit {
            self.entries.remove(0);
        }
        self.entries.push((key, window));
    }

    fn estimate(&self, key: K) -> Option<T> {
        self.entries.iter().find(|(k, _)| *k == key).and_then(|(_, w)| w.median())
    }

    fn estimates(&self) -> impl Iterator<Item = (K, T)> + '_ {
        self.entries.iter().filter_map(|(k, w)| w.median().map(|m| (*k, m)))
    }
}

/// A hop between two tiers, the sending one first.
pub type TierHop = (u8, u8);

/// Running estimates of stage compute times and of hop residuals.
#[derive(Clone, Debug, Default)]
pub struct ObservedCosts {
    stages: Recent<(u8, Block), u64>,
    hops: Recent<TierHop, i64>,
}

impl ObservedCosts {
    /// Records that tier `tier` computed nodes `block` in `ns` nanoseconds.
    pub fn record(&mut self, tier: u8, block: Block, ns: u64) {
        self.stages.record((tier, block), ns, MAX_STAGES);
    }

    /// The median of the last samples of `block` on `tier`, once it has `MIN_SAMPLES` (3).
    pub fn estimate(&self, tier: u8, block: Block) -> Option<u64> {
        self.stages.estimate((tier, block))
    }

    /// Every stage with an estimate: `(tier, node range, nanoseconds)`.
    pub fn estimates(&self) -> impl Iterator<Item = (u8, Block, u64)> + '_ {
        self.stages.estimates().map(|((tier, block), ns)| (tier, block, ns))
    }

    /// Records that `hop` took `residual_ns` more (or, negative, less) than its link figures
    /// predicted: the per-message cost the figures leave out (encoding, QUIC and TLS, the
    /// return through each tier), or figures that no longer hold.
    pub fn record_hop(&mut self, hop: TierHop, residual_ns: i64) {
        self.hops.record(hop, residual_ns, MAX_HOPS);
    }

    /// The median residual of `hop`, once it has `MIN_SAMPLES` (3).
    pub fn hop_estimate(&self, hop: TierHop) -> Option<i64> {
        self.hops.estimate(hop)
    }

    /// Every hop with an estimate: `(hop, residual nanoseconds)`.
    pub fn hop_estimates(&self) -> impl Iterator<Item = (TierHop, i64)> + '_ {
        self.hops.estimates()
    }
}

/// The compute time a stage of an answered route is charged with in the running estimates:
/// its own `compute_ns`, except on a route the device runs alone, which is charged the whole
/// end to end `total_ns`. A route with hops carries the device's own handling of a request
/// (making its inputs, taking its outputs) in its first hop ([`measured_hops`]); a route with
/// none would otherwise price that handling nowhere, and predict short.
pub fn charged_compute(total_ns: u64, stages: &[Stage], compute_ns: u64) -> u64 {
    match stages {
        [only] if only.tier == super::DEVICE_TIER => total_ns.max(compute_ns),
        _ => compute_ns,
    }
}

/// What each hop of an answered route took, measured: `(hop, nanoseconds)` in route order,
/// the first hop from the device. `total_ns` is the device's end to end time, `stages` the
/// route (the device's own stage, if any, first) and `timings` what the tiers reported.
///
/// A tier's hop is what its peer's wait for it leaves once the tier's own hold is taken out:
/// hop `k` costs `held(k) - compute(k) - held(k + 1)`, the device holding the request for
/// `total_ns`. The last tier's decoding and answering (`held - compute`) counts to the last
/// hop, so the hops and the stages' compute add up to `total_ns`. `None` when a stage has no
/// timing; figures a lying tier reports cannot make a hop negative.
pub fn measured_hops(total_ns: u64, stages: &[Stage], timings: &[StageTiming]) -> Option<Vec<(TierHop, u64)>> {
    let device = stages.first().filter(|s| s.tier == super::DEVICE_TIER);
    let device_compute = match device {
        Some(stage) => timings.iter().find(|t| t.tier == stage.tier)?.compute_ns,
        None => 0,
    };
    let remote = stages.get(usize::from(device.is_some())..).unwrap_or_default();
    // (tier, compute, held) along the chain, the device first.
    let mut chain = Vec::with_capacity(remote.len() + 1);
    chain.push((super::DEVICE_TIER, device_compute, total_ns));
    for stage in remote {
        let t = timings.iter().find(|t| t.tier == stage.tier)?;
        chain.push((stage.tier, t.compute_ns, t.held_ns));
    }
    let last = chain.len().saturating_sub(2);
    let hops = chain
        .windows(2)
        .enumerate()
        .map(|(k, pair)| {
            let ((from, compute, held), (to, next_compute, next_held)) = (pair[0], pair[1]);
            let mut ns = held.saturating_sub(compute).saturating_sub(next_held);
            if k == last {
                ns = ns.saturating_add(next_held.saturating_sub(next_compute));
            }
            ((from, to), ns)
        })
        .collect();
    Some(hops)
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Block = Block { start: 0, end: 10 };

    #[test]
    fn an_estimate_is_the_median_of_the_last_samples_once_there_are_enough() {
        let mut costs = ObservedCosts::default();
        costs.record(0, B, 100);
        costs.record(0, B, 300);
        assert_eq!(costs.estimate(0, B), None, "two samples are not enough");
        costs.record(0, B, 200);
        assert_eq!(costs.estimate(0, B), Some(200));
        assert_eq!(costs.estimate(1, B), None, "per tier");
        // The window keeps the last eight: eight slow samples push the fast ones out.
        for _ in 0..WINDOW {
            costs.record(0, B, 1_000);
        }
        assert_eq!(costs.estimate(0, B), Some(1_000));
        assert_eq!(costs.estimates().collect::<Vec<_>>(), [(0, B, 1_000)]);
    }

    #[test]
    fn the_stage_measured_longest_ago_is_forgotten_first() {
        let mut costs = ObservedCosts::default();
        for start in 0..=MAX_STAGES {
            for _ in 0..MIN_SAMPLES {
                costs.record(1, Block { start, end: start + 1 }, 5);
            }
        }
        assert_eq!(costs.estimates().count(), MAX_STAGES);
        assert_eq!(costs.estimate(1, Block { start: 0, end: 1 }), None);
        assert_eq!(costs.estimate(1, Block { start: MAX_STAGES, end: MAX_STAGES + 1 }), Some(5));
    }

    #[test]
    fn hop_residuals_may_be_negative_and_are_kept_per_pair_of_tiers() {
        let mut costs = ObservedCosts::default();
        for r in [-5, 7, -1] {
            costs.record_hop((0, 1), r);
        }
        costs.record_hop((1, 2), 9);
        assert_eq!(costs.hop_estimate((0, 1)), Some(-1));
        assert_eq!(costs.hop_estimate((1, 2)), None, "one sample is not enough");
        assert_eq!(costs.hop_estimates().collect::<Vec<_>>(), [((0, 1), -1)]);
        assert_eq!(costs.estimates().count(), 0, "hops are not stages");
    }

    fn stage(tier: u8, start: u32, end: u32) -> Stage {
        Stage { tier, machine: 0, start, end }
    }

    fn timing(tier: u8, compute_ns: u64, held_ns: u64) -> StageTiming {
        StageTiming { tier, machine: 0, compute_ns, held_ns }
    }

    #[test]
    fn hops_and_compute_add_up_to_the_end_to_end_time() {
        // device computes 10, sends (hop 20), edge decodes 1, computes 30, forwards (hop 40),
        // cloud decodes 2, computes 50, answers 3; the answers travel back inside the hops.
        let stages = [stage(0, 0, 4), stage(1, 4, 8), stage(2, 8, 12)];
        let cloud_held = 2 + 50 + 3;
        let edge_held = 1 + 30 + 40 + cloud_held;
        let total = 10 + 20 + edge_held;
        let timings = [timing(0, 10, 0), timing(1, 30, edge_held), timing(2, 50, cloud_held)];
        let hops = measured_hops(total, &stages, &timings).unwrap();
        // The edge's decoding counts to the hop it sends on.
        assert_eq!(hops, [((0, 1), 20), ((1, 2), 1 + 40 + 2 + 3)]);
        let compute: u64 = timings.iter().map(|t| t.compute_ns).sum();
        assert_eq!(hops.iter().map(|h| h.1).sum::<u64>() + compute, total);
    }

    #[test]
    fn a_device_that_computes_nothing_still_sends_the_first_hop() {
        let stages = [stage(2, 0, 12)];
        let hops = measured_hops(100, &stages, &[timing(2, 60, 70)]).unwrap();
        assert_eq!(hops, [((0, 2), 30 + 10)]);
        assert_eq!(measured_hops(100, &[stage(0, 0, 12)], &[timing(0, 100, 0)]), Some(Vec::new()), "no hop at all");
    }

    #[test]
    fn missing_or_lying_timings_give_no_hop_or_no_negative_one() {
        let stages = [stage(0, 0, 4), stage(1, 4, 12)];
        assert_eq!(measured_hops(100, &stages, &[timing(0, 10, 0)]), None, "the edge sent no timing");
        let lying = measured_hops(100, &stages, &[timing(0, 10, 0), timing(1, u64::MAX, u64::MAX)]).unwrap();
        assert_eq!(lying, [((0, 1), 0)]);
    }

    #[test]
    fn a_route_the_device_runs_alone_is_charged_its_whole_time_and_others_their_compute() {
        // Device alone: 10 of the 12 computed, 2 its own handling of the request, priced nowhere else.
        assert_eq!(charged_compute(12, &[stage(0, 0, 12)], 10), 12);
        assert_eq!(charged_compute(5, &[stage(0, 0, 12)], 10), 10, "never below its compute");
        // With hops, the handling is in the first hop: each stage keeps its compute.
        let split = [stage(0, 0, 4), stage(2, 4, 12)];
        assert_eq!(charged_compute(100, &split, 10), 10);
        assert_eq!(charged_compute(100, &[stage(2, 0, 12)], 60), 60);
    }
}
