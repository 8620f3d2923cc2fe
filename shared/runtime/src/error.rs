//! Why a runtime operation failed: a message of ours, a failure of the engine or the network
//! shell, or any other cause with what was being done.

pub use scission_core::context::Cause;
use scission_core::wire::WireError;
use scission_engine::EngineError;
use scission_net::NetError;

/// Why a runtime operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A request, an answer or a configuration is not usable as given.
    #[error("{0}")]
    Invalid(String),
    /// Something below failed while doing `what`.
    #[error("{what}: {source}")]
    Context {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: Cause,
    },
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The network shell failed.
    #[error(transparent)]
    Net(#[from] NetError),
    /// A message could not be encoded or decoded.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// A file could not be read or written.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A profile could not be encoded.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// Planning failed.
    #[error(transparent)]
    Plan(#[from] scission_core::solver::SolveError),
    /// Building a slice would take more than the memory budget for built slices.
    #[error(
        "the slice [{start}, {end}) needs {} MiB to build, more than the {} MiB this server's memory budget leaves for built slices (--memory-mib)",
        need.div_ceil(1 << 20),
        budget >> 20
    )]
    OverMemory {
        /// The range's first node.
        start: usize,
        /// Its end.
        end: usize,
        /// Bytes building it holds.
        need: u64,
        /// The budget for built slices.
        budget: u64,
    },
}

impl From<anyhow::Error> for RuntimeError {
    /// tract's errors (its error type is anyhow's).
    fn from(e: anyhow::Error) -> Self {
        RuntimeError::Engine(e.into())
    }
}

impl From<tokio::task::JoinError> for RuntimeError {
    fn from(e: tokio::task::JoinError) -> Self {
        RuntimeError::Context { what: "a worker task failed".into(), source: Box::new(e) }
    }
}

impl From<scission_core::profile::BadSha256> for RuntimeError {
    fn from(e: scission_core::profile::BadSha256) -> Self {
        RuntimeError::Invalid(e.to_string())
    }
}

scission_core::context_trait!(RuntimeError);

pub use scission_core::bail;

/// A [`RuntimeError::Invalid`] with a formatted message, as a value.
#[macro_export]
#[doc(hidden)]
macro_rules! runtime_error {
    ($($arg:tt)*) => {
        $crate::error::RuntimeError::Invalid(format!($($arg)*))
    };
}

pub use crate::runtime_error as error;
