//! A link emulator on a QUIC endpoint's UDP socket, both ways: datagrams to a shaped peer
//! leave after the link's one-way latency, at most at its bandwidth (a FIFO bottleneck that
//! drops what would wait more than a second, like a router's tail drop), and datagrams from it
//! are held back the same way with the figures of the way back. One end emulates the whole
//! link, so the peer needs nothing. Figures can change at run time, so a test or a what-if
//! session can slow a link mid-run.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
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

/// Half of tokio's timer tick (1 ms). A timer fires at the first tick at or after its
/// deadline, so a datagram released by a timer set for its due time would leave 0.5 ms late
/// on average, each way of each hop (a 2-3 ms bias per round trip that no real link has);
/// timers are set half a tick early, and a datagram within half a tick of its due time goes.
const HALF_TICK: Duration = Duration::from_micros(500);

/// One direction of a link: its figures and the time its bottleneck is free again.
#[derive(Debug)]
struct Direction {
    latency_ns: AtomicU64,
    bits_per_sec: AtomicU64,
    next_free: Mutex<Option<Instant>>,
}

impl Direction {
    fn new(link: Link) -> Self {
        Self {
            latency_ns: AtomicU64::new(link.latency_ns),
            bits_per_sec: AtomicU64::new(link.bits_per_sec.max(1)),
            next_free: Mutex::new(None),
        }
    }

    fn set(&self, link: Link) {
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

/// A link's current figures, each way, changeable while it runs.
#[derive(Debug)]
pub struct Shaper {
    /// To the peer.
    out: Direction,
    /// From the peer.
    back: Direction,
}

impl Shaper {
    /// A shaper with `link`'s figures both ways.
    pub fn new(link: Link) -> Arc<Self> {
        Self::both(link, link)
    }

    /// A shaper with `out`'s figures to the peer and `back`'s from it.
    pub fn both(out: Link, back: Link) -> Arc<Self> {
        Arc::new(Self { out: Direction::new(out), back: Direction::new(back) })
    }

    /// Changes the figures both ways; datagrams already queued keep their times.
    pub fn set(&self, link: Link) {
        self.out.set(link);
        self.back.set(link);
    }
}

/// A datagram received from a shaped peer, held until the link would have delivered it.
struct Held {
    due: Instant,
    meta: RecvMeta,
    contents: Vec<u8>,
}

/// The datagrams held back, and the timer that wakes the receiver when the first is due.
struct Inbound {
    held: VecDeque<Held>,
    timer: Pin<Box<tokio::time::Sleep>>,
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
    inbound: Mutex<Inbound>,
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
                tokio::time::sleep_until(d.due - HALF_TICK).await;
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
        let inbound = Mutex::new(Inbound { held: VecDeque::new(), timer: Box::pin(tokio::time::sleep(Duration::ZERO)) });
        Arc::new(Self { inner, shapers, queue, inbound })
    }
}

impl EmulatedSocket {
    /// Hands over the first held datagram if it is due (returns 1); otherwise sets the timer to
    /// wake `cx` when it is.
    fn deliver_due(&self, cx: &mut Context, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta]) -> Option<usize> {
        let mut inbound = self.inbound.lock().ok()?;
        let due = inbound.held.front()?.due;
        let (Some(buf), Some(slot)) = (bufs.first_mut(), meta.first_mut()) else { return None };
        if due > Instant::now() + HALF_TICK {
            inbound.timer.as_mut().reset(due - HALF_TICK);
            // Registers the waker, to be polled again when the timer fires; a timer that fired
            // meanwhile registers none, and the datagram is due now.
            if inbound.timer.as_mut().poll(cx).is_pending() {
                return None;
            }
        }
        let held = inbound.held.pop_front()?;
        let len = held.contents.len().min(buf.len());
        buf.get_mut(..len)?.copy_from_slice(held.contents.get(..len)?);
        *slot = RecvMeta { len, ..held.meta };
        Some(1)
    }

    /// Of the `received` datagrams, holds back those from shaped peers (dropping what their
    /// link's queue would drop) and moves the others to the front; returns how many those are.
    fn hold_shaped(&self, received: usize, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta]) -> usize {
        let mut kept = 0;
        for i in 0..received.min(meta.len()).min(bufs.len()) {
            let m = meta[i];
            let Some(shaper) = self.shapers.get(&m.addr) else {
                if kept != i {
                    let (front, back) = bufs.split_at_mut(i);
                    let len = m.len.min(front[kept].len()).min(back[0].len());
                    front[kept][..len].copy_from_slice(&back[0][..len]);
                    meta[kept] = RecvMeta { len, ..m };
                }
                kept += 1;
                continue;
            };
            let Some(due) = shaper.back.schedule(m.len) else { continue };
            let contents = bufs[i].get(..m.len).unwrap_or(&bufs[i]).to_vec();
            if let Ok(mut inbound) = self.inbound.lock() {
                // Due times rise per peer; datagrams of several peers interleave by them.
                let at = inbound.held.partition_point(|h| h.due <= due);
                inbound.held.insert(at, Held { due, meta: m, contents });
            }
        }
        kept
    }
}

impl AsyncUdpSocket for EmulatedSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        let Some(shaper) = self.shapers.get(&transmit.destination) else { return self.inner.try_send(transmit) };
        let Some(due) = shaper.out.schedule(transmit.contents.len()) else { return Ok(()) };
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
        loop {
            if let Some(delivered) = self.deliver_due(cx, bufs, meta) {
                return Poll::Ready(Ok(delivered));
            }
            let received = match self.inner.poll_recv(cx, bufs, meta) {
                Poll::Ready(Ok(received)) => received,
                other => return other,
            };
            let kept = self.hold_shaped(received, bufs, meta);
            if kept > 0 {
                return Poll::Ready(Ok(kept));
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    fn bind() -> std::net::UdpSocket {
        std::net::UdpSocket::bind("127.0.0.1:0").unwrap()
    }

    /// The next datagram `socket` hands its endpoint: its sender and contents.
    async fn receive(socket: &EmulatedSocket) -> (SocketAddr, Vec<u8>) {
        let mut buf = [0u8; 1500];
        let mut meta = [RecvMeta::default()];
        let received = poll_fn(|cx| socket.poll_recv(cx, &mut [IoSliceMut::new(&mut buf)], &mut meta)).await.unwrap();
        assert_eq!(received, 1);
        (meta[0].addr, buf[..meta[0].len].to_vec())
    }

    #[tokio::test]
    async fn a_shaped_peers_datagrams_arrive_after_the_way_back_and_the_others_at_once() {
        let (far, near, here) = (bind(), bind(), bind());
        let here_addr = here.local_addr().unwrap();
        let out = Link { latency_ns: 0, bits_per_sec: 1_000_000_000 };
        let back = Link { latency_ns: 80_000_000, bits_per_sec: 1_000_000_000 };
        let inner = quinn::default_runtime().unwrap().wrap_udp_socket(here).unwrap();
        let socket = EmulatedSocket::new(inner, HashMap::from([(far.local_addr().unwrap(), Shaper::both(out, back))]));
        let sent = Instant::now();
        far.send_to(b"far", here_addr).unwrap();
        near.send_to(b"near", here_addr).unwrap();
        let first = receive(&socket).await;
        assert_eq!((first.0, first.1.as_slice()), (near.local_addr().unwrap(), &b"near"[..]), "an unshaped peer is not held back");
        assert!(sent.elapsed() < Duration::from_millis(80), "{:?}", sent.elapsed());
        let second = receive(&socket).await;
        assert_eq!(second.1, b"far");
        // Within half a tick of its due time, on the timer's average.
        assert!(sent.elapsed() >= Duration::from_millis(80) - HALF_TICK, "held for the way back's latency: {:?}", sent.elapsed());
    }
}
