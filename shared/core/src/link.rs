//! What one hop between machines costs: a directed link's figures and the encodings
//! activations travel in. The solver's cost model, the wire protocol, the link emulator and the
//! runtime's link estimates all speak these types, so they sit below all of them.

use serde::{Deserialize, Serialize};

/// A directed link's figures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    /// One-way latency charged per message, in nanoseconds.
    pub latency_ns: u64,
    /// Bandwidth in bits per second (> 0).
    pub bits_per_sec: u64,
}

impl Link {
    /// Time to send `bytes` over this link: latency plus serialisation, rounded up to a whole
    /// nanosecond.
    pub fn transfer_ns(&self, bytes: u64) -> u64 {
        let bps = u128::from(self.bits_per_sec.max(1));
        let serialise = (u128::from(bytes) * 8_000_000_000).div_ceil(bps);
        self.latency_ns.saturating_add(u64::try_from(serialise).unwrap_or(u64::MAX))
    }
}

/// How activations are encoded on the wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// 32-bit floats, as computed (bit-exact).
    #[default]
    F32,
    /// 16-bit floats: half the bytes.
    F16,
    /// 8-bit integers with a per-tensor scale and zero point: a quarter of the bytes plus 8.
    Int8,
}

impl Encoding {
    /// Bytes on the wire for `dense_f32_bytes` of f32 activations.
    pub fn wire_bytes(self, dense_f32_bytes: u64) -> u64 {
        match self {
            Encoding::F32 => dense_f32_bytes,
            Encoding::F16 => dense_f32_bytes.div_ceil(2),
            Encoding::Int8 => dense_f32_bytes.div_ceil(4) + 8,
        }
    }
}
