//! A link emulator on a QUIC endpoint's UDP socket: datagrams to a shaped destination leave
//! after the link's one-way latency, at most at its bandwidth (a FIFO bottleneck that drops
//! what would wait more than a second, like a router's tail drop). Figures can change at run
//! time, so a test or a what-if session can slow a link mid-run. Only sending is shaped; put
//! the emulator on the side whose uplink is the bottleneck (the device).

use std::collections::HashMap;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use quinn::udp::{EcnCodepoint, RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::sync::mpsc;
use tokio::time::Instant;

use scission_core::link::Link;

/// Longest a datagram may queue behind the bandwidth cap before it is dropped.
const MAX_QUEUE: Duration = Duration::from_secs(1);

/// A link's current figures, changeable while it runs.
#[derive(Debug)]
pub struct Shaper {
    latency_ns: AtomicU64,
    bits_per_sec: AtomicU64,
    next_free: Mutex<Option<Instant>>,
}

impl Shaper {
    /// A shaper with `link`'s figures.
    pub fn new(link: Link) -> Arc<Self> {
        Arc::new(Self {
            latency_ns: AtomicU64::new(link.latency_ns),
            bits_per_sec: AtomicU64::new(link.bits_per_sec.max(1)),
            next_free: Mutex::new(None),
        })
    }

    /// Changes the figures; datagrams already queued keep their times.
    pub fn set(&self, link: Link) {
        self.latency_ns.store(link.latency_ns, Ordering::Relaxed);
        self.bits_per_sec.store(link.bits_per_sec.max(1), Ordering::Relaxed);
    }

    /// When a datagram of `bytes` sent now arrives, or `None` when the queue is full.
    fn schedule(&self, bytes: usize) -> Option<Instant> {
        let now = Instant::now();
        let serialise = Duration::from_nanos((bytes as u64 * 8_000_000_000) / self.bits_per_sec.load(Ordering::Relaxed));
        let mut next_free = self.next_free.lock().ok()?;
        let start = next_free.map_or(now, |t| t.max(now));
        if start.duration_since(now) > MAX_QUEUE {
            return None;
        }
        let done = start + serialise;
        *next_free = Some(done);
        Some(done + Duration::from_nanos(self.latency_ns.load(Ordering::Relaxed)))
    }
}

struct Delayed {
    due: Instant,
    destination: SocketAddr,
    ecn: Option<EcnCodepoint>,
    contents: Vec<u8>,
    segment_size: Option<usize>,
    src_ip: Option<IpAddr>,
}

/// A UDP socket whose sends to some destinations go through shapers.
pub struct EmulatedSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    shapers: HashMap<SocketAddr, Arc<Shaper>>,
    queue: mpsc::UnboundedSender<Delayed>,
}

impl fmt::Debug for EmulatedSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmulatedSocket").field("shaped", &self.shapers.keys().collect::<Vec<_>>()).finish()
    }
}

impl EmulatedSocket {
    /// Wraps `inner`; datagrams to each address in `shapers` are shaped. Must be called inside
    /// a tokio runtime (it starts the task that releases delayed datagrams).
    pub fn new(inner: Arc<dyn AsyncUdpSocket>, shapers: HashMap<SocketAddr, Arc<Shaper>>) -> Arc<Self> {
        let (queue, mut delayed) = mpsc::unbounded_channel::<Delayed>();
        let sender = inner.clone();
        tokio::spawn(async move {
            while let Some(d) = delayed.recv().await {
                tokio::time::sleep_until(d.due).await;
                let transmit = Transmit {
                    destination: d.destination,
                    ecn: d.ecn,
                    contents: &d.contents,
                    segment_size: d.segment_size,
                    src_ip: d.src_ip,
                };
                // A full socket buffer loses the datagram, as a congested link would.
                let _ = sender.try_send(&transmit);
            }
        });
        Arc::new(Self { inner, shapers, queue })
    }
}

impl AsyncUdpSocket for EmulatedSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        let Some(shaper) = self.shapers.get(&transmit.destination) else { return self.inner.try_send(transmit) };
        let Some(due) = shaper.schedule(transmit.contents.len()) else { return Ok(()) };
        let delayed = Delayed {
            due,
            destination: transmit.destination,
            ecn: transmit.ecn,
            contents: transmit.contents.to_vec(),
            segment_size: transmit.segment_size,
            src_ip: transmit.src_ip,
        };
        // After shutdown the releasing task is gone; the datagram is lost like any other.
        let _ = self.queue.send(delayed);
        Ok(())
    }

    fn poll_recv(&self, cx: &mut Context, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta]) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}
