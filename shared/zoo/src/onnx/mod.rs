//! Writing ONNX models from Rust: a small NCHW graph builder over tract-onnx's protobuf types
//! ([`builder`], weights from [`scission_core::rng`]) and the project's own test models ([`testmodels`]). Nothing is downloaded: every model the tests and the demo use is written
//! here.

pub mod builder;
pub mod testmodels;

pub use builder::{GraphBuilder, Value};
