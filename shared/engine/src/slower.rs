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

std::thread_local! {
    /// Whether this thread runs at the machine's own speed whatever [`emulate`] said.
    static FULL_SPEED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// How many times each run of a model is done on this thread (1 unless [`emulate`] said
/// otherwise, or inside [`at_full_speed`]).
pub fn factor() -> u32 {
    match FULL_SPEED.with(std::cell::Cell::get) {
        true => 1,
        false => FACTOR.load(Ordering::Relaxed),
    }
}

/// Runs `work` on this thread at the machine's own speed, whatever board the process plays:
/// for a process that plays the board and also times what the other tiers run (the demo).
pub fn at_full_speed<R>(work: impl FnOnce() -> R) -> R {
    let before = FULL_SPEED.with(|f| f.replace(true));
    let result = work();
    FULL_SPEED.with(|f| f.set(before));
    result
}

/// Checks that a profile of `machine` was benchmarked as the board this process plays (the same
/// factor): otherwise its times would be off by the ratio of the two.
pub fn check_same_board(machine: &scission_core::profile::MachineFacts) -> Result<()> {
    let (profiled, here) = (machine.slowdown(), factor());
    if profiled != here {
        bail!(
            "benchmarked with --emulate-slower {profiled}, and this process runs with --emulate-slower {here}: \
             its times would be off by {profiled} / {here}; give the same, or benchmark again"
        );
    }
    Ok(())
}

/// Runs `work` on `input` [`factor`] times and returns the last run's result (the first error
/// stops it). The earlier runs get clones; the last gets `input` itself, so at this machine's
/// speed nothing is cloned and the engine may reuse the input's buffers, as it would unslowed.
pub(crate) fn repeated<I: Clone, T, E>(input: I, work: impl FnMut(I) -> Result<T, E>) -> Result<T, E> {
    repeat(factor(), input, work)
}

/// Runs `work` `times` times (at least once) on `input`, the last time on `input` itself, and
/// returns the last run's result.
fn repeat<I: Clone, T, E>(times: u32, input: I, mut work: impl FnMut(I) -> Result<T, E>) -> Result<T, E> {
    for _ in 1..times {
        drop(work(input.clone())?);
    }
    work(input)
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
        // Each run sees how many hold the input: the earlier runs a clone, the last the input
        // alone.
        let mut holders = Vec::new();
        let last = repeat(3, std::rc::Rc::new(7), |input| {
            holders.push(std::rc::Rc::strong_count(&input));
            Ok::<_, ()>(holders.len())
        });
        assert_eq!((holders, last), (vec![2, 2, 1], Ok(3)));
        let mut left = 2;
        let failed = repeat(3, (), |()| {
            left -= 1;
            if left == 0 { Err("second run") } else { Ok(()) }
        });
        assert_eq!(failed, Err("second run"));
        let once = repeat(0, std::rc::Rc::new(7), |input| Ok::<_, ()>(std::rc::Rc::strong_count(&input)));
        assert_eq!(once, Ok(1), "work runs at least once, on the input itself");
    }

    #[test]
    fn at_full_speed_a_thread_runs_once_and_then_plays_its_board_again() {
        let inside = at_full_speed(|| (factor(), at_full_speed(factor), factor()));
        assert_eq!(inside, (1, 1, 1), "nested, and after the nested scope ends");
        assert!(!FULL_SPEED.with(std::cell::Cell::get), "the thread plays its board again");
    }
}
