//! What a server takes on at once: its limits, and the counted slots (queued bytes, connections,
//! each node's connections) that hold them while a request or a connection lives.

use super::*;

/// Registrations and plan requests worked on at once; more are answered `Busy`.
pub(super) const PLANNING_AT_ONCE: usize = 2;

/// Most bytes of the model file sent in one chunk, whatever the reader asks for.
pub const MAX_CHUNK: u32 = 4 << 20;

/// How much a server takes on at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame accepted.
    pub max_frame: u32,
    /// Inferences running at once (each on a blocking thread).
    pub workers: usize,
    /// Inferences waiting for a worker when the request carries no deadline, or before this
    /// server has timed one (see [`StageServer`]'s admission); one more is answered `Busy`.
    pub queue: usize,
    /// Whether `queue` bounds every request, deadline or not (the operator set it).
    pub queue_is_cap: bool,
    /// Bytes the admitted inferences' tensors may hold together (as decoded: 4 bytes an
    /// element, or the payload where larger); a request that would go past it is `Busy`.
    pub queue_bytes: u64,
    /// Connections open at once; more are refused.
    pub connections: usize,
    /// Connections one peer (one certificate) may hold at once; more are closed.
    pub per_peer: usize,
    /// Time a peer has to deliver a whole request frame once it opened the stream, and to read
    /// its answer.
    pub read_deadline: Duration,
    /// Time the next tier has to answer a forwarded request; then it counts as unreachable (keep
    /// it below the devices' own timeout, so they blame the right tier).
    pub forward_timeout: Duration,
    /// Streams one connection may have open at once (QUIC flow control: more wait).
    pub streams_per_connection: u32,
    /// Slices kept built at once (least recently used dropped first).
    pub slice_cache: usize,
    /// Bytes this server may use in all (`None`: what the machine or its cgroup has available
    /// at start); what is left for built slices is [`serve`](crate::serve::serve)'s to work out.
    pub memory: Option<u64>,
    /// Edges the cloud's planner keeps registered at once.
    pub registrations: usize,
    /// A registration not renewed within this long is forgotten.
    pub registration_ttl: Duration,
    /// Dynamic batching: most requests per batch (1: off) and how long a request waits for
    /// others. Each worker may hold a whole batch, so admission allows `workers × max` running.
    pub batch: BatchWindow,
}

/// Default [`Limits::queue_bytes`]: 128 MiB of queued tensors (about 200 MobileNetV2 or ResNet50
/// inputs).
pub const DEFAULT_QUEUE_BYTES: u64 = 128 << 20;

/// Most inferences admitted at once, whatever their deadlines allow: a bound on the tasks a
/// flood of small requests can hold.
pub const MAX_ADMITTED: usize = 4096;

/// Batching off: every request runs alone.
pub const NO_BATCHING: BatchWindow = BatchWindow { max: 1, delay_ns: 0 };

impl Limits {
    /// Defaults for a machine with `cores` cores: a worker per core, four waiting per worker.
    pub fn for_cores(cores: usize, max_frame: u32) -> Self {
        let workers = cores.max(1);
        Self {
            max_frame,
            workers,
            queue: workers.saturating_mul(4),
            queue_is_cap: false,
            queue_bytes: DEFAULT_QUEUE_BYTES,
            connections: 256,
            per_peer: 8,
            read_deadline: Duration::from_secs(30),
            forward_timeout: Duration::from_secs(4),
            streams_per_connection: scission_net::quic::MAX_STREAMS,
            slice_cache: crate::node::MAX_CACHED_SLICES,
            memory: None,
            registrations: crate::planner::MAX_REGISTERED,
            registration_ttl: crate::planner::REGISTRATION_TTL,
            batch: NO_BATCHING,
        }
    }
}

/// An admitted inference's share of the queue's bytes, given back when dropped.
pub(super) struct QueuedBytes {
    count: Arc<AtomicU64>,
    bytes: u64,
    /// The queue's bytes with these, when they were taken.
    pub(super) total: u64,
}

impl QueuedBytes {
    pub(super) fn take(count: &Arc<AtomicU64>, bytes: u64) -> Self {
        let before = count.fetch_add(bytes, Ordering::SeqCst);
        Self { count: count.clone(), bytes, total: before.saturating_add(bytes) }
    }
}

impl Drop for QueuedBytes {
    fn drop(&mut self) {
        self.count.fetch_sub(self.bytes, Ordering::SeqCst);
    }
}

/// One open connection, counted while it lives.
pub(super) struct ConnectionSlot(Arc<AtomicUsize>);

impl ConnectionSlot {
    pub(super) fn take(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count.clone())
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The connections each node (by its certificate) holds, oldest first, by id.
pub(super) type NodeConnections<C> = Arc<std::sync::Mutex<std::collections::HashMap<Vec<u8>, std::collections::VecDeque<(usize, C)>>>>;

/// One of a node's connections, listed while it lives.
pub(super) struct PeerSlot<C> {
    table: NodeConnections<C>,
    peer: Vec<u8>,
    id: usize,
}

impl<C: Clone> PeerSlot<C> {
    /// Lists `connection` (id `id`) among `peer`'s; when the node holds `limit` already, its
    /// oldest connection leaves the list and is returned for the caller to close: a node over
    /// its limit most often restarted and left connections behind, and the newest is the one it
    /// uses. `None` only when the table's lock is poisoned.
    pub(super) fn take(table: &NodeConnections<C>, peer: &[u8], id: usize, connection: &C, limit: usize) -> Option<(Self, Option<C>)> {
        let mut map = table.lock().ok()?;
        let held = map.entry(peer.to_vec()).or_default();
        let replaced = if held.len() >= limit.max(1) { held.pop_front().map(|(_, c)| c) } else { None };
        held.push_back((id, connection.clone()));
        Some((Self { table: table.clone(), peer: peer.to_vec(), id }, replaced))
    }
}

impl<C> Drop for PeerSlot<C> {
    fn drop(&mut self) {
        if let Ok(mut map) = self.table.lock()
            && let Some(held) = map.get_mut(&self.peer)
        {
            held.retain(|(id, _)| *id != self.id);
            if held.is_empty() {
                map.remove(&self.peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_over_its_limit_gives_up_its_oldest_connection_and_gets_slots_back_when_they_close() {
        let table: NodeConnections<&str> = Arc::default();
        let take = |peer: &[u8], id: usize, name: &'static str| PeerSlot::take(&table, peer, id, &name, 3).unwrap();
        let mut held: Vec<PeerSlot<&str>> = Vec::new();
        for (id, name) in [(1, "first"), (2, "second"), (3, "third")] {
            let (slot, replaced) = take(b"a", id, name);
            assert_eq!(replaced, None);
            held.push(slot);
        }
        let (fourth, replaced) = take(b"a", 4, "fourth");
        assert_eq!(replaced, Some("first"), "the oldest makes room");
        assert_eq!(take(b"b", 5, "other").1, None, "another node is not touched");
        // The replaced connection's slot goes when its tasks end; the others stay listed.
        held.remove(0);
        assert_eq!(table.lock().unwrap()[&b"a".to_vec()].len(), 3);
        drop((held, fourth));
        assert!(!table.lock().unwrap().contains_key(&b"a".to_vec()), "an empty node leaves the table");
    }
}
