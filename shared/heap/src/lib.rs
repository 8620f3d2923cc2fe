//! Heap bytes as the process really uses them (a crate of its own, optimised in every profile:
//! every allocation of the binaries goes through it): a counting global allocator that the binaries
//! install, and what `bench` and `run-slice` read from it (bytes live now, the high-water mark
//! since a reset). Counting costs two relaxed atomic operations per allocation.
//!
//! A library cannot install a global allocator, so a binary opts in:
//!
//! ```ignore
//! #[global_allocator]
//! static HEAP: scission_heap::Counting = scission_heap::Counting;
//! ```
//!
//! Without it [`is_counting`] is false and the measurements are `None`: nothing is made up.

#![warn(missing_docs)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// The system allocator, counting the bytes it hands out (see the module's documentation).
pub struct Counting;

impl Counting {
    #[inline]
    fn grew(size: usize) {
        if !INSTALLED.load(Ordering::Relaxed) {
            INSTALLED.store(true, Ordering::Relaxed);
        }
        let live = LIVE.fetch_add(size, Ordering::Relaxed).saturating_add(size);
        // Most allocations do not raise the mark: a read, not a compare-and-swap, for them.
        if live > PEAK.load(Ordering::Relaxed) {
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
    }

    #[inline]
    fn shrank(size: usize) {
        LIVE.fetch_sub(size, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to `System`; the counters only observe sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, passed on as is.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            Self::grew(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            Self::grew(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator (that is, from `System`) with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        Self::shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc`, and `new_size` is the caller's, valid by contract.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            Self::shrank(layout.size());
            Self::grew(new_size);
        }
        new
    }
}

/// Whether the running binary counts its heap (installed [`Counting`] and allocated since).
pub fn is_counting() -> bool {
    INSTALLED.load(Ordering::Relaxed)
}

/// Heap bytes live now, when counted.
pub fn live() -> Option<u64> {
    is_counting().then(|| LIVE.load(Ordering::Relaxed) as u64)
}

/// Starts a new high-water mark at the bytes live now.
pub fn reset_peak() {
    PEAK.store(LIVE.load(Ordering::Relaxed), Ordering::Relaxed);
}

/// The most heap bytes live at once since the last [`reset_peak`], when counted.
pub fn peak() -> Option<u64> {
    is_counting().then(|| PEAK.load(Ordering::Relaxed) as u64)
}

/// What some work took from the heap: what it left live, and the most it had live at once
/// (both over what was live before it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Footprint {
    /// Bytes still live after the work, over the start (0 if it freed more than it kept).
    pub kept: u64,
    /// The work's high-water mark over the start.
    pub peak: u64,
}

/// Runs `work` and measures its [`Footprint`] (`None` where the heap is not counted). Other
/// threads' allocations meanwhile count too: measure on a quiet process. Not nested: an inner
/// `measure` starts the high-water mark again.
pub fn measure<R>(work: impl FnOnce() -> R) -> (R, Option<Footprint>) {
    let before = live();
    reset_peak();
    let result = work();
    let footprint = match (before, live(), peak()) {
        (Some(before), Some(after), Some(peak)) => {
            Some(Footprint { kept: after.saturating_sub(before), peak: peak.saturating_sub(before) })
        }
        _ => None,
    };
    (result, footprint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[global_allocator]
    static HEAP: Counting = Counting;

    #[test]
    fn a_footprint_counts_what_work_keeps_and_its_high_water_mark() {
        let (kept, footprint) = measure(|| {
            let scratch = vec![1u8; 8 << 20];
            drop(std::hint::black_box(scratch));
            std::hint::black_box(vec![2u8; 1 << 20])
        });
        let footprint = footprint.expect("the test binary counts its heap");
        // Other test threads allocate meanwhile: bounds, not equalities.
        assert!(footprint.peak >= 8 << 20, "{footprint:?}");
        assert!(footprint.kept >= 1 << 20 && footprint.kept < 8 << 20, "{footprint:?}");
        drop(kept);
    }
}
