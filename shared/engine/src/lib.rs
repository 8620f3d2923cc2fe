//! Scission's tract shell: loads ONNX into a typed graph ([`load`]), summarises it for the core
//! ([`summary`]), builds runnable slices for node ranges ([`slice`]) and writes and loads them
//! as standalone files ([`artifact`]), runs chains of slices
//! the way separate machines would ([`pipeline`]), benchmarks every block ([`bench`]) and
//! reads and writes the profiles ([`profile_file`]); [`host`] describes this machine, [`input`]
//! and [`npy`] make and read inputs. It logs and returns values; it never prints.
//!
//! Cuts are made on the typed graph after a *portable* declutter (see `load`): its nodes stay
//! close to the ONNX layers, batch norms are folded, every tensor between nodes is a plain dense
//! tensor in the ONNX layout, and it is the same on every architecture. tract's full declutter
//! is not: on aarch64 it lays some activations out channels-last (a depthwise block's output
//! came out HWC on ARM and CHW on x86), so an ARM device and an x86 server would disagree on
//! what crosses a cut. Each slice is fully decluttered and optimised on its own afterwards,
//! which keeps its boundary tensors as they are.

#![warn(missing_docs)]

pub mod artifact;
pub mod bench;
pub mod error;
pub mod host;
pub mod input;
pub mod load;
pub mod npy;
pub mod pipeline;
pub mod profile_file;
pub mod slice;
pub mod summary;

pub use error::EngineError;
pub use load::{LoadOptions, Model, ModelGraph};
pub use pipeline::Pipeline;
pub use slice::Slice;
/// The tract-onnx version the engine is built on, re-exported so callers name the same types.
pub use tract_onnx as tract;

/// Runs `work` with tract's matrix products on `threads` threads (1 = single-threaded).
pub fn with_threads<R>(threads: usize, work: impl FnOnce() -> R) -> R {
    use tract_linalg::multithread::{Executor, multithread_tract_scope};
    let executor = if threads > 1 { Executor::multithread(threads) } else { Executor::SingleThread };
    multithread_tract_scope(executor, work)
}
