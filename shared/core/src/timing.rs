//! Repeated timing of a piece of work under a run-count and time budget.
//!
//! The clock is embassy-time's [`Instant`]: the std driver on Linux, a hardware timer on a
//! board. Nothing here needs std.

use alloc::vec::Vec;
use embassy_time::{Duration, Instant};

/// How long to measure: `warmup` untimed runs, then timed runs until the median is known
/// within `precision_permille` (a 95 % confidence interval, see [`median_known_within`]), or
/// `max_runs` are done, or `max_time` has passed; never fewer than `min_runs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Untimed runs first (caches, allocator, lazy initialisation).
    pub warmup: u32,
    /// Timed runs that always happen.
    pub min_runs: u32,
    /// Upper bound on timed runs.
    pub max_runs: u32,
    /// Time after which no new timed run starts once `min_runs` are done.
    pub max_time: Duration,
    /// Stop once the median's 95 % confidence interval is within this many thousandths of it,
    /// either side (20: ±2 %); 0 measures until `max_runs` or `max_time`.
    pub precision_permille: u32,
}

impl Default for Budget {
    fn default() -> Self {
        Self { warmup: 2, min_runs: 5, max_runs: 200, max_time: Duration::from_millis(1000), precision_permille: 20 }
    }
}

/// Shortest span one sample is timed over: work faster than this is repeated within a sample
/// (and the sample divided by the repetitions), so the clock's tick does not round it to zero.
pub const MIN_SAMPLE: Duration = Duration::from_micros(200);

/// Runs `work` under `budget` and returns one duration sample per timed run, in nanoseconds.
/// Stops at the first error.
pub fn measure<E>(budget: Budget, mut work: impl FnMut() -> Result<(), E>) -> Result<Vec<u64>, E> {
    for _ in 0..budget.warmup {
        work()?;
    }
    let repeat = repetitions(&mut work)?;
    let samples = sample_until(budget, || {
        let t0 = Instant::now();
        for _ in 0..repeat {
            work()?;
        }
        Ok((t0.elapsed().as_nanos() / u64::from(repeat), ()))
    })?;
    Ok(samples.into_iter().map(|(ns, ())| ns).collect())
}

/// Runs `work` under `budget`, one run per sample, and returns each timed run's duration in
/// nanoseconds with what it returned (a profiled run's node times, say). For work that takes
/// well over [`MIN_SAMPLE`]: nothing is repeated within a sample. Stops at the first error.
pub fn measure_runs<T, E>(budget: Budget, mut work: impl FnMut() -> Result<T, E>) -> Result<Vec<(u64, T)>, E> {
    for _ in 0..budget.warmup {
        work()?;
    }
    sample_until(budget, || {
        let t0 = Instant::now();
        let value = work()?;
        Ok((t0.elapsed().as_nanos(), value))
    })
}

/// Times `count` pieces of work side by side: round-robin, one sample of each per round, so a
/// machine whose speed drifts while they are timed (a shared host, a board warming up) slows
/// them all alike and their medians stay comparable; timed one after the other, the ones that
/// happened to run in a fast phase would look cheaper, and a planner choosing the cheapest
/// would pick them for that luck. `work(i)` runs piece `i` once. Each gets `budget.warmup`
/// untimed runs, then rounds go on until every piece has `budget.min_runs` samples and either
/// the rounds took `budget.max_time` per piece or every median is known within
/// `budget.precision_permille`; at most `budget.max_runs` rounds. Work shorter than
/// [`MIN_SAMPLE`] is repeated within its sample. Returns each piece's samples in nanoseconds;
/// stops at the first error.
pub fn measure_interleaved<E>(budget: Budget, count: usize, mut work: impl FnMut(usize) -> Result<(), E>) -> Result<Vec<Vec<u64>>, E> {
    for _ in 0..budget.warmup {
        for i in 0..count {
            work(i)?;
        }
    }
    let mut repeat = Vec::with_capacity(count);
    for i in 0..count {
        repeat.push(repetitions(&mut || work(i))?);
    }
    let allowed = budget.max_time.as_ticks().saturating_mul(u64::try_from(count).unwrap_or(u64::MAX));
    let started = Instant::now();
    let mut samples: Vec<Vec<u64>> = (0..count).map(|_| Vec::new()).collect();
    for round in 0..budget.max_runs {
        if round >= budget.min_runs && (started.elapsed().as_ticks() >= allowed || all_known(&samples, budget.precision_permille)) {
            break;
        }
        for (i, (kept, &times)) in samples.iter_mut().zip(&repeat).enumerate() {
            let t0 = Instant::now();
            for _ in 0..times {
                work(i)?;
            }
            kept.push(t0.elapsed().as_nanos() / u64::from(times));
        }
    }
    Ok(samples)
}

/// Whether every sample set's median is known within `permille` (never, for 0).
fn all_known(samples: &[Vec<u64>], permille: u32) -> bool {
    permille > 0
        && samples.iter().all(|s| {
            let mut sorted = s.clone();
            sorted.sort_unstable();
            median_known_within(&sorted, permille)
        })
}

/// Takes samples (a duration in nanoseconds and a value) until `budget` says stop.
fn sample_until<T, E>(budget: Budget, mut sample: impl FnMut() -> Result<(u64, T), E>) -> Result<Vec<(u64, T)>, E> {
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut sorted = Vec::new();
    while samples.len() < budget.max_runs as usize {
        let enough = samples.len() >= budget.min_runs as usize;
        if enough && started.elapsed() >= budget.max_time {
            break;
        }
        if enough && budget.precision_permille > 0 {
            sorted.clear();
            sorted.extend(samples.iter().map(|&(ns, _)| ns));
            sorted.sort_unstable();
            if median_known_within(&sorted, budget.precision_permille) {
                break;
            }
        }
        samples.push(sample()?);
    }
    Ok(samples)
}

/// Whether the median of `sorted` (ascending) is known within `permille` thousandths either
/// side at 95 % confidence: the distribution-free interval between the order statistics
/// `n/2 - 0.98 sqrt(n)` and `n/2 + 1 + 0.98 sqrt(n)` (the binomial's normal approximation),
/// rounded outwards, lies within `median x (1 ± permille / 1000)`. Needs about 8 samples
/// before it can hold at all.
pub fn median_known_within(sorted: &[u64], permille: u32) -> bool {
    let n = sorted.len();
    // 0.98 sqrt(n) = sqrt(0.9604 n), rounded up.
    let half_width = (n.saturating_mul(9604) / 10_000).isqrt().saturating_add(1);
    let (Some(low), Some(high)) = ((n / 2).checked_sub(half_width), (n / 2).checked_add(half_width)) else { return false };
    let (Some(&lo), Some(&hi), Some(&median)) = (sorted.get(low), sorted.get(high), sorted.get(n / 2)) else { return false };
    let allowed = u128::from(median) * u128::from(permille);
    (u128::from(median - lo.min(median)) * 1000 <= allowed) && (u128::from(hi.max(median) - median) * 1000 <= allowed)
}

/// How many runs of `work` one sample needs to span at least [`MIN_SAMPLE`] (at most 1000).
fn repetitions<E>(work: &mut impl FnMut() -> Result<(), E>) -> Result<u32, E> {
    let t0 = Instant::now();
    work()?;
    let once = t0.elapsed().as_nanos().max(1);
    Ok(MIN_SAMPLE.as_nanos().div_ceil(once).clamp(1, 1000) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_steady_median_is_known_after_a_few_samples_a_noisy_one_is_not() {
        let steady: Vec<u64> = (0..10).map(|i| 1_000 + i).collect();
        assert!(median_known_within(&steady, 20));
        assert!(!median_known_within(&steady[..5], 20), "too few samples for any interval");
        let mut noisy: Vec<u64> = (0..40).map(|i| if i % 2 == 0 { 1_000 } else { 1_300 }).collect();
        noisy.sort_unstable();
        assert!(!median_known_within(&noisy, 20), "half the samples 30 % off");
        assert!(median_known_within(&noisy, 400), "within ±40 % it is known");
        assert!(!median_known_within(&[], 20));
        assert!(median_known_within(&[u64::MAX; 16], 1), "no overflow at the top");
    }

    #[test]
    fn each_timed_run_keeps_what_it_returned_and_warm_up_runs_are_not_kept() {
        let budget = Budget { warmup: 2, min_runs: 4, max_runs: 4, max_time: Duration::from_secs(60), precision_permille: 0 };
        let mut calls = 0;
        let runs = measure_runs(budget, || {
            calls += 1;
            Ok::<_, ()>(calls)
        });
        let values: Vec<u32> = runs.iter().flatten().map(|&(_, v)| v).collect();
        assert_eq!(values, [3, 4, 5, 6]);
        let mut left = 3;
        let failed = measure_runs(budget, || {
            left -= 1;
            if left == 0 { Err("third run") } else { Ok(()) }
        });
        assert_eq!(failed.err(), Some("third run"));
    }

    #[test]
    fn interleaved_pieces_are_timed_round_robin_after_their_warm_ups() {
        let budget = Budget { warmup: 1, min_runs: 3, max_runs: 3, max_time: Duration::from_secs(60), precision_permille: 0 };
        let mut order = Vec::new();
        let samples = measure_interleaved(budget, 3, |i| {
            order.push(i);
            // Slow enough that a sample needs no repetition.
            let t0 = Instant::now();
            while t0.elapsed() < MIN_SAMPLE {}
            Ok::<_, ()>(())
        });
        let samples = samples.unwrap_or_default();
        assert_eq!(samples.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 3]);
        assert!(samples.iter().flatten().all(|&ns| ns >= MIN_SAMPLE.as_nanos()), "{samples:?}");
        // Warm-up round, one run each to size the samples, then three timed rounds.
        assert_eq!(order, [0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn interleaved_timing_stops_at_max_time_once_min_runs_are_done_and_at_the_first_error() {
        let budget = Budget { warmup: 0, min_runs: 2, max_runs: 1000, max_time: Duration::from_ticks(0), precision_permille: 0 };
        let samples = measure_interleaved(budget, 2, |_| Ok::<_, ()>(())).unwrap_or_default();
        assert_eq!(samples.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2]);
        let mut left = 5;
        let failed = measure_interleaved(budget, 2, |_| {
            left -= 1;
            if left == 0 { Err("fifth run") } else { Ok(()) }
        });
        assert_eq!(failed.err(), Some("fifth run"));
        assert_eq!(measure_interleaved(budget, 0, |_| Ok::<_, ()>(())), Ok(Vec::new()));
    }
}
