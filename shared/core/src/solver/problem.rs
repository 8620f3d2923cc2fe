//! The planning problem: tiers in chain order, candidate machines with per-block compute times,
//! directed links, and the bytes that cross every block boundary.
//!
//! All times are integer nanoseconds and all sizes integer bytes, so a plan's cost is an exact
//! integer sum whatever order it is added in: the dynamic program and the brute-force
//! enumerator agree to the last nanosecond.

use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

pub use crate::link::{Encoding, Link, MAX_PS_PER_BYTE, MessageCost};

/// Cost-model switches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CostOptions {
    /// Charge a hop that brings the result back to the device.
    pub return_result: bool,
    /// Activation encoding on every hop.
    pub encoding: Encoding,
    /// Fixed bytes added to every message (framing, headers).
    pub message_overhead: u64,
}

impl Default for CostOptions {
    fn default() -> Self {
        Self { return_result: true, encoding: Encoding::F32, message_overhead: 64 }
    }
}

impl CostOptions {
    /// The original Scission's model: no return hop, no overhead, bytes as measured.
    pub fn scission_compatible() -> Self {
        Self { return_result: false, encoding: Encoding::F32, message_overhead: 0 }
    }
}

/// A candidate machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    /// Unique name.
    pub name: String,
    /// Index of its tier.
    pub tier: usize,
    /// Compute time of each block on this machine, in nanoseconds.
    pub block_ns: Vec<u64>,
    /// Expected wait before this machine starts a new request (its queue, as it last reported
    /// it), charged once to every plan that hands work to it. The device's own is never charged.
    #[serde(default)]
    pub queue_ns: u64,
    /// Ranges of blocks measured as one slice on this machine, whose cost then replaces the
    /// sum of their blocks. Only ranges that start at the first block or end at the last count
    /// (the device always runs a prefix, the last tier a suffix); see [`RangeCost`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ranges: Vec<RangeCost>,
    /// What it spends on each message it sends or receives beyond the link (encoding, QUIC,
    /// TLS), as its profile measured it; nothing when unmeasured.
    #[serde(default, skip_serializing_if = "MessageCost::is_zero")]
    pub messages: MessageCost,
}

/// The measured compute time of blocks `[start, end)` run as one slice. A slice fuses what its
/// blocks did apart, so it may cost more or less than the sum of its blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeCost {
    /// First block.
    pub start: usize,
    /// One past the last block.
    pub end: usize,
    /// Nanoseconds.
    pub ns: u64,
}

impl Machine {
    /// A machine that knows only its block times.
    pub fn new(name: impl Into<String>, tier: usize, block_ns: Vec<u64>) -> Self {
        Self { name: name.into(), tier, block_ns, queue_ns: 0, ranges: Vec::new(), messages: MessageCost::default() }
    }

    /// Compute time of blocks `[start, end)`: the measured range if there is one, else the sum
    /// of the blocks.
    pub fn segment_ns(&self, start: usize, end: usize) -> u64 {
        match self.ranges.iter().find(|r| r.start == start && r.end == end) {
            Some(r) => r.ns,
            None => self.block_ns.get(start..end).map_or(0, |b| b.iter().sum()),
        }
    }
}

/// One planning instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// Tier names in chain order; tier 0 holds the raw input (the device).
    pub tiers: Vec<String>,
    /// Candidate machines.
    pub machines: Vec<Machine>,
    /// Dense activation bytes crossing each block boundary (`blocks + 1` entries; the last is the
    /// model output).
    pub boundary_bytes: Vec<u64>,
    /// Bytes of the raw input as sent when the device runs nothing.
    pub input_bytes: u64,
    /// Weight bytes of each block (for memory caps).
    pub block_weight_bytes: Vec<u64>,
    /// Activation bytes each block reads and writes (for memory caps).
    pub block_activation_bytes: Vec<u64>,
    /// Directed links `(from machine, to machine, link)`.
    pub links: Vec<(usize, usize, Link)>,
    /// Cost-model switches.
    pub options: CostOptions,
}

/// Most tiers in a chain.
pub const MAX_TIERS: usize = 16;
/// Most blocks in a model.
pub const MAX_BLOCKS: usize = 1 << 20;
/// Most candidate machines. With [`MAX_BLOCKS`], every (machine, boundary) state fits the
/// solver's 32-bit state ids, and every memory sum fits 64 bits.
pub const MAX_MACHINES: usize = 1 << 10;
/// Largest one-way link latency accepted: one hour.
pub const MAX_LATENCY_NS: u64 = 3_600_000_000_000;
/// Largest byte count accepted for an input, an activation or a message overhead: 1 TiB.
pub const MAX_BYTES: u64 = 1 << 40;
/// Largest total of one machine's block times, and largest time one hop may take to carry the
/// largest message: 10^17 ns (about three years). With at most [`MAX_TIERS`] tiers, every plan's
/// cost (16 stages, 15 hops each way: under 4.7 x 10^18 ns) then fits the solver's signed 64-bit
/// sums.
pub const MAX_SPAN_NS: u64 = 100_000_000_000_000_000;

/// Why a [`Problem`] or its constraints cannot be solved as given.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProblemError {
    /// The problem has no blocks, tiers or machines.
    #[error("nothing to plan: {0}")]
    Empty(&'static str),
    /// A machine's block list has the wrong length.
    #[error("machine '{machine}' has {got} block times, expected {expected}")]
    BlockCount {
        /// Machine name.
        machine: String,
        /// Its count.
        got: usize,
        /// The problem's block count.
        expected: usize,
    },
    /// A machine names a tier that does not exist.
    #[error("machine '{0}' is in an unknown tier")]
    UnknownTier(String),
    /// Two machines share a name.
    #[error("two machines are called '{0}'")]
    DuplicateMachine(String),
    /// A link has zero bandwidth or names an unknown machine.
    #[error("invalid link: {0}")]
    BadLink(String),
    /// A plan could need a link that is not given.
    #[error("no link from '{from}' to '{to}' (needed when {from} hands over to {to}); give its latency and bandwidth")]
    MissingLink {
        /// Sending machine.
        from: String,
        /// Receiving machine.
        to: String,
    },
    /// A figure is outside the documented bounds.
    #[error("{0}")]
    OutOfRange(String),
    /// Constraints contradict each other.
    #[error("contradictory constraints: {0}")]
    Contradiction(String),
    /// A constraint names something that does not exist.
    #[error("invalid constraint: {0}")]
    BadConstraint(String),
}

impl Problem {
    /// Number of blocks.
    pub fn blocks(&self) -> usize {
        self.boundary_bytes.len().saturating_sub(1)
    }

    /// Index of the machine called `name`.
    pub fn machine_index(&self, name: &str) -> Option<usize> {
        self.machines.iter().position(|m| m.name == name)
    }

    /// The link from machine `a` to machine `b`.
    pub fn link(&self, a: usize, b: usize) -> Option<Link> {
        self.links.iter().find(|(x, y, _)| *x == a && *y == b).map(|l| l.2)
    }

    /// What the two ends of a hop from machine `a` to `b` spend on a message of `bytes`
    /// besides the link (each [`MessageCost::end_ns`]); saturating.
    pub fn message_ns(&self, a: usize, b: usize, bytes: u64) -> u64 {
        let end = |m: usize| self.machines.get(m).map_or(0, |m| m.messages.end_ns(bytes));
        end(a).saturating_add(end(b))
    }

    /// A hop of `bytes` from machine `a` to `b`: the link's transfer and both ends' message
    /// costs. `None` without a link.
    pub fn hop_ns(&self, a: usize, b: usize, bytes: u64) -> Option<u64> {
        Some(self.hop_over(self.link(a, b)?, a, b, bytes))
    }

    /// [`Problem::hop_ns`] over `link`, the link from `a` to `b` already looked up.
    pub fn hop_over(&self, link: Link, a: usize, b: usize, bytes: u64) -> u64 {
        link.transfer_ns(bytes).saturating_add(self.message_ns(a, b, bytes))
    }

    /// Bytes sent when the DNN is handed over at boundary `p` (the raw input at 0).
    pub fn handover_bytes(&self, p: usize) -> u64 {
        let payload = if p == 0 { self.input_bytes } else { self.options.encoding.wire_bytes(self.boundary_bytes[p]) };
        payload + self.options.message_overhead
    }

    /// Bytes of the result sent back to the device.
    pub fn result_bytes(&self) -> u64 {
        self.options.encoding.wire_bytes(self.boundary_bytes[self.blocks()]) + self.options.message_overhead
    }

    /// Checks sizes, names and links for internal consistency.
    pub fn validate(&self) -> Result<(), ProblemError> {
        let n = self.blocks();
        if n == 0 {
            return Err(ProblemError::Empty("the model has no blocks"));
        }
        if self.tiers.is_empty() || self.machines.is_empty() {
            return Err(ProblemError::Empty("no tiers or no machines"));
        }
        if let Some((i, t)) = self.tiers.iter().enumerate().find(|(i, t)| self.tiers[..*i].contains(t)) {
            return Err(ProblemError::BadConstraint(alloc::format!("tier '{t}' appears twice in the chain (position {i})")));
        }
        for (i, m) in self.machines.iter().enumerate() {
            if m.block_ns.len() != n {
                return Err(ProblemError::BlockCount { machine: m.name.clone(), got: m.block_ns.len(), expected: n });
            }
            if m.tier >= self.tiers.len() {
                return Err(ProblemError::UnknownTier(m.name.clone()));
            }
            if self.machines[..i].iter().any(|o| o.name == m.name) {
                return Err(ProblemError::DuplicateMachine(m.name.clone()));
            }
            validate_ranges(m, n)?;
        }
        if self.block_weight_bytes.len() != n || self.block_activation_bytes.len() != n {
            return Err(ProblemError::Empty("per-block memory figures do not match the block count"));
        }
        for (a, b, link) in &self.links {
            if *a >= self.machines.len() || *b >= self.machines.len() {
                return Err(ProblemError::BadLink(alloc::format!("machine index {a} or {b} is out of range")));
            }
            if link.bits_per_sec == 0 {
                let (a, b) = (&self.machines[*a].name, &self.machines[*b].name);
                return Err(ProblemError::BadLink(alloc::format!("{a} -> {b} has zero bandwidth")));
            }
        }
        self.validate_bounds()
    }

    /// Every figure within the documented bounds, so no cost can overflow.
    fn validate_bounds(&self) -> Result<(), ProblemError> {
        let out = |text: String| Err(ProblemError::OutOfRange(text));
        if self.tiers.len() > MAX_TIERS {
            return out(alloc::format!("{} tiers; a chain has at most {MAX_TIERS}", self.tiers.len()));
        }
        if self.blocks() > MAX_BLOCKS || self.machines.len() > MAX_MACHINES {
            return out(alloc::format!(
                "{} blocks on {} machines; the planner takes at most {MAX_BLOCKS} blocks and {MAX_MACHINES} machines",
                self.blocks(),
                self.machines.len()
            ));
        }
        let byte_figures = [self.input_bytes, self.options.message_overhead].into_iter().chain(self.boundary_bytes.iter().copied());
        let figures = byte_figures.chain(self.block_weight_bytes.iter().copied()).chain(self.block_activation_bytes.iter().copied());
        if let Some(bytes) = figures.into_iter().find(|&b| b > MAX_BYTES) {
            return out(alloc::format!("{bytes} bytes is more than the {MAX_BYTES} a model's figures may reach"));
        }
        for m in &self.machines {
            let measured = m.ranges.iter().map(|r| r.ns).max().unwrap_or(0);
            if m.messages.fixed_ns > MAX_LATENCY_NS || m.messages.ps_per_byte > MAX_PS_PER_BYTE {
                return out(alloc::format!(
                    "machine '{}': message cost of {} ns + {} ps/byte is beyond an hour or {MAX_PS_PER_BYTE} ps/byte",
                    m.name,
                    m.messages.fixed_ns,
                    m.messages.ps_per_byte
                ));
            }
            let total = m.block_ns.iter().fold(m.queue_ns, |sum, &ns| sum.saturating_add(ns)).max(m.queue_ns.saturating_add(measured));
            if total > MAX_SPAN_NS {
                return out(alloc::format!(
                    "machine '{}' takes {total} ns for the model (queue included), more than {MAX_SPAN_NS}",
                    m.name
                ));
            }
        }
        let largest = (0..=self.blocks()).map(|p| self.handover_bytes(p)).chain(core::iter::once(self.result_bytes())).max().unwrap_or(0);
        for (a, b, link) in &self.links {
            let (a, b) = (&self.machines[*a].name, &self.machines[*b].name);
            if link.latency_ns > MAX_LATENCY_NS {
                return out(alloc::format!("link {a} -> {b}: latency of {} ns is more than an hour", link.latency_ns));
            }
            let ns = link.transfer_ns(largest);
            if ns > MAX_SPAN_NS {
                return out(alloc::format!(
                    "link {a} -> {b}: {} bit/s would take {ns} ns to carry {largest} bytes, more than {MAX_SPAN_NS}",
                    link.bits_per_sec
                ));
            }
        }
        Ok(())
    }
}

/// A machine's measured ranges: each within the model, starting at block 0 or ending at the last
/// block, and each range given once (so there are at most `2n - 1` of them; the check sorts a
/// copy rather than comparing every pair, for a profile from a peer may hold many).
fn validate_ranges(m: &Machine, n: usize) -> Result<(), ProblemError> {
    let name = &m.name;
    if m.ranges.len() > n.saturating_mul(2).saturating_sub(1) {
        return Err(ProblemError::OutOfRange(alloc::format!(
            "machine '{name}': {} measured ranges, more than the {} a model of {n} blocks has from its ends",
            m.ranges.len(),
            n.saturating_mul(2).saturating_sub(1)
        )));
    }
    for r in &m.ranges {
        if r.start >= r.end || r.end > n {
            return Err(ProblemError::OutOfRange(alloc::format!(
                "machine '{name}': measured range [{}, {}) is not within the {n} blocks",
                r.start,
                r.end
            )));
        }
        if r.start != 0 && r.end != n {
            return Err(ProblemError::OutOfRange(alloc::format!(
                "machine '{name}': measured range [{}, {}) neither starts at the first block nor ends at the last; the planner uses only those",
                r.start,
                r.end
            )));
        }
    }
    let mut spans: Vec<(usize, usize)> = m.ranges.iter().map(|r| (r.start, r.end)).collect();
    spans.sort_unstable();
    if let Some(w) = spans.windows(2).find(|w| w[0] == w[1]) {
        return Err(ProblemError::OutOfRange(alloc::format!("machine '{name}': range [{}, {}) is measured twice", w[0].0, w[0].1)));
    }
    Ok(())
}
