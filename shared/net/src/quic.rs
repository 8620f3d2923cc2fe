//! QUIC endpoints with the cluster's mutual TLS, and one-frame-each-way exchanges on
//! bidirectional streams.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

pub use crate::error::FrameError;
use crate::error::{Doing, NetError, Result};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};

use super::pki::{Identity, PeerCert, node_dns};
use scission_core::link::Link;
use scission_core::policy::{Probe, estimate_link};
use scission_core::wire::WireError;
use scission_core::wire::frame::{HEADER, body_len};
use scission_core::wire::message::{Body, decode, encode};

/// Requests one peer may have open on a connection at once.
pub const MAX_STREAMS: u32 = 32;
/// Bytes a peer may have in flight on one connection.
pub const RECEIVE_WINDOW: u32 = 32 << 20;
/// UDP socket buffers asked for, each way: a burst of a large activation's datagrams must not
/// overflow the kernel's default (about 208 KiB), or QUIC reads the drops as congestion. The
/// kernel caps the request at `net.core.rmem_max` / `wmem_max`.
pub const SOCKET_BUFFER: usize = 4 << 20;

/// How an endpoint sizes and sends its datagrams.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Datagrams {
    /// The path's largest: MTU discovery searches up to [`MAX_UDP_PAYLOAD`], so a 4 MB
    /// activation takes ~70 datagrams on loopback instead of ~3000, and paths with a 1500-byte
    /// MTU settle at 1452 as before. Sent one by one: segmentation offload's bursts of up to 64
    /// datagrams overflowed the receiver's socket buffer on loopback, and quinn took the losses
    /// for a black hole and fell back to 1200 bytes (see the transport bench).
    #[default]
    PathMtu,
    /// quinn's defaults: at most 1452 bytes, sent in offloaded bursts.
    Standard,
}

/// Largest UDP payload a server endpoint accepts and MTU discovery searches for.
pub const MAX_UDP_PAYLOAD: u16 = 65_527;

/// Default [`Liveness::silence`]: a dead peer is noticed within half a second.
pub const SILENCE: Duration = Duration::from_millis(500);

/// How a client watches the peers of its connections (see [`close_when_silent`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Liveness {
    /// A connection whose peer has sent nothing for this long (or four round trips, when
    /// longer) is given up. The client makes its peer answer five times as often (a QUIC ping
    /// when nothing else was sent): about 20 small packets a second on an idle connection at
    /// the default, one every 2 s at 10 s (for a metered link).
    pub silence: Duration,
}

impl Default for Liveness {
    fn default() -> Self {
        Self { silence: SILENCE }
    }
}

impl Liveness {
    /// How often the client makes its peer answer: a fifth of the silence (at least 20 ms).
    pub fn keep_alive(self) -> Duration {
        (self.silence / 5).max(Duration::from_millis(20))
    }
}

/// Application close code of a connection given up because its peer went silent.
pub const CLOSED_SILENT: u32 = 0x5110;

fn transport_with(streams: u32, datagrams: Datagrams, keep_alive: Duration) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(10_000))));
    t.keep_alive_interval(Some(keep_alive));
    // One request per bidirectional stream: a peer gets this many at once, and this many bytes
    // in flight per connection, whatever it announces.
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(streams));
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    t.receive_window(quinn::VarInt::from_u32(RECEIVE_WINDOW));
    t.stream_receive_window(quinn::VarInt::from_u32(RECEIVE_WINDOW));
    if datagrams == Datagrams::PathMtu {
        let mut mtu = quinn::MtuDiscoveryConfig::default();
        mtu.upper_bound(MAX_UDP_PAYLOAD);
        t.mtu_discovery_config(Some(mtu));
        t.enable_segmentation_offload(false);
    }
    Arc::new(t)
}

/// A server's endpoint accepts datagrams of up to [`MAX_UDP_PAYLOAD`] bytes: activations travel
/// towards servers. quinn's receive buffer grows with this size (about 2,000 times it, touched
/// only as datagrams arrive), so clients, devices among them, keep quinn's 1472: their answers
/// are small.
fn server_endpoint_config(datagrams: Datagrams) -> quinn::EndpointConfig {
    let mut config = quinn::EndpointConfig::default();
    if datagrams == Datagrams::PathMtu
        && let Err(e) = config.max_udp_payload_size(MAX_UDP_PAYLOAD)
    {
        tracing::debug!("UDP payload size not raised: {e}");
    }
    config
}

/// A server endpoint on `bind` that accepts only clients with a certificate from the cluster CA
/// (and, with a deny list, none of a revoked node), each with at most [`MAX_STREAMS`] streams.
pub fn server(identity: &Identity, bind: SocketAddr, deny: Option<Arc<super::pki::DenyList>>) -> Result<quinn::Endpoint> {
    server_with(identity, bind, deny, MAX_STREAMS, Datagrams::default())
}

/// [`server`] with at most `streams` concurrent streams per connection, sending `datagrams`.
pub fn server_with(
    identity: &Identity,
    bind: SocketAddr,
    deny: Option<Arc<super::pki::DenyList>>,
    streams: u32,
    datagrams: Datagrams,
) -> Result<quinn::Endpoint> {
    let crypto = QuicServerConfig::try_from(identity.server_config(deny)?).transport(|| "TLS configuration unusable for QUIC".into())?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport_with(streams.max(1), datagrams, Duration::from_secs(2)));
    let socket = udp_socket(bind).transport(|| format!("cannot listen on {bind}"))?;
    let runtime = quinn::default_runtime().ok_or_else(|| NetError::Invalid("a QUIC endpoint needs a tokio runtime".into()))?;
    quinn::Endpoint::new(server_endpoint_config(datagrams), Some(config), socket, runtime).transport(|| format!("cannot listen on {bind}"))
}

/// A UDP socket bound to `bind`, with [`SOCKET_BUFFER`] bytes of buffer each way where the
/// kernel allows (less is logged, not an error).
fn udp_socket(bind: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(bind), Type::DGRAM, Some(Protocol::UDP))?;
    if bind.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    let asked = (socket.set_recv_buffer_size(SOCKET_BUFFER), socket.set_send_buffer_size(SOCKET_BUFFER));
    match (asked, socket.recv_buffer_size(), socket.send_buffer_size()) {
        ((Ok(()), Ok(())), Ok(recv), Ok(send)) => tracing::debug!("UDP socket buffers: {recv} bytes in, {send} out"),
        (asked, recv, send) => tracing::debug!("UDP socket buffers not as asked ({asked:?}): {recv:?} in, {send:?} out"),
    }
    socket.set_nonblocking(true)?;
    socket.bind(&bind.into())?;
    Ok(socket.into())
}

/// A client endpoint presenting this node's certificate.
pub fn client(identity: &Identity) -> Result<quinn::Endpoint> {
    client_with(identity, std::collections::HashMap::new(), Datagrams::default(), Liveness::default())
}

/// A client endpoint whose datagrams to the given addresses go through link emulators (see
/// [`emulator`](super::emulator)), sending `datagrams`, pinging its peers as `liveness` needs.
/// Must be called inside a tokio runtime.
pub fn client_with(
    identity: &Identity,
    shapers: std::collections::HashMap<SocketAddr, Arc<super::emulator::Shaper>>,
    datagrams: Datagrams,
    liveness: Liveness,
) -> Result<quinn::Endpoint> {
    let crypto = QuicClientConfig::try_from(identity.client_config()?).transport(|| "TLS configuration unusable for QUIC".into())?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport_with(MAX_STREAMS, datagrams, liveness.keep_alive()));
    let socket = udp_socket(SocketAddr::from(([0, 0, 0, 0], 0))).transport(|| "cannot open a UDP socket".into())?;
    let runtime = quinn::default_runtime().ok_or_else(|| NetError::Invalid("a QUIC endpoint needs a tokio runtime".into()))?;
    let inner = runtime.wrap_udp_socket(socket).transport(|| "cannot use the UDP socket".into())?;
    let socket: Arc<dyn quinn::AsyncUdpSocket> =
        if shapers.is_empty() { inner } else { super::emulator::EmulatedSocket::new(inner, shapers) };
    let mut endpoint = quinn::Endpoint::new_with_abstract_socket(quinn::EndpointConfig::default(), None, socket, runtime)
        .transport(|| "cannot open a QUIC endpoint".into())?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

/// Connects to cluster node `name` at `addr` (its certificate must name it).
pub async fn connect(endpoint: &quinn::Endpoint, addr: SocketAddr, name: &str) -> Result<quinn::Connection> {
    let connecting = endpoint.connect(addr, &node_dns(name)).transport(|| format!("cannot connect to {name} at {addr}"))?;
    tokio::time::timeout(Duration::from_secs(5), connecting)
        .await
        .map_err(|_| NetError::Timeout(format!("{addr} did not answer within 5 s")))?
        .transport(|| format!("QUIC handshake with {addr} failed"))
}

/// Watches a client's `connection` (from an endpoint made with the same `liveness`) and closes
/// it ([`CLOSED_SILENT`]) when its peer has sent nothing for [`Liveness::silence`] (or four round
/// trips, when longer) although the client's keep-alives asked it to answer: a killed process, a
/// crashed host or a path that drops everything. Requests on the connection then fail at once
/// instead of waiting out their timeouts. Resolves when the connection closes; `true` when it
/// closed it.
pub async fn close_when_silent(connection: quinn::Connection, liveness: Liveness) -> bool {
    let check = liveness.keep_alive() / 2;
    let mut received = connection.stats().udp_rx.datagrams;
    let mut heard = tokio::time::Instant::now();
    loop {
        let slept = tokio::time::Instant::now();
        tokio::select! {
            _ = connection.closed() => return false,
            _ = tokio::time::sleep(check) => {}
        }
        let now_received = connection.stats().udp_rx.datagrams;
        // Woken late, this process was not running (a busy host): what the peer sent may still
        // wait in the socket, unread. Silence counts only from a moment this side was listening.
        let late = slept.elapsed() > check.saturating_mul(3);
        if now_received != received || late {
            received = now_received;
            heard = tokio::time::Instant::now();
            continue;
        }
        let silence = liveness.silence.max(connection.rtt().saturating_mul(4));
        if heard.elapsed() >= silence {
            tracing::info!(peer = %connection.remote_address(), "no packet from the peer for {} ms: connection given up", heard.elapsed().as_millis());
            connection.close(quinn::VarInt::from_u32(CLOSED_SILENT), b"peer silent");
            return true;
        }
    }
}

/// The verified certificate of the peer on `connection`.
pub fn peer_cert(connection: &quinn::Connection) -> Option<PeerCert> {
    let identity = connection.peer_identity()?;
    let chain = identity.downcast_ref::<Vec<rustls::pki_types::CertificateDer<'static>>>()?;
    PeerCert::new(chain)
}

/// Reads one frame, refusing one larger than `max_frame` before reading its body. Memory grows
/// with the bytes that actually arrive, not with the length a peer announces.
pub async fn read_frame(recv: &mut quinn::RecvStream, max_frame: u32) -> Result<Vec<u8>, FrameError> {
    let head = read_head(recv, max_frame, 0).await?;
    read_rest(recv, head).await
}

/// The start of a frame: its announced length and up to the first bytes asked for.
#[derive(Debug)]
pub struct FrameHead {
    /// The body's announced length.
    pub len: usize,
    /// The body's first bytes (all of it when it is short).
    pub start: Vec<u8>,
}

/// Reads a frame's header (checked against `max_frame`) and the first `want` bytes of its body,
/// so the receiver can decide on the request before the rest arrives ([`read_rest`]).
pub async fn read_head(recv: &mut quinn::RecvStream, max_frame: u32, want: usize) -> Result<FrameHead, FrameError> {
    let mut header = [0u8; HEADER];
    recv.read_exact(&mut header).await?;
    let len = body_len(header, max_frame)?;
    let mut start = vec![0u8; want.min(len)];
    recv.read_exact(&mut start).await?;
    Ok(FrameHead { len, start })
}

/// The rest of the frame `head` started. Chunks are kept as quinn hands them over (no copy)
/// until the frame is complete, then copied once into a buffer of the frame's size: a peer
/// that announces a large frame and stalls holds what it sent, not what it announced, and a
/// large frame is not copied again each time a growing buffer doubles.
pub async fn read_rest(recv: &mut quinn::RecvStream, head: FrameHead) -> Result<Vec<u8>, FrameError> {
    let FrameHead { len, start } = head;
    let mut chunks = Vec::new();
    let mut got = start.len();
    while got < len {
        match recv.read_chunk(len - got, true).await? {
            Some(chunk) => {
                got = got.saturating_add(chunk.bytes.len());
                chunks.push(chunk.bytes);
            }
            None => return Err(FrameError::Truncated { got, len }),
        }
    }
    let mut body = Vec::with_capacity(len);
    body.extend_from_slice(&start);
    for chunk in &chunks {
        body.extend_from_slice(chunk);
    }
    Ok(body)
}

/// `payload` as the chunks of one frame: its length prefix, then the payload itself, handed to
/// quinn without a copy.
fn frame_chunks(payload: Vec<u8>) -> Result<[Bytes; 2]> {
    let len = u32::try_from(payload.len()).map_err(|_| WireError::TooLarge { len: payload.len() as u64, limit: u64::from(u32::MAX) })?;
    Ok([Bytes::copy_from_slice(&len.to_le_bytes()), Bytes::from(payload)])
}

/// Writes one frame and finishes the sending side.
pub async fn write_frame(send: &mut quinn::SendStream, payload: Vec<u8>) -> Result<()> {
    send.write_all_chunks(&mut frame_chunks(payload)?).await.transport(|| "sending a frame".into())?;
    send.finish().transport(|| "finishing a stream".into())?;
    Ok(())
}

/// Sends `payload` on a new stream and waits for the one-frame answer. A receiver that stops
/// the stream before the whole payload is sent (a server at capacity refuses a request from
/// its first bytes) still answers: that answer is returned.
pub async fn exchange(connection: &quinn::Connection, payload: Vec<u8>, max_frame: u32) -> Result<Vec<u8>> {
    let (mut send, mut recv) = connection.open_bi().await.transport(|| "cannot open a stream".into())?;
    match send.write_all_chunks(&mut frame_chunks(payload)?).await {
        Ok(()) => send.finish().transport(|| "finishing a stream".into())?,
        Err(quinn::WriteError::Stopped(_)) => {}
        Err(e) => return Err(e).transport(|| "sending a frame".into()),
    }
    Ok(read_frame(&mut recv, max_frame).await?)
}

/// Most round trips timed per probe size; the fastest is kept (the others waited behind
/// something on a busy host).
pub const PROBE_ROUNDS: usize = 3;
/// Rounds after the first are timed only while the measurement has taken less than this: on a
/// fast link a scheduler delay is most of a round trip, on a slow one it is lost in the transfer.
pub const REPEAT_WITHIN: Duration = Duration::from_millis(100);

/// Measures the link behind `connection` with pings of two sizes, small and large, timed in
/// turn up to [`PROBE_ROUNDS`] times (within [`REPEAT_WITHIN`]); each size's fastest round trip
/// goes to [`estimate_link`], so one round trip slowed by a busy host does not become the link.
pub async fn measure(connection: &quinn::Connection, probe_bytes: usize, timeout: Duration, max_frame: u32) -> Result<Link> {
    let sizes = [256, probe_bytes.max(4096)];
    let mut fastest = [Probe { bytes: 0, round_trip_ns: u64::MAX }; 2];
    let started = tokio::time::Instant::now();
    for round in 0..PROBE_ROUNDS {
        if round > 0 && started.elapsed() >= REPEAT_WITHIN {
            break;
        }
        for (padding_len, best) in sizes.iter().zip(fastest.iter_mut()) {
            let probe = ping(connection, *padding_len, timeout, max_frame).await?;
            if probe.round_trip_ns < best.round_trip_ns {
                *best = probe;
            }
        }
    }
    let [small, large] = fastest;
    Ok(estimate_link(small, large))
}

/// One ping of `padding_len` bytes of padding, timed from sending to the pong.
async fn ping(connection: &quinn::Connection, padding_len: usize, timeout: Duration, max_frame: u32) -> Result<Probe> {
    let padding = vec![0u8; padding_len];
    let ping = encode(&Body::Ping { nonce: padding_len as u64, padding: &padding })?;
    let bytes = ping.len() as u64;
    let started = tokio::time::Instant::now();
    let answer = tokio::time::timeout(timeout, exchange(connection, ping, max_frame))
        .await
        .map_err(|_| NetError::Timeout("the probe timed out".into()))??;
    let round_trip_ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
    if !matches!(decode(&answer), Ok(Body::Pong { .. })) {
        return Err(NetError::Protocol("the peer did not answer the probe".into()));
    }
    Ok(Probe { bytes, round_trip_ns })
}
