//! The distributed runtime: each tier runs its stage of a request's route and hands the rest
//! on. [`convert`] maps tract tensors to wire tensors and back, [`node`] runs stages of a
//! loaded model, [`server`] serves stages over QUIC (edge and cloud), [`client`] sends a
//! device's requests.
//!
//! A request carries its whole remaining route (tier and node range per stage) and the
//! activations crossing into the first of them, so servers keep no per-request state: the
//! edge runs its stage, forwards the rest to the cloud on a new stream, and relays the answer.

pub mod client;
pub mod commands;
pub mod convert;
pub mod device_run;
pub mod fetch;
pub mod node;
pub mod planner;
pub mod server;
