//! A bare-metal consumer of `scission-core`: no std, its own panic handler and allocator. It
//! exists to fail to build when std sneaks into the core.
#![no_std]

extern crate alloc;

use core::alloc::{GlobalAlloc, Layout};
use core::panic::PanicInfo;
use core::sync::atomic::{AtomicUsize, Ordering};

use scission_core::policy::{DevicePolicy, Event, PolicyConfig, Route};
use scission_core::wire::message::{Body, Stage, decode};

/// Bytes the bump allocator hands out, in all.
const ARENA: usize = 64 * 1024;

struct Bump {
    arena: core::cell::UnsafeCell<[u8; ARENA]>,
    used: AtomicUsize,
}

// SAFETY: the arena is only handed out in disjoint pieces, claimed atomically.
unsafe impl Sync for Bump {}

// SAFETY: every returned block lies inside the arena, is aligned as asked, and is never handed
// out twice; exhaustion returns null as the trait requires.
unsafe impl GlobalAlloc for Bump {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let mut start = 0;
        let claimed = self.used.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
            start = used.checked_next_multiple_of(layout.align())?;
            let end = start.checked_add(layout.size())?;
            (end <= ARENA).then_some(end)
        });
        match claimed {
            Ok(_) => unsafe { self.arena.get().cast::<u8>().add(start) },
            Err(_) => core::ptr::null_mut(),
        }
    }

    unsafe fn dealloc(&self, _ptr: *mut u8, _layout: Layout) {}
}

#[global_allocator]
static ALLOCATOR: Bump = Bump { arena: core::cell::UnsafeCell::new([0; ARENA]), used: AtomicUsize::new(0) };

#[panic_handler]
fn panic(_: &PanicInfo<'_>) -> ! {
    loop {}
}

/// Decodes a wire message and routes one request with the device policy: the core's protocol
/// and decisions, linked without std.
#[unsafe(no_mangle)]
pub extern "C" fn scission_core_check(frame: *const u8, len: usize) -> u32 {
    let bytes = if frame.is_null() { &[][..] } else { unsafe { core::slice::from_raw_parts(frame, len) } };
    let decoded = matches!(decode(bytes), Ok(Body::Pong { .. })) as u32;
    let route = Route { stages: alloc::vec![Stage { tier: 0, machine: 0, start: 0, end: 1 }], predicted_ns: None };
    let mut policy = DevicePolicy::new(PolicyConfig::default(), alloc::vec![route], alloc::vec::Vec::new());
    policy.handle(embassy_time::Instant::from_ticks(0), Event::Submit { request: 1 });
    decoded + policy.poll().is_some() as u32
}
