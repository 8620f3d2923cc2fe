//! Scission's shared library.
//!
//! The crate root is `#![no_std]`: the pure, deterministic core (graph summaries, cut analysis,
//! statistics, profiles, timing) needs only `alloc` and has no I/O, so the same code plans and
//! measures on a server, on a Raspberry Pi, or on a board without an operating system.
//! Everything that touches files, threads, tract or the terminal lives behind the default `std`
//! feature: [`engine`] (tract-onnx loading, slicing, running), [`bench`] (per-block benchmarking),
//! [`host`] and [`cli`]; the `zoo` feature adds `onnx` (writing ONNX models from Rust) and `zoo`
//! (the built-in models), and `net` the QUIC runtime.
//!
//! `cargo build -p scission-shared --no-default-features` builds the core alone.
#![no_std]
#![warn(missing_docs)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod compat;
pub mod cut;
pub mod graph;
pub mod profile;
pub mod rng;
pub mod solver;
pub mod stats;
pub mod timing;
pub mod wire;

#[cfg(feature = "std")]
pub mod bench;
#[cfg(feature = "std")]
pub mod cli;
#[cfg(feature = "std")]
pub mod engine;
#[cfg(feature = "std")]
pub mod host;
#[cfg(feature = "net")]
pub mod net;
#[cfg(feature = "std")]
pub mod onnx;
#[cfg(feature = "net")]
pub mod runtime;
#[cfg(feature = "std")]
pub mod zoo;

/// The tract-onnx version the engine is built on, re-exported so callers name the same types.
#[cfg(feature = "std")]
pub use tract_onnx as tract;
