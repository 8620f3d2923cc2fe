//! Scission's services: the device, edge and cloud as async glue (tokio, quinn) over the core's
//! protocol and policy, the tract engine and the network shell.
//!
//! - [`convert`]: tract tensors to wire tensors and messages, and back;
//! - [`node`]: a loaded model that runs stages;
//! - [`server`]: serving stages over QUIC (edge and cloud), forwarding the rest of a route;
//! - [`directory`]: the registered machines a node routes to, as the planner lists them;
//! - [`batch`]: dynamic batching: requests for one slice that queue together run as one batch;
//! - [`load`]: a server's queue and service times, as it reports them to the planner;
//! - [`planner`]: the cloud's planning service and model file;
//! - [`client`]: the device side of one request;
//! - [`session`]: the device's library API, a driver carrying out the core's
//!   [`DevicePolicy`](scission_core::policy::DevicePolicy) for many requests at once;
//! - [`ranking`]: where a device's ranked routes come from (a split, the solver, the cloud);
//! - [`device`]: the device's `run` (a benchmark over a session);
//! - [`serve`]: starting an edge or cloud server;
//! - [`fetch`]: downloading the model file from the cloud;
//! - [`peer`]: where another node is.
//!
//! A request carries its whole remaining route (tier and node range per stage) and the
//! activations crossing into the first of them, so servers keep no per-request state: the
//! edge runs its stage, forwards the rest to the cloud on a new stream, and relays the answer.
//! Nothing here prints: progress and results reach the caller as values and callbacks.
#![warn(missing_docs)]

#[cfg(feature = "onnx")]
pub mod batch;
pub mod client;
pub mod convert;
pub mod device;
pub mod directory;
pub mod error;
pub mod fetch;
pub mod load;
pub mod node;
pub mod peer;
pub mod planner;
pub mod ranking;
#[cfg(feature = "onnx")]
pub mod serve;
pub mod server;
pub mod session;

pub use error::RuntimeError;

/// A multi-threaded async runtime for one command.
pub fn async_runtime() -> crate::error::Result<tokio::runtime::Runtime> {
    use crate::error::Context;
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")
}

/// [`async_runtime`] with at most `blocking` threads for blocking work (model runs, request
/// parsing): each thread keeps its own allocator caches, so a service on a small board keeps
/// them few (tokio's default allows 512).
pub fn async_runtime_with_blocking(blocking: usize) -> crate::error::Result<tokio::runtime::Runtime> {
    use crate::error::Context;
    tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads(blocking.max(1))
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}
