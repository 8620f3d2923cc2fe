//! Scission's network shell: the cluster's certificates ([`pki`]), QUIC endpoints with mutual
//! TLS, framed exchanges and link probes ([`quic`]), and a link emulator on the client's UDP
//! socket ([`emulator`]); what a message costs this machine beyond the link ([`loopback`]); failures are [`NetError`]s by kind. One bidirectional QUIC stream carries one request and its answer, so requests
//! never block each other.
#![warn(missing_docs)]

pub mod emulator;
pub mod error;
pub mod loopback;
pub mod pki;
pub mod quic;

pub use error::NetError;
