//! Heap bytes as the process really uses them (a crate of its own, optimised in every profile:
//! every allocation of the binaries goes through it): a counting global allocator that the binaries
//! install, and what `bench` and `run-slice` read from it (bytes live now, the high-water mark
//! since a reset). Counting costs two relaxed atomic operations per allocation. Under the counter
//! is mimalloc (feature `mimalloc`, on by default): long-running multi-threaded services stay
//! within a small board's memory with it, where the C library's per-thread arenas grew.
//!
//! A library cannot install a global allocator, so a binary opts in:
//!
//! ```ignore
//! #[global_allocator]
//! static HEAP: scission_heap::Counting = scission_heap::Counting;
//! ```
//!
//! Without it [`is_counting`] is false and the measurements are `None`: nothing is made up.
//!
//! On Linux it also asks for transparent huge pages for every large allocation (see
//! [`HUGE_PAGES_FROM`]): a model's weights are hundreds of megabytes written once at load,
//! and faulting them in 4 KiB at a time was most of a large model's load (VGG16: 740 000 page
//! faults in `bench`, 30 000 with huge pages). The kernel's own setting still decides
//! (`/sys/kernel/mm/transparent_hugepage/enabled`: `madvise` or `always`).

#![warn(missing_docs)]

use std::alloc::{GlobalAlloc, Layout};

/// The allocator under the counter: mimalloc (feature `mimalloc`, the default), else the C
/// library's.
#[cfg(feature = "mimalloc")]
static UNDER: mimalloc::MiMalloc = mimalloc::MiMalloc;
#[cfg(not(feature = "mimalloc"))]
static UNDER: std::alloc::System = std::alloc::System;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static INSTALLED: AtomicBool = AtomicBool::new(false);
static HUGE_PAGES: AtomicBool = AtomicBool::new(true);

/// Whether large allocations from now on ask for huge pages (on by default). A long-running
/// service turns it off once its model is loaded: its per-request buffers come and go, and a
/// huge page backing a freed buffer stays resident as long as any byte of it is in use.
pub fn set_huge_pages(on: bool) {
    HUGE_PAGES.store(on, Ordering::Relaxed);
}

/// Runs `work` with huge pages asked for (see [`set_huge_pages`]), then puts the setting back:
/// for loading weights in a service that turned them off (building a slice). The setting is the
/// process's: run one such `work` at a time.
pub fn with_huge_pages<R>(work: impl FnOnce() -> R) -> R {
    let was = HUGE_PAGES.swap(true, Ordering::Relaxed);
    let result = work();
    HUGE_PAGES.store(was, Ordering::Relaxed);
    result
}

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

/// Allocations of at least this many bytes are backed by transparent huge pages where the
/// kernel allows it.
pub const HUGE_PAGES_FROM: usize = 4 << 20;

/// The span transparent huge pages are laid out on (2 MiB on x86-64 and on 4 KiB-page arm64).
const HUGE_PAGE: usize = 2 << 20;

/// Asks the kernel to back the 2 MiB-aligned interior of `[ptr, ptr + size)` with huge pages,
/// when the allocation is large (a hint: failures change nothing).
#[inline]
fn advise_huge_pages(ptr: *mut u8, size: usize) {
    #[cfg(target_os = "linux")]
    if size >= HUGE_PAGES_FROM && HUGE_PAGES.load(Ordering::Relaxed) {
        let start = (ptr as usize).next_multiple_of(HUGE_PAGE);
        let end = (ptr as usize).saturating_add(size) / HUGE_PAGE * HUGE_PAGE;
        if end > start {
            // SAFETY: the range lies within an allocation this process owns; MADV_HUGEPAGE
            // changes how its pages are backed, never their contents.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (ptr, size);
}

// SAFETY: every call is forwarded unchanged to `UNDER`; the counters only observe sizes, and
// the huge-page hint only how the memory is backed.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, passed on as is.
        let ptr = unsafe { UNDER.alloc(layout) };
        if !ptr.is_null() {
            Self::grew(layout.size());
            advise_huge_pages(ptr, layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let ptr = unsafe { UNDER.alloc_zeroed(layout) };
        if !ptr.is_null() {
            Self::grew(layout.size());
            advise_huge_pages(ptr, layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator (that is, from `UNDER`) with `layout`.
        unsafe { UNDER.dealloc(ptr, layout) };
        Self::shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc`, and `new_size` is the caller's, valid by contract.
        let new = unsafe { UNDER.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            Self::shrank(layout.size());
            Self::grew(new_size);
            advise_huge_pages(new, new_size);
        }
        new
    }
}

/// Asks the allocator to give memory freed for `ms` milliseconds back to the system (mimalloc's
/// purge delay, 10 ms by default; 0: at once). Memory kept for reuse is faster to allocate again
/// but stays resident: a long-running service on a small board trades some speed for a flat,
/// low footprint (the README's memory table). `MIMALLOC_PURGE_DELAY` in the environment wins.
/// Without the `mimalloc` feature, nothing.
pub fn return_freed_memory_after(ms: u32) {
    #[cfg(feature = "mimalloc")]
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // `mi_option_purge_delay` in mimalloc 2.x's option enum (the `v2` feature pins 2.x).
        const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;
        unsafe extern "C" {
            fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
        }
        // SAFETY: mimalloc's documented option setter, called with an option of its enum and a
        // value in the option's range; it only stores the value.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, std::ffi::c_long::from(ms.min(60_000) as u16)) };
    }
    #[cfg(not(feature = "mimalloc"))]
    let _ = ms;
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

    /// The tests' allocations would show in each other's footprints: one at a time.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn a_footprint_counts_what_work_keeps_and_its_high_water_mark() {
        let _alone = ONE_AT_A_TIME.lock();
        let (kept, footprint) = measure(|| {
            let scratch = vec![1u8; 8 << 20];
            drop(std::hint::black_box(scratch));
            std::hint::black_box(vec![2u8; 1 << 20])
        });
        let footprint = footprint.expect("the test binary counts its heap");
        // The test harness allocates and frees meanwhile (a finished test's bookkeeping): bounds,
        // not equalities, with some slack below.
        const SLACK: u64 = 64 << 10;
        assert!(footprint.peak >= (8 << 20) - SLACK, "{footprint:?}");
        assert!(footprint.kept >= (1 << 20) - SLACK && footprint.kept < 8 << 20, "{footprint:?}");
        drop(kept);
    }

    /// The `VmFlags` of the mapping holding `address`, from `/proc/self/smaps`.
    #[cfg(target_os = "linux")]
    fn vm_flags_at(address: usize) -> Option<String> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let mut inside = false;
        for line in smaps.lines() {
            let range = line.split_whitespace().next().and_then(|r| r.split_once('-'));
            if let Some((start, end)) =
                range.and_then(|(a, b)| Some((usize::from_str_radix(a, 16).ok()?, usize::from_str_radix(b, 16).ok()?)))
            {
                inside = (start..end).contains(&address);
            } else if inside && let Some(flags) = line.strip_prefix("VmFlags:") {
                return Some(flags.trim().to_string());
            }
        }
        None
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn large_allocations_ask_for_huge_pages_and_small_ones_do_not() {
        let _alone = ONE_AT_A_TIME.lock();
        if !std::path::Path::new("/sys/kernel/mm/transparent_hugepage").exists() {
            eprintln!("this kernel has no transparent huge pages: nothing to ask for");
            return;
        }
        let large = std::hint::black_box(vec![1u8; 16 << 20]);
        let middle = large.as_ptr() as usize + (8 << 20);
        let flags = vm_flags_at(middle).expect("the allocation is mapped");
        assert!(flags.split_whitespace().any(|f| f == "hg"), "MADV_HUGEPAGE is set on a 16 MiB allocation: {flags}");
        let small = std::hint::black_box(vec![1u8; 1 << 20]);
        let flags = vm_flags_at(small.as_ptr() as usize).expect("the allocation is mapped");
        assert!(!flags.split_whitespace().any(|f| f == "hg"), "not on a 1 MiB one: {flags}");
    }
}
