//! A tiny deterministic generator for weights and synthetic inputs: identical on every
//! platform, so every tier derives the same model and the same test inputs from a seed.

use alloc::vec::Vec;

/// A xorshift64* generator: fast, tiny and identical on every platform.
#[derive(Clone, Debug)]
pub struct WeightRng(u64);

impl WeightRng {
    /// A generator for `seed` (any value, zero included).
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `[-limit, limit)`.
    pub fn uniform(&mut self, limit: f32) -> f32 {
        let unit = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        (unit * 2.0 - 1.0) * limit
    }

    /// `count` values uniform in `[-limit, limit)`.
    pub fn uniform_vec(&mut self, count: usize, limit: f32) -> Vec<f32> {
        (0..count).map(|_| self.uniform(limit)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_values_and_in_range() {
        let a = WeightRng::new(7).uniform_vec(1000, 0.5);
        assert_eq!(a, WeightRng::new(7).uniform_vec(1000, 0.5));
        assert_ne!(a, WeightRng::new(8).uniform_vec(1000, 0.5));
        assert!(a.iter().all(|v| (-0.5..0.5).contains(v)));
        let mean = a.iter().sum::<f32>() / a.len() as f32;
        assert!(mean.abs() < 0.05, "mean {mean}");
    }
}
