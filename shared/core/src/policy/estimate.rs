//! Link figures from two timed round trips of different sizes.

use crate::link::Link;

/// One timed round trip: `bytes` sent, the answer back after `round_trip_ns`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    /// Bytes of the request.
    pub bytes: u64,
    /// Nanoseconds from sending to the answer.
    pub round_trip_ns: u64,
}

/// Shortest time difference believed between the two probes: below this, clock resolution and
/// scheduling noise dominate, so the bandwidth is capped rather than divided by almost zero.
const MIN_EXTRA_NS: u64 = 20_000;

/// The link behind two probes, a small and a large one: the difference of their times gives
/// the bandwidth (round trip and processing cancel out), the small one's half round trip the
/// one-way latency. Probes given in either order; equal sizes give the latency and a bandwidth
/// of one bit per second would be a lie, so they give `u64::MAX` bits per second.
pub fn estimate_link(a: Probe, b: Probe) -> Link {
    let (small, large) = if a.bytes <= b.bytes { (a, b) } else { (b, a) };
    let latency_ns = small.round_trip_ns / 2;
    let extra_bytes = large.bytes - small.bytes;
    if extra_bytes == 0 {
        return Link { latency_ns, bits_per_sec: u64::MAX };
    }
    let extra_ns = large.round_trip_ns.saturating_sub(small.round_trip_ns).max(MIN_EXTRA_NS);
    let bits_per_sec = u128::from(extra_bytes) * 8 * 1_000_000_000 / u128::from(extra_ns);
    Link { latency_ns, bits_per_sec: u64::try_from(bits_per_sec).unwrap_or(u64::MAX).max(1) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bandwidth_from_the_difference_latency_from_the_small_probe() {
        // 1 MB more takes 80 ms more: 100 Mbit/s; the small probe's 10 ms round trip: 5 ms.
        let link = estimate_link(Probe { bytes: 1_000_256, round_trip_ns: 90_000_000 }, Probe { bytes: 256, round_trip_ns: 10_000_000 });
        assert_eq!(link, Link { latency_ns: 5_000_000, bits_per_sec: 100_000_000 });
    }

    #[test]
    fn a_faster_large_probe_is_capped_not_negative() {
        let link = estimate_link(Probe { bytes: 256, round_trip_ns: 2_000_000 }, Probe { bytes: 65_536, round_trip_ns: 1_000_000 });
        assert_eq!(link.latency_ns, 1_000_000);
        assert_eq!(link.bits_per_sec, (65_536 - 256) * 8 * 1_000_000_000 / MIN_EXTRA_NS);
    }

    #[test]
    fn absurd_figures_saturate() {
        let link = estimate_link(Probe { bytes: 0, round_trip_ns: u64::MAX }, Probe { bytes: u64::MAX, round_trip_ns: u64::MAX });
        assert_eq!(link.latency_ns, u64::MAX / 2);
        assert_eq!(link.bits_per_sec, u64::MAX);
    }
}
