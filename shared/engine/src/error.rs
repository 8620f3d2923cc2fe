//! Why the engine failed: a message of ours, or a cause (tract's error, an I/O error, a JSON
//! error) with what was being done. [`Context`] attaches the latter to any error or `None`, the
//! way callers of this crate would expect.

pub use scission_core::context::Cause;

/// Why the engine failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The model, an input or a request is not usable as given.
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
    /// tract failed.
    #[error("{0}")]
    Tract(#[source] Cause),
    /// A file could not be read or written.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A profile could not be encoded or decoded.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

impl From<anyhow::Error> for EngineError {
    fn from(e: anyhow::Error) -> Self {
        EngineError::Tract(e.into())
    }
}

scission_core::context_trait!(EngineError);

pub use scission_core::bail;
