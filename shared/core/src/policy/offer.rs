//! Which planned routes a device offers its policy (pure; the session says what the device
//! holds and what a range needs): the ranking without the routes whose device stages it does not
//! hold or that do not fit its memory, then the cloud-only offload and the local fallback; why
//! no route fits, in bytes; and which slices to fetch and keep.

use alloc::vec::Vec;
use core::fmt;

use super::{CLOUD_TIER, DEVICE_TIER, Route};
use crate::cut::Block;
use crate::wire::message::{CONFIGURED, Stage};

/// How many of the best ranked routes get their device slices fetched and kept.
pub const FETCHED_ROUTES: usize = 3;

/// What the device holds and what running a range of it takes.
pub trait DeviceSlices {
    /// Whether the device can run `block` now (it holds the model, or that slice's artifact).
    fn holds(&self, block: Block) -> bool;
    /// Bytes running `block` on the device needs.
    fn need(&self, block: Block) -> u64;
}

/// The route that runs all `nodes` nodes on `tier`'s configured server; `None` for a model of
/// more nodes than a stage can name.
pub fn whole_on(tier: u8, nodes: usize) -> Option<Route> {
    let end = u32::try_from(nodes).ok()?;
    Some(Route { stages: alloc::vec![Stage { tier, machine: CONFIGURED, start: 0, end }], predicted_ns: None })
}

/// The node ranges `route` gives the device.
pub fn device_blocks(route: &Route) -> impl Iterator<Item = Block> + '_ {
    route.stages.iter().filter(|s| s.tier == DEVICE_TIER).map(Stage::block)
}

/// What a device does to every ranking it is given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceRoutes {
    /// Bytes the device may use; a route with a device stage that needs more is left out.
    pub memory: Option<u64>,
    /// Everything in the cloud, for a device that lacks the slices of the planned routes.
    pub offload: Option<Route>,
    /// Everything on the device (degraded), when no route left runs on the device alone.
    pub fallback: Option<Route>,
}

/// A ranking as offered to the policy, and what was left out of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offered {
    /// The routes, best first, with the offload and fallback after the planned ones.
    pub routes: Vec<Route>,
    /// Planned routes left out: a device stage the device does not hold.
    pub not_held: usize,
    /// Planned routes left out: a device stage over the device's memory.
    pub over_memory: usize,
}

/// Why no planned route fits the device's memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryRefusal {
    /// Bytes the smallest device stage of any planned route needs.
    pub smallest: u64,
    /// Bytes the device has.
    pub memory: u64,
}

impl fmt::Display for MemoryRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mib = |bytes: u64| bytes as f64 / f64::from(1u32 << 20);
        write!(
            f,
            "no planned route fits the device's memory: its smallest device slice needs {:.1} MiB, the device (tier 0) has {:.1} MiB",
            mib(self.smallest),
            mib(self.memory)
        )
    }
}

impl DeviceRoutes {
    /// The fallback and offload routes for a model of `nodes` nodes: the fallback where it is
    /// wanted and the device holds and fits the whole model, the offload where the device runs
    /// from slice artifacts and has a cloud.
    pub fn for_model(nodes: usize, memory: Option<u64>, fallback: bool, offload: bool, device: &impl DeviceSlices) -> Self {
        let whole = Block { start: 0, end: nodes };
        let fits_whole = memory.is_none_or(|m| device.need(whole) <= m);
        Self {
            memory,
            fallback: (fallback && device.holds(whole) && fits_whole).then(|| whole_on(DEVICE_TIER, nodes)).flatten(),
            offload: offload.then(|| whole_on(CLOUD_TIER, nodes)).flatten(),
        }
    }

    /// Whether every device stage of `route` fits in the device's memory.
    pub fn fits(&self, route: &Route, device: &impl DeviceSlices) -> bool {
        let Some(memory) = self.memory else { return true };
        device_blocks(route).all(|b| device.need(b) <= memory)
    }

    /// Whether the device can run `route` now: it holds and fits every device stage.
    pub fn runs(&self, route: &Route, device: &impl DeviceSlices) -> bool {
        self.fits(route, device) && device_blocks(route).all(|b| device.holds(b))
    }

    /// `ranked` without the routes the device cannot run, then the offload (once), then the
    /// fallback when no route left runs on the device alone.
    pub fn offer(&self, mut ranked: Vec<Route>, device: &impl DeviceSlices) -> Offered {
        let before = ranked.len();
        ranked.retain(|r| device_blocks(r).all(|b| device.holds(b)));
        let held = ranked.len();
        ranked.retain(|r| self.fits(r, device));
        let (not_held, over_memory) = (before - held, held - ranked.len());
        if let Some(offload) = &self.offload
            && !ranked.contains(offload)
        {
            ranked.push(offload.clone());
        }
        if let Some(fallback) = &self.fallback
            && !ranked.iter().any(|r| r.stages.iter().all(|s| s.tier == DEVICE_TIER))
        {
            ranked.push(fallback.clone());
        }
        Offered { routes: ranked, not_held, over_memory }
    }

    /// Why none of `ranked` fits the device's memory; `None` when one does, when there are
    /// none, or when the device's memory is not bounded.
    pub fn memory_refusal(&self, ranked: &[Route], device: &impl DeviceSlices) -> Option<MemoryRefusal> {
        let memory = self.memory?;
        if ranked.is_empty() || ranked.iter().any(|r| self.fits(r, device)) {
            return None;
        }
        let smallest = ranked.iter().flat_map(device_blocks).map(|b| device.need(b)).min()?;
        Some(MemoryRefusal { smallest, memory })
    }

    /// The device slices to fetch: those of the best [`FETCHED_ROUTES`] fitting routes that the
    /// device does not hold yet.
    pub fn to_fetch(&self, ranked: &[Route], device: &impl DeviceSlices) -> Vec<Block> {
        let fitting = ranked.iter().filter(|r| self.fits(r, device)).take(FETCHED_ROUTES);
        fitting.flat_map(device_blocks).filter(|b| !device.holds(*b)).collect()
    }

    /// The device slices never dropped from the cache: those of the best [`FETCHED_ROUTES`].
    pub fn to_keep(ranked: &[Route]) -> Vec<Block> {
        ranked.iter().take(FETCHED_ROUTES).flat_map(device_blocks).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;

    /// A device that holds the ranges listed, each range needing 1 MiB per node.
    struct Board {
        held: Vec<Block>,
        whole_model: bool,
    }

    impl DeviceSlices for Board {
        fn holds(&self, block: Block) -> bool {
            self.whole_model || block.start == block.end || self.held.contains(&block)
        }
        fn need(&self, block: Block) -> u64 {
            (block.end - block.start) as u64 * (1 << 20)
        }
    }

    fn route(cuts: [u32; 2], nodes: u32) -> Route {
        let stages = [(DEVICE_TIER, 0, cuts[0]), (1, cuts[0], cuts[1]), (CLOUD_TIER, cuts[1], nodes)]
            .into_iter()
            .filter(|&(_, start, end)| start < end)
            .map(|(tier, start, end)| Stage { tier, machine: CONFIGURED, start, end })
            .collect();
        Route { stages, predicted_ns: Some(1) }
    }

    #[test]
    fn routes_the_device_cannot_hold_or_fit_are_left_out_and_the_offload_and_fallback_follow() {
        let board = Board { held: vec![Block { start: 0, end: 4 }, Block { start: 0, end: 8 }], whole_model: false };
        let rules = DeviceRoutes { memory: Some(6 << 20), offload: whole_on(CLOUD_TIER, 10), fallback: whole_on(DEVICE_TIER, 10) };
        let ranked = vec![route([2, 6], 10), route([4, 6], 10), route([8, 9], 10), route([0, 5], 10)];
        let offered = rules.offer(ranked, &board);
        // [0, 2) is not held; [0, 8) is held but needs 8 MiB of 6.
        assert_eq!((offered.not_held, offered.over_memory), (1, 1));
        let expected = vec![route([4, 6], 10), route([0, 5], 10), whole_on(CLOUD_TIER, 10).unwrap(), whole_on(DEVICE_TIER, 10).unwrap()];
        assert_eq!(offered.routes, expected);
        // The offload comes once, and no fallback where a route already runs on the device alone.
        let local = route([10, 10], 10);
        let offered = rules.offer(vec![whole_on(CLOUD_TIER, 10).unwrap(), local.clone()], &Board { held: vec![], whole_model: true });
        assert_eq!(offered.over_memory, 1, "the local route needs 10 MiB of 6");
        assert_eq!(offered.routes, vec![whole_on(CLOUD_TIER, 10).unwrap(), whole_on(DEVICE_TIER, 10).unwrap()]);
        let roomy = DeviceRoutes { memory: None, ..rules };
        let offered = roomy.offer(vec![local.clone()], &Board { held: vec![], whole_model: true });
        assert_eq!(offered.routes, vec![local, whole_on(CLOUD_TIER, 10).unwrap()]);
    }

    #[test]
    fn a_ranking_that_fits_nowhere_says_the_smallest_need_and_the_memory() {
        let board = Board { held: vec![], whole_model: true };
        let rules = DeviceRoutes { memory: Some(2 << 20), ..DeviceRoutes::default() };
        let ranked = vec![route([4, 6], 10), route([3, 6], 10)];
        let refusal = rules.memory_refusal(&ranked, &board).unwrap();
        assert_eq!(refusal, MemoryRefusal { smallest: 3 << 20, memory: 2 << 20 });
        assert!(refusal.to_string().contains("needs 3.0 MiB, the device (tier 0) has 2.0 MiB"), "{refusal}");
        assert_eq!(rules.memory_refusal(&[route([2, 6], 10)], &board), None, "one route fits");
        assert_eq!(rules.memory_refusal(&[], &board), None);
        assert_eq!(DeviceRoutes::default().memory_refusal(&ranked, &board), None, "memory not bounded");
    }

    #[test]
    fn slices_are_fetched_for_the_best_fitting_routes_and_kept_for_the_best_ranked() {
        let board = Board { held: vec![Block { start: 0, end: 2 }], whole_model: false };
        let rules = DeviceRoutes { memory: Some(5 << 20), ..DeviceRoutes::default() };
        let ranked = vec![route([2, 6], 10), route([9, 9], 10), route([3, 6], 10), route([4, 6], 10), route([5, 6], 10)];
        // [0, 9) does not fit; of the three best fitting, [0, 2) is held.
        assert_eq!(rules.to_fetch(&ranked, &board), vec![Block { start: 0, end: 3 }, Block { start: 0, end: 4 }]);
        assert_eq!(
            DeviceRoutes::to_keep(&ranked),
            vec![Block { start: 0, end: 2 }, Block { start: 0, end: 9 }, Block { start: 0, end: 3 }]
        );
        assert!(rules.runs(&ranked[0], &board) && !rules.runs(&ranked[2], &board) && !rules.runs(&ranked[1], &board));
    }

    #[test]
    fn the_fallback_is_offered_only_where_the_device_holds_and_fits_the_whole_model() {
        let whole = Board { held: vec![], whole_model: true };
        let artifacts = Board { held: vec![], whole_model: false };
        assert_eq!(DeviceRoutes::for_model(10, None, true, false, &whole).fallback, whole_on(DEVICE_TIER, 10));
        assert_eq!(DeviceRoutes::for_model(10, Some(9 << 20), true, false, &whole).fallback, None, "10 MiB of 9");
        assert_eq!(DeviceRoutes::for_model(10, None, true, true, &artifacts).fallback, None);
        assert_eq!(DeviceRoutes::for_model(10, None, false, true, &artifacts).offload, whole_on(CLOUD_TIER, 10));
        assert_eq!(whole_on(CLOUD_TIER, usize::MAX), None);
    }
}
