//! Repeated timing of a piece of work under a run-count and time budget.
//!
//! The clock is embassy-time's [`Instant`]: the std driver on Linux, a hardware timer on a
//! board. Nothing here needs std.

use alloc::vec::Vec;
use embassy_time::{Duration, Instant};

/// How long to measure: `warmup` untimed runs, then timed runs until `max_runs` are done or
/// `max_time` has passed, but never fewer than `min_runs`.
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
}

impl Default for Budget {
    fn default() -> Self {
        Self { warmup: 2, min_runs: 5, max_runs: 200, max_time: Duration::from_millis(1000) }
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
    let started = Instant::now();
    let mut samples = Vec::new();
    while samples.len() < budget.max_runs as usize {
        let enough = samples.len() >= budget.min_runs as usize;
        if enough && started.elapsed() >= budget.max_time {
            break;
        }
        let t0 = Instant::now();
        for _ in 0..repeat {
            work()?;
        }
        samples.push(t0.elapsed().as_nanos() / u64::from(repeat));
    }
    Ok(samples)
}

/// How many runs of `work` one sample needs to span at least [`MIN_SAMPLE`] (at most 1000).
fn repetitions<E>(work: &mut impl FnMut() -> Result<(), E>) -> Result<u32, E> {
    let t0 = Instant::now();
    work()?;
    let once = t0.elapsed().as_nanos().max(1);
    Ok(MIN_SAMPLE.as_nanos().div_ceil(once).clamp(1, 1000) as u32)
}
