//! The network shell: certificates ([`pki`]) and QUIC endpoints and framed exchanges
//! ([`quic`]). One bidirectional QUIC stream carries one request and its answer, so requests
//! never block each other.

pub mod emulator;
pub mod pki;
pub mod quic;
