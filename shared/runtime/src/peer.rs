//! Where another node is: its address (and the host name it came from, resolved again on each
//! connection) and the enrolled name its certificate must carry.

use std::net::SocketAddr;

/// Where a tier's server is, and the name its certificate must carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// Its address as last resolved.
    pub addr: SocketAddr,
    /// The `HOST:PORT` it was given as, when that was a name: resolved again on every new
    /// connection (a board's DHCP-assigned edge moves).
    pub host: Option<String>,
    /// Its enrolled name.
    pub name: String,
}

impl Peer {
    /// A peer at a fixed address.
    pub fn new(addr: SocketAddr, name: impl Into<String>) -> Self {
        Self { addr, host: None, name: name.into() }
    }

    /// A peer known by `host` (`HOST:PORT`), first resolved as `addr`.
    pub fn at_host(host: impl Into<String>, addr: SocketAddr, name: impl Into<String>) -> Self {
        Self { addr, host: Some(host.into()), name: name.into() }
    }

    /// The address to connect to now: `host` resolved again (the first address), or the last
    /// known one when there is no name or it does not resolve.
    pub async fn current_addr(&self) -> SocketAddr {
        let Some(host) = &self.host else { return self.addr };
        match tokio::net::lookup_host(host.as_str()).await.map(|mut addrs| addrs.next()) {
            Ok(Some(addr)) => addr,
            Ok(None) | Err(_) => {
                tracing::warn!("{host} does not resolve now; using {}", self.addr);
                self.addr
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_named_peer_is_resolved_again_and_a_fixed_one_is_not() {
        let stale: SocketAddr = "192.0.2.1:4434".parse().unwrap_or_else(|_| unreachable!());
        let named = Peer::at_host("localhost:4434", stale, "edge");
        let now = named.current_addr().await;
        assert!(now.ip().is_loopback() && now.port() == 4434, "{now}");
        assert_eq!(Peer::new(stale, "edge").current_addr().await, stale);
        // A name that no longer resolves keeps the last address rather than failing.
        let gone = Peer::at_host("no-such-host.invalid:1", stale, "edge");
        assert_eq!(gone.current_addr().await, stale);
    }
}
