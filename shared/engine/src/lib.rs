//! Scission's tract shell. With the `onnx` feature (on by default) it loads ONNX into a typed graph ([`load`]), summarises it for the core
//! ([`summary`]), builds runnable slices for node ranges ([`slice`](mod@slice)) and writes and loads them
//! as standalone files ([`artifact`]), runs chains of slices
//! the way separate machines would ([`pipeline`]), benchmarks every block ([`bench`](mod@bench)) and
//! reads and writes the profiles ([`profile_file`]); [`host`] describes this machine, [`heap`]
//! counts the process's heap (for the profile's measured memory), [`input`] and [`npy`] make and
//! read inputs. It logs and returns values; it never prints. Without
//! `onnx` (a lean device build) it only loads slice artifacts and runs them: no protobuf, no
//! ONNX parser, no whole model.
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
#[cfg(feature = "onnx")]
pub mod batch;
#[cfg(feature = "onnx")]
pub mod bench;
pub mod error;
pub mod host;
pub mod input;
#[cfg(feature = "onnx")]
pub mod load;
pub mod model_graph;
pub mod npy;
pub mod pipeline;
pub mod profile_file;
pub mod slice;
pub mod slower;
#[cfg(feature = "onnx")]
pub mod summary;

pub use error::EngineError;
#[cfg(feature = "onnx")]
pub use load::Model;
pub use model_graph::{LoadOptions, ModelGraph};
pub use pipeline::Pipeline;
/// The heap counter the binaries install (see [`scission_heap`]).
pub use scission_heap as heap;
pub use slice::Slice;
/// The tract the engine is built on (tract-core: this build runs slice artifacts only).
#[cfg(not(feature = "onnx"))]
pub use tract_core as tract;
/// The tract the engine is built on, re-exported so callers name the same types: tract-onnx
/// (a superset of tract-core's prelude) where the engine reads ONNX, tract-core otherwise.
#[cfg(feature = "onnx")]
pub use tract_onnx as tract;

/// Runs `work` with tract's matrix products on `threads` threads (1 = single-threaded).
/// Without the `multithread` feature everything runs on one thread (and a request for more is
/// logged once).
pub fn with_threads<R>(threads: usize, work: impl FnOnce() -> R) -> R {
    use tract_linalg::multithread::{Executor, multithread_tract_scope};
    #[cfg(feature = "multithread")]
    let executor = if threads > 1 { Executor::multithread(threads) } else { Executor::SingleThread };
    #[cfg(not(feature = "multithread"))]
    let executor = {
        static WARNED: std::sync::Once = std::sync::Once::new();
        if threads > 1 {
            WARNED.call_once(|| tracing::warn!("built without the multithread feature: running on 1 thread, not {threads}"));
        }
        Executor::SingleThread
    };
    multithread_tract_scope(executor, work)
}
