//! What stages really cost where they run: a running estimate of each (tier, node range)'s
//! compute time, from the timings answered requests bring back, for a planner to use in place
//! of its profiles' figures (the closed loop: predictions follow the deployment, not the
//! benchmark).

use alloc::vec::Vec;

use crate::cut::Block;

/// Samples kept per stage (the most recent).
pub const WINDOW: usize = 8;
/// Samples a stage needs before it has an estimate.
pub const MIN_SAMPLES: usize = 3;
/// Stages remembered; the one measured longest ago is forgotten first.
pub const MAX_STAGES: usize = 64;

/// Running estimates of stage compute times.
#[derive(Clone, Debug, Default)]
pub struct ObservedCosts {
    /// Least recently measured first.
    stages: Vec<Observed>,
}

#[derive(Clone, Debug)]
struct Observed {
    tier: u8,
    block: Block,
    /// Ring of the last samples; `count` of them are valid.
    samples: [u64; WINDOW],
    count: usize,
    next: usize,
}

impl Observed {
    fn median(&self) -> Option<u64> {
        if self.count < MIN_SAMPLES {
            return None;
        }
        let mut sorted = self.samples;
        let valid = &mut sorted[..self.count];
        valid.sort_unstable();
        valid.get(self.count / 2).copied()
    }
}

impl ObservedCosts {
    /// Records that tier `tier` computed nodes `block` in `ns` nanoseconds.
    pub fn record(&mut self, tier: u8, block: Block, ns: u64) {
        let at = self.stages.iter().position(|s| s.tier == tier && s.block == block);
        let mut stage = match at {
            Some(i) => self.stages.remove(i),
            None => Observed { tier, block, samples: [0; WINDOW], count: 0, next: 0 },
        };
        if let Some(slot) = stage.samples.get_mut(stage.next) {
            *slot = ns;
        }
        stage.next = (stage.next + 1) % WINDOW;
        stage.count = (stage.count + 1).min(WINDOW);
        if self.stages.len() >= MAX_STAGES {
            self.stages.remove(0);
        }
        self.stages.push(stage);
    }

    /// The median of the last samples of `block` on `tier`, once it has [`MIN_SAMPLES`].
    pub fn estimate(&self, tier: u8, block: Block) -> Option<u64> {
        self.stages.iter().find(|s| s.tier == tier && s.block == block).and_then(Observed::median)
    }

    /// Every stage with an estimate: `(tier, node range, nanoseconds)`.
    pub fn estimates(&self) -> impl Iterator<Item = (u8, Block, u64)> + '_ {
        self.stages.iter().filter_map(|s| s.median().map(|ns| (s.tier, s.block, ns)))
    }
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
}
