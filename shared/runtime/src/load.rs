//! A server's load: inferences waiting and running, and a running average of the time one
//! holds a worker. The stage server keeps it; the heartbeat reports it to the planner, and the
//! cloud's planner reads its own.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use scission_core::wire::message::Load;

/// Weight of the newest service time in the running average: 1/8.
const AVERAGE_SHIFT: u32 = 3;

/// Counts inferences in the queue and on the workers, and times them.
#[derive(Debug)]
pub struct LoadMeter {
    workers: usize,
    /// Queued plus running.
    admitted: AtomicUsize,
    running: AtomicUsize,
    service_ns: AtomicU64,
}

impl LoadMeter {
    /// A meter for a pool of `workers`.
    pub fn new(workers: usize) -> Self {
        Self { workers: workers.max(1), admitted: AtomicUsize::new(0), running: AtomicUsize::new(0), service_ns: AtomicU64::new(0) }
    }

    /// Admits one inference; returns how many were admitted before it and its place, given
    /// back when dropped.
    pub fn admit(&self) -> (usize, Admitted<'_>) {
        (self.admitted.fetch_add(1, Ordering::SeqCst), Admitted(self))
    }

    /// An admitted inference got a worker; its service time is recorded when the guard drops.
    pub fn start(&self) -> Running<'_> {
        self.start_batch(1)
    }

    /// A batch of `size` admitted inferences got a worker: they count as running, and each is
    /// recorded as taking its share of the batch's time (what one more request costs).
    pub fn start_batch(&self, size: usize) -> Running<'_> {
        let size = size.max(1);
        self.running.fetch_add(size, Ordering::SeqCst);
        Running { meter: self, since: Instant::now(), size }
    }

    /// Inferences admitted now, queued or running.
    pub fn admitted(&self) -> usize {
        self.admitted.load(Ordering::SeqCst)
    }

    /// The load now.
    pub fn snapshot(&self) -> Load {
        let admitted = self.admitted.load(Ordering::SeqCst);
        let running = self.running.load(Ordering::SeqCst).min(admitted);
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Load {
            queued: count(admitted - running),
            running: count(running),
            workers: count(self.workers),
            service_ns: self.service_ns.load(Ordering::SeqCst),
        }
    }

    fn record(&self, ns: u64) {
        let _ = self.service_ns.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |old| {
            Some(match old {
                0 => ns,
                // old + (ns - old) / 8, in signed arithmetic that cannot overflow.
                _ => (i128::from(old) + ((i128::from(ns) - i128::from(old)) >> AVERAGE_SHIFT)).clamp(1, i128::from(u64::MAX)) as u64,
            })
        });
    }
}

/// One inference in the queue or on a worker.
#[derive(Debug)]
pub struct Admitted<'a>(&'a LoadMeter);

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.0.admitted.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One inference on a worker.
#[derive(Debug)]
pub struct Running<'a> {
    meter: &'a LoadMeter,
    since: Instant,
    size: usize,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let ns = u64::try_from(self.since.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.meter.record(ns / self.size as u64);
        self.meter.running.fetch_sub(self.size, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_waiting_and_running_and_gives_them_back() {
        let meter = LoadMeter::new(2);
        let (before, first) = meter.admit();
        assert_eq!(before, 0);
        let (before, second) = meter.admit();
        assert_eq!(before, 1);
        let running = meter.start();
        assert_eq!(meter.snapshot(), Load { queued: 1, running: 1, workers: 2, service_ns: 0 });
        drop(running);
        drop(first);
        let load = meter.snapshot();
        assert_eq!((load.queued, load.running), (1, 0));
        assert!(load.service_ns > 0, "the finished inference was timed");
        drop(second);
        assert_eq!(meter.snapshot().queued, 0);
    }

    #[test]
    fn a_batch_counts_each_of_its_requests_as_running() {
        let meter = LoadMeter::new(1);
        let admitted: Vec<_> = (0..4).map(|_| meter.admit().1).collect();
        let batch = meter.start_batch(3);
        assert_eq!((meter.snapshot().queued, meter.snapshot().running), (1, 3));
        drop(batch);
        assert_eq!(meter.snapshot().running, 0);
        drop(admitted);
        assert_eq!(meter.snapshot().queued, 0);
    }

    #[test]
    fn the_service_time_is_a_running_average() {
        let meter = LoadMeter::new(1);
        meter.record(800);
        assert_eq!(meter.snapshot().service_ns, 800, "the first sample is taken as it is");
        meter.record(1_600);
        assert_eq!(meter.snapshot().service_ns, 900, "later ones move it by an eighth");
        meter.record(0);
        assert_eq!(meter.snapshot().service_ns, 787);
    }
}
