//! What this machine spends on a message beyond the link: hops over loopback along the
//! runtime's own path (encode a request frame, QUIC with mutual TLS, decode and validate it at
//! the receiver, a short answer back), timed at two sizes and fitted to a fixed and a per-byte
//! cost ([`MessageCost`]). `bench` records it in the profile; the solver charges each end of a
//! hop half of its machine's figure.

use std::time::Instant;

use scission_core::link::{Encoding, MessageCost};
use scission_core::wire::message::{Body, NamedTensor, Stage, decode, encode};
use scission_core::wire::tensor::{TensorFrame, encode_f32};

use crate::error::{NetError, Result};
use crate::{pki, quic};

/// Activation bytes of the small and the large hop.
pub const SIZES: [usize; 2] = [4 << 10, 1 << 20];

/// Rounds of timed hops per size.
const ROUNDS: usize = 3;

/// Largest frame the loopback server takes: the large hop with room to spare.
const MAX_FRAME: u32 = 4 << 20;

/// Times `ROUNDS` rounds of `runs` hops of each of [`SIZES`] over loopback (after one untimed
/// hop of each) and fits the least of each size's round medians. The two ends' identities come
/// from a throwaway cluster held in memory: nothing is written.
pub async fn message_cost(runs: usize) -> Result<MessageCost> {
    let [server, client]: [pki::Identity; 2] = pki::Identity::throwaway(&[("a", pki::Role::Cloud), ("b", pki::Role::Device)])?
        .try_into()
        .map_err(|_| NetError::Invalid("two loopback identities".into()))?;
    let endpoint = quic::server(&server, "127.0.0.1:0".parse().map_err(|_| NetError::Invalid("loopback address".into()))?, None)?;
    let addr = endpoint.local_addr().map_err(|e| NetError::Io { what: "the loopback server's address".into(), source: e })?;
    let serving = tokio::spawn(answer_each(endpoint.clone()));
    let client = quic::client(&client)?;
    let connection = quic::connect(&client, addr, "a").await?;
    let mut medians = Vec::with_capacity(SIZES.len());
    for size in SIZES {
        let values = vec![0.5f32; size / 4];
        let bytes = hop(&connection, &values).await?;
        // The least of a few rounds' medians: a round that a busy machine slowed throughout
        // (it happens on a shared host) does not set the figure.
        let mut best = u64::MAX;
        for _ in 0..ROUNDS {
            let mut times = Vec::with_capacity(runs.max(1));
            for _ in 0..runs.max(1) {
                let started = Instant::now();
                hop(&connection, &values).await?;
                times.push(u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX));
            }
            times.sort_unstable();
            best = best.min(times[times.len() / 2]);
        }
        medians.push((bytes, best));
    }
    connection.close(0u32.into(), b"done");
    endpoint.close(0u32.into(), b"done");
    serving.abort();
    MessageCost::fit(medians[0], medians[1]).ok_or_else(|| NetError::Invalid("the two loopback hops carried the same bytes".into()))
}

/// One hop: `values` encoded into a request frame as the runtime encodes activations, sent,
/// and the answer back. Returns the frame's bytes.
async fn hop(connection: &quinn::Connection, values: &[f32]) -> Result<u64> {
    let frame = request_frame(values)?;
    let bytes = frame.len() as u64;
    let answer = quic::exchange(connection, frame, MAX_FRAME).await?;
    decode(&answer)?;
    Ok(bytes)
}

/// An inference request carrying `values` as one f32 activation, encoded as a frame.
pub fn request_frame(values: &[f32]) -> Result<Vec<u8>> {
    let (elements, data) = encode_f32(values, Encoding::F32);
    let count = u32::try_from(values.len()).map_err(|_| NetError::Invalid("an activation of over 2^32 values".into()))?;
    let tensor = TensorFrame { elements, shape: [1, count].into_iter().collect(), data: &data };
    let body = Body::Infer {
        request: 1,
        model: [0; 32],
        stages: [Stage { tier: 1, machine: 0, start: 0, end: 1 }].into_iter().collect(),
        encoding: Encoding::F32,
        tensors: [NamedTensor { id: 0, tensor }].into_iter().collect(),
        deadline_ms: 0,
    };
    Ok(encode(&body)?)
}

/// Answers every request on `endpoint` with a pong once it has decoded it, as a tier would
/// before running it.
async fn answer_each(endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        let Ok(connection) = incoming.await else { continue };
        tokio::spawn(async move {
            while let Ok((mut send, mut recv)) = connection.accept_bi().await {
                let Ok(bytes) = quic::read_frame(&mut recv, MAX_FRAME).await else { return };
                if decode(&bytes).is_err() {
                    return;
                }
                let Ok(pong) = encode(&Body::Pong { nonce: 1 }) else { return };
                if quic::write_frame(&mut send, pong).await.is_err() {
                    return;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_loopback_hop_costs_something_and_more_for_more_bytes() {
        let cost = message_cost(3).await.expect("measured");
        // Both ends of a hop, with TLS and a handshake long done: some microseconds at least,
        // and a megabyte costs more than 4 KB. No speed is asserted.
        assert!(cost.fixed_ns > 0 || cost.ps_per_byte > 0, "{cost:?}");
        assert!(cost.loopback_ns(1 << 20) > cost.loopback_ns(4 << 10), "{cost:?}");
    }

    /// A UDP relay to `upstream` for one client; drops everything both ways while `drop` is set.
    async fn relay(upstream: std::net::SocketAddr, drop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> std::net::SocketAddr {
        use std::sync::atomic::Ordering;
        let front = std::sync::Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("front"));
        let back = std::sync::Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("back"));
        back.connect(upstream).await.expect("upstream");
        let addr = front.local_addr().expect("bound");
        let client = std::sync::Arc::new(std::sync::Mutex::new(None));
        let (f, b, d, c) = (front.clone(), back.clone(), drop.clone(), client.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            while let Ok((n, from)) = f.recv_from(&mut buf).await {
                *c.lock().expect("client") = Some(from);
                if !d.load(Ordering::SeqCst) {
                    let _ = b.send(&buf[..n]).await;
                }
            }
        });
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            while let Ok(n) = back.recv(&mut buf).await {
                let to = *client.lock().expect("client");
                if let (Some(to), false) = (to, drop.load(Ordering::SeqCst)) {
                    let _ = front.send_to(&buf[..n], to).await;
                }
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_peer_that_goes_silent_is_given_up_and_a_live_idle_one_is_not() {
        let [server, client]: [pki::Identity; 2] =
            pki::Identity::throwaway(&[("a", pki::Role::Cloud), ("b", pki::Role::Device)]).expect("issued").try_into().expect("two");
        let endpoint = quic::server(&server, "127.0.0.1:0".parse().expect("address"), None).expect("server");
        let serving = tokio::spawn(answer_each(endpoint.clone()));
        let dropping = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let via = relay(endpoint.local_addr().expect("bound"), dropping.clone()).await;
        let connection = quic::connect(&quic::client(&client).expect("client"), via, "a").await.expect("connected");
        let watcher = tokio::spawn(quic::close_when_silent(connection.clone(), quic::Liveness::default()));
        // Idle but alive (it answers the keep-alives): kept for several silences.
        tokio::time::sleep(quic::SILENCE * 4).await;
        assert!(!watcher.is_finished(), "a live idle peer was given up");
        assert!(connection.close_reason().is_none());
        // Everything dropped, no close and no ICMP: given up, and a request on it fails.
        dropping.store(true, std::sync::atomic::Ordering::SeqCst);
        let ping = encode(&Body::Ping { nonce: 1, padding: &[] }).expect("ping");
        let exchange = quic::exchange(&connection, ping, MAX_FRAME);
        let (closed, answer) = tokio::join!(tokio::time::timeout(std::time::Duration::from_secs(20), watcher), exchange);
        assert!(closed.expect("given up before the idle timeout").expect("watcher"), "the watcher closed it");
        assert!(answer.is_err(), "the request on the silent connection fails");
        serving.abort();
    }

    #[tokio::test]
    async fn a_throwaway_cluster_trusts_its_own_nodes_only() {
        let pair = || pki::Identity::throwaway(&[("a", pki::Role::Cloud), ("b", pki::Role::Device)]).expect("issued");
        let (ours, theirs) = (pair(), pair());
        let endpoint = quic::server(&ours[0], "127.0.0.1:0".parse().expect("address"), None).expect("server");
        let addr = endpoint.local_addr().expect("bound");
        let serving = tokio::spawn(answer_each(endpoint.clone()));
        let own = quic::connect(&quic::client(&ours[1]).expect("client"), addr, "a").await;
        let foreign = quic::connect(&quic::client(&theirs[1]).expect("client"), addr, "a").await;
        serving.abort();
        own.expect("a node of the same throwaway cluster connects");
        assert!(foreign.is_err(), "a node of another throwaway cluster must be refused");
    }
}
