//! Why a network-shell operation failed, by kind; the text says what and where.

use scission_core::wire::WireError;

/// Why a network-shell operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A file could not be read or written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, and to which file.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The request itself is wrong (a bad name, an existing key, a number out of range).
    #[error("{0}")]
    Invalid(String),
    /// A certificate or key is missing, malformed or could not be made.
    #[error("{what}: {source}")]
    Certificate {
        /// Which one, and what was being done.
        what: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// QUIC or TLS could not be set up, or a connection or stream failed.
    #[error("{what}: {source}")]
    Transport {
        /// What was being done, with whom.
        what: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A peer did not answer in time.
    #[error("{0}")]
    Timeout(String),
    /// A peer answered something else than the protocol asks.
    #[error("{0}")]
    Protocol(String),
    /// A frame could not be read.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// A message could not be encoded or decoded.
    #[error(transparent)]
    Wire(#[from] WireError),
}

/// Why reading a frame failed.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer announced a frame over the limit.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The stream ended early or broke.
    #[error("stream ended before the frame was complete: {0}")]
    Stream(#[from] quinn::ReadExactError),
    /// The stream broke while the body arrived.
    #[error("stream broke while the frame arrived: {0}")]
    Read(#[from] quinn::ReadError),
    /// The stream ended before the announced length.
    #[error("stream ended after {got} of {len} announced bytes")]
    Truncated {
        /// Bytes received.
        got: usize,
        /// Bytes announced.
        len: usize,
    },
}

/// Results of this crate.
pub type Result<T, E = NetError> = std::result::Result<T, E>;

/// Attaches what was being done to an error, as the kind of [`NetError`] it is.
pub(crate) trait Doing<T> {
    /// An I/O failure while doing `what`.
    fn io(self, what: impl FnOnce() -> String) -> Result<T>;
    /// A certificate failure while doing `what`.
    fn certificate(self, what: impl FnOnce() -> String) -> Result<T>;
    /// A transport failure while doing `what`.
    fn transport(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: std::error::Error + Send + Sync + 'static> Doing<T> for std::result::Result<T, E> {
    fn io(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| NetError::Io { what: what(), source: std::io::Error::other(e) })
    }

    fn certificate(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| NetError::Certificate { what: what(), source: Box::new(e) })
    }

    fn transport(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| NetError::Transport { what: what(), source: Box::new(e) })
    }
}
