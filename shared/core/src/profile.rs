//! The benchmark profile: what one machine measured for one model, as a versioned JSON
//! document. The solver plans from profiles; every tier writes one with `bench`.
//!
//! Times are nanoseconds, sizes bytes. A profile names the model by the SHA-256 of its ONNX
//! file, so profiles of different models are never mixed.

use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

use crate::cut::Block;
use crate::stats::Summary;

/// Value of [`Profile::format`].
pub const PROFILE_FORMAT: &str = "scission-profile";
/// Current [`Profile::version`]. Bumped on any incompatible change.
pub const PROFILE_VERSION: u32 = 1;

/// Role of a machine in the device -> edge -> cloud chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TierKind {
    /// The end device that holds the raw input (e.g. a Raspberry Pi).
    Device,
    /// A nearby server.
    Edge,
    /// A remote data-centre server.
    Cloud,
}

impl TierKind {
    /// Lower-case name, as in JSON and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            TierKind::Device => "device",
            TierKind::Edge => "edge",
            TierKind::Cloud => "cloud",
        }
    }
}

/// A per-machine benchmark of one model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// Always [`PROFILE_FORMAT`].
    pub format: String,
    /// [`PROFILE_VERSION`] of the writer.
    pub version: u32,
    /// Which model was measured.
    pub model: ModelFacts,
    /// Which machine measured it.
    pub machine: MachineFacts,
    /// Largest number of tensors allowed to cross a cut point.
    pub max_crossing: usize,
    /// Per-block timings, in execution order; consecutive blocks share a boundary.
    pub blocks: Vec<BlockProfile>,
    /// Every cut point (block boundaries, including 0 and the end).
    pub cuts: Vec<CutProfile>,
    /// The unsplit model, run as one plan.
    pub whole_model: Summary,
    /// Sum of the block medians.
    pub sum_of_blocks_ns: u64,
    /// `sum_of_blocks_ns / whole_model.median_ns`: the cost of cutting everywhere (the
    /// original Scission's "NE vs SUM" gap).
    pub sum_over_whole: f64,
    /// Wall time of the whole benchmark, seconds.
    pub bench_seconds: f64,
    /// Ranges of blocks timed as one slice (`bench --ranges`): the planner uses their times in
    /// place of the sums of their blocks. Absent from profiles written without it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ranges: Vec<RangeProfile>,
    /// What this machine spends per message beyond the link (encoding, QUIC, TLS), measured by
    /// `bench` as hops over loopback; absent from profiles written without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<crate::link::MessageCost>,
    /// How the block times were measured; absent from profiles written before there was a
    /// choice (they timed each block alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<TimingMethod>,
}

/// How `bench` times a model's blocks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimingMethod {
    /// Run the unsplit model, optimised once, with a timer around each of its nodes, and give
    /// each node's time to the block its decluttered node lies in ([`crate::attribution`]):
    /// every run prices every block, and no block is built on its own. What a slice fuses
    /// across a block boundary is priced as the unsplit model fuses it.
    #[default]
    Profile,
    /// Build each block as a slice of its own and time it alone, on the activations the
    /// blocks before it produced: a block's cost as a one-block slice, at the price of an
    /// optimised plan and a budget of runs per block.
    Blocks,
}

/// Timing of a range of blocks run as one slice.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RangeProfile {
    /// First block (an index into [`Profile::blocks`]).
    pub first_block: usize,
    /// One past the last block.
    pub end_block: usize,
    /// Node range.
    pub range: Block,
    /// Timings of the slice, on the same activations as its blocks.
    pub time: Summary,
}

impl Profile {
    /// The sum of the medians of blocks `[first, end)` (0 outside the profile's blocks).
    pub fn blocks_ns(&self, first: usize, end: usize) -> u64 {
        self.blocks.get(first..end).map_or(0, |blocks| blocks.iter().map(|b| b.time.median_ns).sum())
    }

    /// This profile with each block's, range's and the whole model's median replaced by its
    /// 90th percentile. Plans priced from it rank by each stage's time one run in ten, added
    /// stage by stage: the slow runs of a machine whose speed shifts (a shared host, a board
    /// that throttles) come together, so a plan whose stages spread widely ranks lower.
    pub fn at_p90(mut self) -> Self {
        for time in self.blocks.iter_mut().map(|b| &mut b.time).chain(self.ranges.iter_mut().map(|r| &mut r.time)) {
            time.median_ns = time.p90_ns.max(time.median_ns);
        }
        self.whole_model.median_ns = self.whole_model.p90_ns.max(self.whole_model.median_ns);
        self.sum_of_blocks_ns = self.blocks.iter().map(|b| b.time.median_ns).fold(0, u64::saturating_add);
        self
    }
}

/// Identity of the measured model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelFacts {
    /// File name as given (informative).
    pub name: String,
    /// Hex SHA-256 of the ONNX bytes.
    pub sha256: String,
    /// Concrete input shapes used.
    pub input_shapes: Vec<Vec<u64>>,
    /// Compute nodes in the typed graph.
    pub nodes: usize,
}

/// The machine that ran the benchmark.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineFacts {
    /// Machine name, unique within a cluster (e.g. `raspi4`).
    pub name: String,
    /// Its tier.
    pub tier: TierKind,
    /// CPU architecture, e.g. `x86_64`, `aarch64`.
    pub arch: String,
    /// Operating system.
    pub os: String,
    /// CPU model string, when known.
    pub cpu_model: String,
    /// Logical cores available.
    pub cores: u32,
    /// Threads the engine used.
    pub threads: u32,
    /// N when the benchmark played a board N times slower than this machine, doing each run N
    /// times (`scission-device --emulate-slower N`); absent at the machine's own speed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emulated_slowdown: Option<u32>,
}

impl MachineFacts {
    /// How many times slower than its machine the profiled board was played (1: not at all).
    pub fn slowdown(&self) -> u32 {
        self.emulated_slowdown.unwrap_or(1)
    }
}

/// Timing of one block.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BlockProfile {
    /// Node range.
    pub range: Block,
    /// Name of the first node.
    pub first_node: String,
    /// Name of the last node.
    pub last_node: String,
    /// Timings of the block alone, on real activations from the blocks before it.
    pub time: Summary,
    /// Bytes of the weights its nodes read.
    pub weight_bytes: u64,
    /// Bytes of the activations it reads and writes (crossing its start and end).
    pub activation_bytes: u64,
    /// The heap the block took on the machine that benchmarked it, where that machine counted
    /// it (absent in older profiles).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<BlockMemory>,
}

/// Heap bytes a block took as the benchmarking process really allocated them (counted by its
/// allocator, not derived from tensor sizes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockMemory {
    /// What its built slice keeps while it serves: packed weights, the plan, its state.
    pub resident_bytes: u64,
    /// The most it had live at once, building or running, over what was live before.
    pub peak_bytes: u64,
}

impl BlockMemory {
    /// What the block needs beyond what it keeps: building and running transients.
    pub fn transient_bytes(&self) -> u64 {
        self.peak_bytes.saturating_sub(self.resident_bytes)
    }
}

/// One cut point.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CutProfile {
    /// Position in evaluation order.
    pub position: usize,
    /// Bytes crossing it (dense, uncompressed).
    pub bytes: u64,
    /// Names of the crossing tensors.
    pub tensors: Vec<String>,
}

/// Why text is not a SHA-256.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a SHA-256 (64 hex digits)")]
pub struct BadSha256(pub String);

/// Parses a SHA-256 written as 64 hex digits (as profiles record the model's).
pub fn parse_sha256(hex: &str) -> Result<[u8; 32], BadSha256> {
    let bad = || BadSha256(String::from(hex));
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        let digit = |c: u8| char::from(c).to_digit(16).ok_or_else(bad);
        *byte = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).map_err(|_| bad())?;
    }
    Ok(out)
}
