//! The next tier a server forwards to, connected on first use and again after a loss.

use super::*;

/// The next tier a server forwards to (the edge's cloud).
pub struct Upstream {
    pub(super) endpoint: quinn::Endpoint,
    pub(super) addr: SocketAddr,
    pub(super) name: String,
    pub(super) connection: Mutex<Option<quinn::Connection>>,
}

impl Upstream {
    /// Forwards through `endpoint` to node `name` at `addr`, connecting on first use and again
    /// after a loss.
    pub fn new(endpoint: quinn::Endpoint, addr: SocketAddr, name: &str) -> Self {
        Self { endpoint, addr, name: name.to_string(), connection: Mutex::new(None) }
    }

    pub(super) async fn connection(&self) -> Result<quinn::Connection> {
        if let Some(c) = self.connection.lock().await.as_ref().filter(|c| c.close_reason().is_none()) {
            return Ok(c.clone());
        }
        // Connect without holding the lock: forwards do not queue behind one slow handshake.
        let c = connect(&self.endpoint, self.addr, &self.name).await?;
        // A next tier that went silent fails its forwards at once, and the next one reconnects.
        tokio::spawn(scission_net::quic::close_when_silent(c.clone(), scission_net::quic::Liveness::default()));
        *self.connection.lock().await = Some(c.clone());
        Ok(c)
    }
}
