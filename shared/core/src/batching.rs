//! When a server's queue for one slice becomes a batch: the dispatch rule of dynamic batching,
//! with time passed in.
//!
//! A batch leaves as soon as it is full, or once its oldest request has waited the window's
//! delay; a worker that frees up with requests queued takes them at once (those requests
//! already waited for it). With a delay of zero, batches form only from requests that queued
//! behind busy workers, so a lightly loaded server adds no latency.
//!
//! Batches hold a power of two of requests: a server keeps an optimised plan per batch size,
//! so sizes 1, 2, 4, 8... bound how many plans it builds (the rest of a queue leaves next).

/// How large a batch may grow, and how long its first request may wait for others.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchWindow {
    /// Most requests in one batch (at least 1).
    pub max: usize,
    /// Longest a request waits for others to join it, in nanoseconds.
    pub delay_ns: u64,
}

/// What a worker holding a free slot does with a queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dispatch {
    /// Nothing is queued.
    Idle,
    /// Run this many of the oldest queued requests now (a power of two).
    Now(usize),
    /// Wait this many nanoseconds (or until the batch fills), then decide again.
    Wait(u64),
}

impl BatchWindow {
    /// The decision for `queued` requests, the oldest of which has waited `oldest_waited_ns`.
    pub fn dispatch(&self, queued: usize, oldest_waited_ns: u64) -> Dispatch {
        let max = self.max.max(1);
        if queued == 0 {
            Dispatch::Idle
        } else if queued >= max {
            Dispatch::Now(batch_size(max))
        } else if oldest_waited_ns >= self.delay_ns {
            Dispatch::Now(batch_size(queued))
        } else {
            Dispatch::Wait(self.delay_ns - oldest_waited_ns)
        }
    }
}

/// The largest power of two not above `n` (1 for 0).
pub fn batch_size(n: usize) -> usize {
    match n.checked_ilog2() {
        Some(log) => 1 << log,
        None => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: BatchWindow = BatchWindow { max: 4, delay_ns: 2_000_000 };

    #[test]
    fn a_full_batch_leaves_at_once_and_never_grows_past_the_maximum() {
        assert_eq!(WINDOW.dispatch(4, 0), Dispatch::Now(4));
        assert_eq!(WINDOW.dispatch(9, 0), Dispatch::Now(4));
    }

    #[test]
    fn a_partial_batch_waits_out_what_is_left_of_the_delay_then_leaves() {
        assert_eq!(WINDOW.dispatch(2, 500_000), Dispatch::Wait(1_500_000));
        assert_eq!(WINDOW.dispatch(2, 2_000_000), Dispatch::Now(2));
        assert_eq!(WINDOW.dispatch(3, u64::MAX), Dispatch::Now(2));
    }

    #[test]
    fn without_a_delay_or_a_queue_nothing_waits() {
        let eager = BatchWindow { max: 8, delay_ns: 0 };
        assert_eq!(eager.dispatch(1, 0), Dispatch::Now(1));
        assert_eq!(eager.dispatch(0, 0), Dispatch::Idle);
        let single = BatchWindow { max: 0, delay_ns: 5 };
        assert_eq!(single.dispatch(3, 0), Dispatch::Now(1));
    }

    #[test]
    fn batches_hold_a_power_of_two_and_the_rest_waits_for_the_next() {
        let wide = BatchWindow { max: 12, delay_ns: 0 };
        assert_eq!(wide.dispatch(7, 0), Dispatch::Now(4));
        assert_eq!(wide.dispatch(3, 0), Dispatch::Now(2));
        assert_eq!(wide.dispatch(100, 0), Dispatch::Now(8));
        assert_eq!([0, 1, 2, 3, 4, 5, 8, 9, usize::MAX].map(batch_size), [1, 1, 2, 2, 4, 4, 8, 8, 1 << (usize::BITS - 1)]);
    }
}
