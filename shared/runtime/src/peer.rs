//! Where another node is: its address and the enrolled name its certificate must carry.

use std::net::SocketAddr;

/// Where a tier's server is, and the name its certificate must carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// Its address.
    pub addr: SocketAddr,
    /// Its enrolled name.
    pub name: String,
}
