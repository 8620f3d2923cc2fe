//! The tract shell: loads ONNX into a decluttered typed graph ([`load`]), summarises it for the
//! core ([`summary`]), builds runnable slices for node ranges ([`slice`]) and runs chains of
//! slices the way separate machines would ([`pipeline`]).
//!
//! Cuts are made on the *decluttered* graph: its nodes stay close to the ONNX layers, every
//! tensor between them is a plain dense tensor, and its order is the same on every
//! architecture, so device, edge and cloud agree on positions from the same file. Each slice
//! is optimised on its own afterwards.

use std::prelude::rust_2024::*;

pub mod input;
pub mod load;
pub mod npy;
pub mod pipeline;
pub mod slice;
pub mod summary;

pub use load::{LoadOptions, Model};
pub use pipeline::Pipeline;
pub use slice::Slice;

/// Runs `work` with tract's matrix products on `threads` threads (1 = single-threaded).
pub fn with_threads<R>(threads: usize, work: impl FnOnce() -> R) -> R {
    use tract_linalg::multithread::{Executor, multithread_tract_scope};
    let executor = if threads > 1 { Executor::multithread(threads) } else { Executor::SingleThread };
    multithread_tract_scope(executor, work)
}
