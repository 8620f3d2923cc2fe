//! The command-line front end the three binaries share (as `uv-cli` is uv's): clap argument
//! types, the commands every tier has (`bench`, `inspect`, `serve`, the cluster's `init` and
//! `enroll`), progress bars, logging set-up and one-line errors. Commands return the text to show; the
//! binaries print it. Only the binaries depend on this crate; the libraries below it know
//! nothing of clap. Without the `onnx` feature (a lean device) only the commands that need no
//! ONNX parser are here.
#![warn(missing_docs)]

pub mod cluster;
pub mod model;
pub mod output;
pub mod progress;
#[cfg(feature = "onnx")]
pub mod serving;
pub mod slicing;
#[cfg(feature = "onnx")]
pub mod tools;

pub use cluster::{ClusterArgs, EncodingArg, EnrollArgs, RevokeArgs, run_enroll, run_init, run_revoke};
pub use model::{HostPort, ModelArgs, ZooLookup, parse_host_port, parse_shape};
pub use output::{Ending, init_tracing, init_tracing_as, one_line};
#[cfg(feature = "onnx")]
pub use progress::BenchBar;
pub use progress::FetchBar;
#[cfg(feature = "onnx")]
pub use serving::{Announcement, ServeArgs, run_serve};
pub use slicing::{RunSliceArgs, run_run_slice};
#[cfg(feature = "onnx")]
pub use slicing::{SliceArgs, run_slice};
#[cfg(feature = "onnx")]
pub use tools::{BenchArgs, InspectArgs, inspect_report, measure_messages, profile_summary, run_bench, run_inspect};
