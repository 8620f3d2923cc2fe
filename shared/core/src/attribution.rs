//! Attributing the per-node times of one optimised whole-model run to the blocks of the cut
//! graph, so that one profiled run of the unsplit model prices every block at once.
//!
//! The engine cuts the model on its portably decluttered graph, but runs the optimised one,
//! whose nodes keep the name of the decluttered node they came from or extend it with
//! `.suffix` parts (`conv_5.matmatmul`, `relu_3.low.prefused`). [`NameIndex`] maps an optimised
//! node back to the position of that decluttered node; [`BlockTimes`] sums a run's node times
//! per block.

use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;

use crate::cut::Block;

/// The positions of the decluttered graph's nodes, by name.
#[derive(Clone, Debug, Default)]
pub struct NameIndex<'a> {
    positions: BTreeMap<&'a str, usize>,
}

impl<'a> NameIndex<'a> {
    /// Indexes `names`, the decluttered nodes in position order. A name given twice keeps its
    /// first position.
    pub fn new(names: impl IntoIterator<Item = &'a str>) -> Self {
        let mut positions = BTreeMap::new();
        for (position, name) in names.into_iter().enumerate() {
            positions.entry(name).or_insert(position);
        }
        Self { positions }
    }

    /// The position of the decluttered node `optimised` (an optimised node's name) came from:
    /// the node of that exact name, else of the longest prefix of it that ends before a `.`.
    /// `None` when no prefix names a node (sources and constants the optimiser added).
    pub fn position(&self, optimised: &str) -> Option<usize> {
        let mut name = optimised;
        loop {
            if let Some(&position) = self.positions.get(name) {
                return Some(position);
            }
            name = &name[..name.rfind('.')?];
        }
    }
}

/// The block holding `position`, in `blocks` (contiguous and ascending, as
/// [`crate::cut::blocks`] makes them).
pub fn block_of(blocks: &[Block], position: usize) -> Option<usize> {
    let i = blocks.partition_point(|b| b.end <= position);
    blocks.get(i).filter(|b| b.start <= position).map(|_| i)
}

/// Node times of one run, summed per block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockTimes {
    /// Nanoseconds per block.
    pub blocks: Vec<u64>,
    /// Nanoseconds of nodes no block holds.
    pub unattributed: u64,
}

impl BlockTimes {
    /// No time yet, for `blocks` blocks.
    pub fn new(blocks: usize) -> Self {
        Self { blocks: vec![0; blocks], unattributed: 0 }
    }

    /// Adds `ns` to block `block`, or to the unattributed time when `None` (or out of range).
    pub fn add(&mut self, block: Option<usize>, ns: u64) {
        match block.and_then(|b| self.blocks.get_mut(b)) {
            Some(total) => *total = total.saturating_add(ns),
            None => self.unattributed = self.unattributed.saturating_add(ns),
        }
    }

    /// All the time recorded, attributed or not.
    pub fn total(&self) -> u64 {
        self.blocks.iter().fold(self.unattributed, |sum, &t| sum.saturating_add(t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_optimised_node_maps_to_the_longest_dotted_prefix_that_names_a_node() {
        let index = NameIndex::new(["conv_1", "conv_10", "relu_3.low", "add", "conv_1"]);
        assert_eq!(index.position("conv_1"), Some(0));
        assert_eq!(index.position("conv_10.matmatmul"), Some(1), "conv_10, not its prefix conv_1");
        assert_eq!(index.position("conv_1.im2col.pack"), Some(0));
        assert_eq!(index.position("relu_3.low.prefused"), Some(2));
        assert_eq!(index.position("relu_3"), None, "a prefix of a name is not the node");
        assert_eq!(index.position("conv_100"), None, "prefixes end at a dot");
        assert_eq!(index.position("source"), None);
        assert_eq!(index.position(""), None);
        assert_eq!(index.position("add."), Some(3));
    }

    #[test]
    fn positions_fall_in_the_block_that_holds_them() {
        let blocks = [Block { start: 0, end: 3 }, Block { start: 3, end: 4 }, Block { start: 4, end: 9 }];
        let found: Vec<_> = (0..10).map(|p| block_of(&blocks, p)).collect();
        assert_eq!(found, [Some(0), Some(0), Some(0), Some(1), Some(2), Some(2), Some(2), Some(2), Some(2), None]);
        assert_eq!(block_of(&[], 0), None);
        assert_eq!(block_of(&[Block { start: 2, end: 4 }], 1), None, "before the first block");
    }

    #[test]
    fn a_run_sums_its_node_times_per_block_and_keeps_what_no_block_holds() {
        let mut times = BlockTimes::new(2);
        for (block, ns) in [(Some(0), 5), (Some(1), 7), (Some(0), 1), (None, 3), (Some(9), 2), (Some(1), u64::MAX)] {
            times.add(block, ns);
        }
        assert_eq!(times.blocks, [6, u64::MAX]);
        assert_eq!(times.unattributed, 5);
        assert_eq!(times.total(), u64::MAX);
    }
}
