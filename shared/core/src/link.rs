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

/// Largest per-byte message cost accepted: a microsecond per byte (1 MB/s).
pub const MAX_PS_PER_BYTE: u64 = 1_000_000;

/// What one machine spends on a message it sends or receives, beyond the link's figures:
/// encoding or decoding the frame, QUIC and TLS. `bench` measures it as hops over loopback,
/// which pay both ends on one machine; each end of a real hop is charged half of its machine's
/// figure ([`MessageCost::end_ns`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageCost {
    /// Nanoseconds per message, whatever its size.
    pub fixed_ns: u64,
    /// Picoseconds per byte.
    pub ps_per_byte: u64,
}

impl MessageCost {
    /// A loopback hop of `bytes` on this machine (both ends), rounded up; saturating.
    pub fn loopback_ns(&self, bytes: u64) -> u64 {
        let per_byte = (u128::from(bytes) * u128::from(self.ps_per_byte)).div_ceil(1000);
        self.fixed_ns.saturating_add(u64::try_from(per_byte).unwrap_or(u64::MAX))
    }

    /// One end's share of a hop of `bytes`.
    pub fn end_ns(&self, bytes: u64) -> u64 {
        self.loopback_ns(bytes) / 2
    }

    /// Whether it charges nothing (a profile that did not measure it).
    pub fn is_zero(&self) -> bool {
        *self == Self::default()
    }

    /// The cost through two measured loopback hops `(bytes, ns)`, a small and a large one:
    /// the per-byte cost from their difference, the fixed cost from the small one (neither
    /// below zero). `None` unless the large one carries more bytes.
    pub fn fit(small: (u64, u64), large: (u64, u64)) -> Option<Self> {
        let extra_bytes = large.0.checked_sub(small.0).filter(|&b| b > 0)?;
        let extra_ns = large.1.saturating_sub(small.1);
        let ps_per_byte = u64::try_from(u128::from(extra_ns) * 1000 / u128::from(extra_bytes)).unwrap_or(u64::MAX).min(MAX_PS_PER_BYTE);
        let small_bytes_ns = u64::try_from((u128::from(small.0) * u128::from(ps_per_byte)) / 1000).unwrap_or(u64::MAX);
        Some(Self { fixed_ns: small.1.saturating_sub(small_bytes_ns), ps_per_byte })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_cost_fits_two_hops_and_splits_between_the_ends() {
        // 100 us fixed, 250 ps per byte: 4 KB in 101.024 us, 4 MB in 1.1 ms.
        let cost = MessageCost::fit((4_096, 101_024), (4_000_000, 1_100_000)).expect("fits");
        assert_eq!(cost, MessageCost { fixed_ns: 100_000, ps_per_byte: 250 });
        assert_eq!(cost.loopback_ns(4_000_000), 1_100_000);
        assert_eq!(cost.end_ns(4_000_000), 550_000);
        // A large hop measured faster than the small one: no negative cost.
        assert_eq!(MessageCost::fit((4_096, 200_000), (4_000_000, 150_000)), Some(MessageCost { fixed_ns: 200_000, ps_per_byte: 0 }));
        assert_eq!(MessageCost::fit((4_096, 1), (4_096, 2)), None, "one size tells nothing per byte");
        // Absurd figures are capped and saturate.
        let absurd = MessageCost::fit((0, 0), (1, u64::MAX)).expect("fits");
        assert_eq!(absurd.ps_per_byte, MAX_PS_PER_BYTE);
        assert_eq!(MessageCost { fixed_ns: u64::MAX, ps_per_byte: 1 }.loopback_ns(u64::MAX), u64::MAX);
        assert!(MessageCost::default().is_zero());
    }
}
