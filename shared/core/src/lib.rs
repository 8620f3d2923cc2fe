//! Scission's core: everything that decides, and nothing that does I/O.
//!
//! `#![no_std]` + `alloc`, deterministic, with time passed in as a value: the same code plans on
//! a cloud server and on a Raspberry Pi, and its tests need no sockets, files or processes.
//! The floors above it (`scission-engine` for tract, `scission-net` for QUIC,
//! `scission-runtime` for the services) call into it; it calls into none of them.
//!
//! - [`graph`], [`cut`]: a model's dataflow summary and where it can be cut;
//! - [`stats`], [`timing`], [`profile`]: measurements and the per-machine benchmark profile;
//! - [`attribution`]: one profiled whole-model run's node times, summed per block;
//! - [`link`]: what one hop costs (link figures, activation encodings);
//! - [`solver`]: the cost model and the exact top-K partition planner;
//! - [`policy`]: the device runtime's decisions (route choice, failover, recovery, re-planning)
//!   as a sans-I/O state machine;
//! - [`batching`]: when a server's queued requests for a slice run as one batch;
//! - [`wire`]: the protocol between tiers (postcard messages, tensor frames, framing);
//! - [`compat`]: readers for the original Scission's benchmark and network files;
//! - [`rng`]: the deterministic generator behind synthetic inputs and weights;
//! - [`context`]: the error-context trait the std crates define for their own error types.
#![no_std]
#![warn(missing_docs)]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod attribution;
pub mod batching;
pub mod compat;
pub mod context;
pub mod cut;
pub mod graph;
pub mod link;
pub mod memory;
pub mod policy;
pub mod profile;
pub mod rng;
pub mod solver;
pub mod stats;
pub mod timing;
pub mod wire;
