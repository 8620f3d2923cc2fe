//! The device's local inference service, for the applications on its board: the Open Inference
//! Protocol (KServe v2 REST, as Triton, KServe, Seldon MLServer and OpenVINO Model Server speak
//! it) over HTTP and a Unix socket, encoded images as inputs, and Prometheus metrics, all over a
//! runtime [`Session`](scission_runtime::session::Session).
//!
//! - [`protocol`]: the protocol's bodies and tensor data, as pure functions;
//! - [`image`]: image decoding and preprocessing presets, top-k with labels;
//! - [`metrics`]: the Prometheus registry fed by the session's events;
//! - [`http`]: the axum routes and the listeners.
#![warn(missing_docs)]

pub mod http;
pub mod image;
pub mod metrics;
pub mod protocol;
