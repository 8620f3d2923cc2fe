//! A slower machine, emulated: this process can play a board `N` times slower than the one it
//! runs on by doing every run of a model `N` times back to back, benchmark and inference alike,
//! and keeping the last run's outputs. For demos and tests on one host. Unlike a CPU quota it
//! needs neither root nor Linux, and what it adds is steady work: a quota stops and restarts the
//! work at the scheduler's tick, so short requests under one vary by a quarter or more.
//!
//! The setting is process-wide (a device process plays one board); only [`Slice::run`](crate::Slice::run),
//! batched runs and the benchmark's timed runs honour it.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::error::{Result, bail};

/// Largest slowdown [`emulate`] accepts.
pub const MAX_FACTOR: u32 = 1000;

static FACTOR: AtomicU32 = AtomicU32::new(1);

/// From now on, every run of a model in this process is done `factor` times (1: at this
/// machine's own speed).
pub fn emulate(factor: u32) -> Result<()> {
    if !(1..=MAX_FACTOR).contains(&factor) {
        bail!("a slowdown is 1 to {MAX_FACTOR} times, not {factor}");
    }
    FACTOR.store(factor, Ordering::Relaxed);
    if factor > 1 {
        tracing::info!("playing a machine {factor} times slower: every run of a model is done {factor} times");
    }
    Ok(())
}

/// How many times each run of a model is done (1 unless [`emulate`] said otherwise).
pub fn factor() -> u32 {
    FACTOR.load(Ordering::Relaxed)
}

/// Runs `work` [`factor`] times and returns the last run's result (the first error stops it).
pub(crate) fn repeated<T, E>(work: impl FnMut() -> Result<T, E>) -> Result<T, E> {
    repeat(factor(), work)
}

/// Runs `work` `times` times (at least once) and returns the last run's result.
fn repeat<T, E>(times: u32, mut work: impl FnMut() -> Result<T, E>) -> Result<T, E> {
    for _ in 1..times {
        drop(work()?);
    }
    work()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slower_machine_repeats_each_run_and_keeps_the_last() {
        // The process-wide factor is only ever refused here: other tests run models meanwhile.
        assert!(emulate(0).is_err());
        assert!(emulate(MAX_FACTOR + 1).is_err());
        assert_eq!(factor(), 1, "a refused factor changes nothing");
        let mut runs = 0;
        let last = repeat(3, || {
            runs += 1;
            Ok::<_, ()>(runs)
        });
        assert_eq!((runs, last), (3, Ok(3)));
        let mut left = 2;
        let failed = repeat(3, || {
            left -= 1;
            if left == 0 { Err("second run") } else { Ok(()) }
        });
        assert_eq!(failed, Err("second run"));
        assert_eq!(repeat(0, || Ok::<_, ()>(7)), Ok(7), "work runs at least once");
    }
}
