//! Protocol messages. Each travels as one postcard-encoded [`Envelope`] that starts with the
//! protocol version; decoding validates every bound and every tensor before anyone uses it.

use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

use super::WireError;
use super::tensor::TensorFrame;
use crate::link::{Encoding, Link};

/// Version of this protocol; a peer with another version is refused.
pub const PROTOCOL_VERSION: u16 = 5;
/// ALPN token naming the protocol version in the TLS handshake.
pub const ALPN: &[u8] = b"scission/5";
/// Most tensors one message may carry.
pub const MAX_TENSORS: usize = 16;
/// Most stages a route may have.
pub const MAX_STAGES: usize = 8;
/// Longest error text.
pub const MAX_TEXT: usize = 256;

/// Which machine of a tier runs a stage: [`CONFIGURED`], or an id from the planner's directory
/// ([`MachineEntry`]).
pub type MachineId = u8;

/// The tier's configured server: the device's `--edge` or `--cloud`, an edge's `--cloud`.
pub const CONFIGURED: MachineId = 0;

/// One stage of a route: the tier and machine that run it, and its node range `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Hash, Eq, Serialize, Deserialize)]
pub struct Stage {
    /// Tier index in the chain (0 = device).
    pub tier: u8,
    /// The machine of that tier: [`CONFIGURED`], or a registered machine's directory id.
    pub machine: MachineId,
    /// First node position.
    pub start: u32,
    /// One past the last node position.
    pub end: u32,
}

impl Stage {
    /// Its node range.
    pub fn block(&self) -> crate::cut::Block {
        crate::cut::Block { start: self.start as usize, end: self.end as usize }
    }
}

/// A tensor tagged with the id of the graph tensor it carries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NamedTensor<'a> {
    /// Tensor id in the model's graph summary.
    pub id: u32,
    /// The tensor.
    #[serde(borrow)]
    pub tensor: TensorFrame<'a>,
}

/// Flag of a [`Stage::server`] key that stands for a registered machine (its id in the low
/// bits) rather than a tier's configured server (the tier index itself).
pub const REGISTERED_SERVER: u8 = 0x80;

impl Stage {
    /// The server that runs this stage, as one key: a tier's configured server is the tier's
    /// index (0 the device), a registered machine [`REGISTERED_SERVER`] plus its id. The
    /// device's policy tracks servers by this key, so a failed machine is avoided, not its tier.
    pub fn server(&self) -> u8 {
        server_key(self.tier, self.machine)
    }
}

/// A [`Stage::server`] key in words: `tier 2`, or `machine 3` for a registered machine.
pub fn describe_server(key: u8) -> alloc::string::String {
    match key & REGISTERED_SERVER {
        0 => alloc::format!("tier {key}"),
        _ => alloc::format!("machine {}", key & !REGISTERED_SERVER),
    }
}

/// Server keys in words, comma-separated (`tier 1, machine 3`), as [`describe_server`] says
/// each.
pub fn describe_servers(keys: &[u8]) -> alloc::string::String {
    keys.iter().map(|&k| describe_server(k)).collect::<alloc::vec::Vec<_>>().join(", ")
}

/// The [`Stage::server`] key of `machine` of `tier`.
pub fn server_key(tier: u8, machine: MachineId) -> u8 {
    if machine == CONFIGURED { tier } else { REGISTERED_SERVER | machine }
}

/// What one stage took, reported back with the result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageTiming {
    /// Tier index.
    pub tier: u8,
    /// The machine that ran it, as the route named it.
    pub machine: MachineId,
    /// Nanoseconds of compute.
    pub compute_ns: u64,
    /// Nanoseconds this tier held the request: from the moment it had the request's bytes to
    /// the moment its answer was ready, so its decoding, its compute and everything after it
    /// on the route. The device tells each hop's cost from these
    /// ([`measured_hops`](crate::policy::measured_hops)); 0 for the device's own stage.
    pub held_ns: u64,
}

/// How loaded a server is, as it reports with its registration heartbeat: the planner turns
/// it into the queueing delay a new request should expect there ([`Load::expected_wait_ns`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Load {
    /// Inferences waiting for a worker.
    pub queued: u32,
    /// Inferences running.
    pub running: u32,
    /// Workers (inferences run at once).
    pub workers: u32,
    /// Recent time one inference holds a worker, nanoseconds (a running average).
    pub service_ns: u64,
}

/// Longest queueing delay a load report can stand for: one hour (absurd reports are capped).
pub const MAX_WAIT_NS: u64 = 3_600_000_000_000;

impl Load {
    /// Expected wait before a new request gets a worker: every request ahead of it beyond the
    /// free workers takes `service_ns / workers` of the pool's time. At most [`MAX_WAIT_NS`].
    pub fn expected_wait_ns(&self) -> u64 {
        let workers = u64::from(self.workers.max(1));
        let busy = u64::from(self.queued).saturating_add(u64::from(self.running));
        let ahead = busy.saturating_add(1).saturating_sub(workers);
        let wait = u128::from(ahead) * u128::from(self.service_ns) / u128::from(workers);
        u64::try_from(wait).unwrap_or(u64::MAX).min(MAX_WAIT_NS)
    }
}

/// Why a request failed: the kind a peer acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureCode {
    /// The request itself is invalid (bad frame, wrong tensors, unknown model).
    BadRequest,
    /// The request is larger than the receiver accepts.
    TooLarge,
    /// The next tier could not be reached or failed.
    Unreachable,
    /// Running the slice failed.
    Engine,
    /// No plan satisfies the request's constraints.
    Infeasible,
    /// The sender's role may not ask this, or this node does not offer it.
    Forbidden,
    /// The receiver is at capacity; try again later or elsewhere (back-pressure, not death).
    Busy,
    /// The request's deadline passed before a tier on the route could answer (it waited too
    /// long for a worker, or for the next tier): the tier is overloaded now, not down.
    Expired,
}

/// Most constraint groups an infeasible answer names.
pub const MAX_CULPRITS: usize = 8;

/// What a failure is about, as data (the message is for people).
// Its capacities are inline (heapless) on purpose: a message decodes into bounded, fixed
// storage, so a hostile peer cannot make a receiver allocate; the largest variant sets the size.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureDetail {
    /// Nothing beyond the code.
    #[default]
    None,
    /// This tier of the route could not be reached.
    Unreachable {
        /// The tier.
        tier: u8,
        /// Its machine, as the route named it.
        machine: MachineId,
    },
    /// No plan satisfies the constraints; relaxing any one of these groups alone would allow
    /// one (none listed: several conflict together).
    Infeasible {
        /// The constraint groups.
        culprits: heapless::Vec<heapless::String<MAX_NAME>, MAX_CULPRITS>,
    },
    /// A frame was larger than the receiver accepts.
    TooLarge {
        /// Announced length.
        len: u64,
        /// The receiver's limit.
        limit: u64,
    },
    /// This tier is at capacity.
    Busy {
        /// The tier.
        tier: u8,
        /// Its machine, as the route named it.
        machine: MachineId,
    },
    /// This tier could not answer within the request's deadline.
    Expired {
        /// The tier.
        tier: u8,
        /// Its machine, as the route named it.
        machine: MachineId,
    },
}

/// `text` cut to fit the wire's [`MAX_TEXT`] (at a character boundary), for failure messages.
pub fn failure_text(text: &str) -> heapless::String<MAX_TEXT> {
    bounded_text(text)
}

/// `text` cut to fit `N` bytes, at a character boundary.
pub fn bounded_text<const N: usize>(text: &str) -> heapless::String<N> {
    let mut out = heapless::String::new();
    for c in text.chars() {
        if out.push(c).is_err() {
            break;
        }
    }
    out
}

/// One ranked route the cloud's solver hands out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedRoute {
    /// The stages, in tier order.
    pub stages: heapless::Vec<Stage, MAX_STAGES>,
    /// Predicted end-to-end latency, nanoseconds.
    pub predicted_ns: u64,
}

/// Most routes in one plan answer.
pub const MAX_ROUTES: usize = 16;
/// Longest node name.
pub const MAX_NAME: usize = 64;
/// Longest advertised address (`HOST:PORT`).
pub const MAX_ADDR: usize = 96;
/// Most machines in the planner's directory.
pub const MAX_DIRECTORY: usize = 32;

/// A registered machine, as the planner's directory lists it: routes name it by `id`, and
/// peers reach it at `addr` and check that its certificate carries `name`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineEntry<'a> {
    /// Its id in routes (never [`CONFIGURED`]).
    pub id: MachineId,
    /// Its tier.
    pub tier: u8,
    /// Its enrolled name.
    pub name: &'a str,
    /// Where it listens, `HOST:PORT`.
    pub addr: &'a str,
}

/// What a message says.
// Inline capacities on purpose, as in [`FailureDetail`].
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Body<'a> {
    /// Run the remaining `stages` (the first is the receiver's) on `tensors`, forward the rest,
    /// and answer with [`Body::Output`] or [`Body::Failure`].
    Infer {
        /// Request id, chosen by the device.
        request: u64,
        /// SHA-256 of the model's ONNX file.
        model: [u8; 32],
        /// Stages still to run, in order.
        stages: heapless::Vec<Stage, MAX_STAGES>,
        /// Encoding for activations sent onward.
        encoding: Encoding,
        /// The activations crossing into the first remaining stage.
        #[serde(borrow)]
        tensors: heapless::Vec<NamedTensor<'a>, MAX_TENSORS>,
        /// Milliseconds, from its arrival, within which the receiver must answer (the answer of
        /// the rest of the route included), or fail it `Expired` rather than keep it queued;
        /// 0: no deadline. A server forwards what is left of it.
        deadline_ms: u32,
    },
    /// The model's outputs.
    Output {
        /// Request id.
        request: u64,
        /// Graph outputs.
        #[serde(borrow)]
        tensors: heapless::Vec<NamedTensor<'a>, MAX_TENSORS>,
        /// Compute time per stage run after the sender's.
        timings: heapless::Vec<StageTiming, MAX_STAGES>,
    },
    /// The request failed; nothing else will come for it.
    Failure {
        /// Request id.
        request: u64,
        /// Category.
        code: FailureCode,
        /// Human-readable reason.
        message: heapless::String<MAX_TEXT>,
        /// The failure as data.
        detail: FailureDetail,
    },
    /// Liveness and round-trip probe.
    Ping {
        /// Echoed back.
        nonce: u64,
        /// Padding bytes, to probe bandwidth.
        #[serde(borrow, serialize_with = "super::serialize_bytes")]
        padding: &'a [u8],
    },
    /// Answer to [`Body::Ping`].
    Pong {
        /// The ping's nonce.
        nonce: u64,
    },
    /// A node announces itself to the cloud: its benchmark profile (JSON) and its measured
    /// link to the cloud.
    Register {
        /// Enrolled name.
        name: heapless::String<MAX_NAME>,
        /// Tier index.
        tier: u8,
        /// Profile JSON, as written by `bench`.
        #[serde(borrow, serialize_with = "super::serialize_bytes")]
        profile: &'a [u8],
        /// Measured link from this node to the cloud.
        link_to_cloud: Option<Link>,
        /// Its load now (renewals are heartbeats).
        load: Load,
        /// Where peers reach it, `HOST:PORT`; an unspecified host (`0.0.0.0`) stands for the
        /// address the registration came from.
        addr: heapless::String<MAX_ADDR>,
    },
    /// The cloud's answer to [`Body::Register`]: the id routes name the machine by, and the
    /// directory it forwards by.
    Registered {
        /// Its id.
        id: MachineId,
        /// Every registered machine.
        #[serde(borrow)]
        machines: heapless::Vec<MachineEntry<'a>, MAX_DIRECTORY>,
    },
    /// A device asks the cloud for ranked plans.
    PlanRequest {
        /// The device's profile JSON.
        #[serde(borrow, serialize_with = "super::serialize_bytes")]
        profile: &'a [u8],
        /// Measured links from the device to tier `t`.
        uplinks: heapless::Vec<(u8, Link), 4>,
        /// How many plans to return.
        count: u16,
        /// Tiers the plans must not use (found unreachable).
        avoid: heapless::Vec<u8, MAX_STAGES>,
        /// Registered machines (directory ids) the plans must not use (found unreachable).
        avoid_machines: heapless::Vec<MachineId, MAX_DIRECTORY>,
        /// Bytes the device may use, when it knows: plans whose device slice would need more
        /// are left out.
        device_memory: Option<u64>,
    },
    /// Ranked plans, best first, and the machines they name.
    Plans {
        /// The routes.
        routes: heapless::Vec<PlannedRoute, MAX_ROUTES>,
        /// The registered machines (every id a route names is here).
        #[serde(borrow)]
        machines: heapless::Vec<MachineEntry<'a>, MAX_DIRECTORY>,
    },
    /// Asks for a piece of the model file the receiver serves.
    FetchModel {
        /// First byte wanted.
        offset: u64,
        /// Most bytes wanted.
        max_len: u32,
    },
    /// A piece of the file asked for (the model file, or a slice artifact).
    ModelChunk {
        /// Size of the whole file.
        total: u64,
        /// SHA-256 of the whole file.
        sha256: [u8; 32],
        /// Where this piece starts.
        offset: u64,
        /// The bytes.
        #[serde(borrow, serialize_with = "super::serialize_bytes")]
        data: &'a [u8],
    },
    /// Asks for a piece of the slice artifact of node range `[start, end)` of the model the
    /// receiver serves (answered with [`Body::ModelChunk`]s of that artifact).
    FetchSlice {
        /// First node position.
        start: u32,
        /// One past the last node position.
        end: u32,
        /// First byte wanted.
        offset: u64,
        /// Most bytes wanted.
        max_len: u32,
    },
}

/// A versioned message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope<'a> {
    /// [`PROTOCOL_VERSION`] of the sender.
    pub version: u16,
    /// The message.
    #[serde(borrow)]
    pub body: Body<'a>,
}

/// Encodes a message body with the current version, into one allocation of the exact size
/// (a large tensor is copied once, not again each time a growing buffer doubles).
pub fn encode(body: &Body<'_>) -> Result<Vec<u8>, WireError> {
    let envelope = Envelope { version: PROTOCOL_VERSION, body: body.clone() };
    let size = postcard::experimental::serialized_size(&envelope).map_err(|_| WireError::Malformed("cannot encode"))?;
    postcard::serialize_with_flavor(&envelope, Appending(Vec::with_capacity(size))).map_err(|_| WireError::Malformed("cannot encode"))
}

/// postcard's output into a `Vec` that appends byte runs as one copy: postcard's own
/// `to_extend` feeds a run in byte by byte (a third of a 4 MB hop's encoding time).
struct Appending(Vec<u8>);

impl postcard::ser_flavors::Flavor for Appending {
    type Output = Vec<u8>;

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<Vec<u8>> {
        Ok(self.0)
    }
}

/// Decodes and validates a message; tensor payloads borrow from `bytes`.
pub fn decode(bytes: &[u8]) -> Result<Body<'_>, WireError> {
    let version = postcard::take_from_bytes::<u16>(bytes).map_err(|_| WireError::Malformed("no version"))?.0;
    if version != PROTOCOL_VERSION {
        return Err(WireError::Version { got: version, expected: PROTOCOL_VERSION });
    }
    let (envelope, rest) = postcard::take_from_bytes::<Envelope<'_>>(bytes).map_err(|_| WireError::Malformed("not a protocol message"))?;
    if !rest.is_empty() {
        return Err(WireError::Malformed("trailing bytes after the message"));
    }
    validate(&envelope.body)?;
    Ok(envelope.body)
}

/// Bytes of a message's start that [`peek_infer`] needs at most.
pub const PEEK_BYTES: usize = 3 + 5 + 10;

/// The request id of an [`Body::Infer`] of this protocol version, read from the first bytes of
/// its encoding (at least [`PEEK_BYTES`], or the whole message), before the rest has arrived:
/// a server at capacity refuses it without receiving its tensors. `None` for any other message,
/// another version, or bytes that are not a message's start.
pub fn peek_infer(prefix: &[u8]) -> Option<u64> {
    let mut at = 0;
    let version = varint(prefix, &mut at)?;
    let variant = varint(prefix, &mut at)?;
    (version == u64::from(PROTOCOL_VERSION) && variant == 0).then_some(())?;
    varint(prefix, &mut at)
}

/// An unsigned LEB128 varint (postcard's integers) at `*at`, moving `*at` past it.
fn varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f).checked_shl(shift)?;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// A directory's entries: bounded names and addresses, unique ids from 1 to 127.
fn validate_directory(machines: &[MachineEntry<'_>]) -> Result<(), WireError> {
    for (i, m) in machines.iter().enumerate() {
        // Ids stay below REGISTERED_SERVER, so every machine has a server key of its own.
        if m.id == CONFIGURED || m.id >= REGISTERED_SERVER || m.name.is_empty() || m.name.len() > MAX_NAME || m.addr.len() > MAX_ADDR {
            return Err(WireError::Malformed("a directory entry has a reserved id, or a name or address out of bounds"));
        }
        if machines[..i].iter().any(|o| o.id == m.id || o.name == m.name) {
            return Err(WireError::Malformed("two directory entries share an id or a name"));
        }
    }
    Ok(())
}

fn validate(body: &Body<'_>) -> Result<(), WireError> {
    match body {
        Body::Infer { stages, tensors, .. } => {
            if stages.is_empty() {
                return Err(WireError::Malformed("a request with no stage"));
            }
            let ordered =
                stages.iter().all(|s| s.start < s.end) && stages.windows(2).all(|w| w[0].end == w[1].start && w[0].tier < w[1].tier);
            if !ordered {
                return Err(WireError::Malformed("stages are not consecutive, non-empty and in tier order"));
            }
            tensors.iter().try_for_each(|t| t.tensor.validate())
        }
        Body::Output { tensors, .. } => tensors.iter().try_for_each(|t| t.tensor.validate()),
        Body::Plans { routes, machines } => {
            validate_directory(machines)?;
            let ordered = routes.iter().all(|r| {
                !r.stages.is_empty()
                    && r.stages.iter().all(|s| s.start < s.end)
                    && r.stages.windows(2).all(|w| w[0].end == w[1].start && w[0].tier < w[1].tier)
            });
            if !ordered {
                return Err(WireError::Malformed("a planned route is not consecutive and in tier order"));
            }
            let listed = |s: &Stage| s.machine == CONFIGURED || machines.iter().any(|m| m.id == s.machine && m.tier == s.tier);
            match routes.iter().all(|r| r.stages.iter().all(listed)) {
                true => Ok(()),
                false => Err(WireError::Malformed("a planned route names a machine the directory does not list on that tier")),
            }
        }
        Body::Registered { machines, .. } => validate_directory(machines),
        Body::ModelChunk { total, offset, data, .. } => {
            let end = offset.checked_add(data.len() as u64);
            if end.is_some_and(|e| e <= *total) { Ok(()) } else { Err(WireError::Malformed("model chunk outside the file")) }
        }
        Body::FetchSlice { start, end, .. } if start >= end => Err(WireError::Malformed("an empty or reversed slice range")),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::tensor::{Elements, encode_f32};

    #[test]
    fn server_keys_read_as_tiers_and_machines() {
        assert_eq!(describe_servers(&[1, server_key(1, 3)]), "tier 1, machine 3");
        assert_eq!(describe_servers(&[]), "");
    }

    fn request(data: &[u8]) -> Body<'_> {
        let tensor = TensorFrame { elements: Elements::F32, shape: [2, 3].into_iter().collect(), data };
        Body::Infer {
            request: 7,
            model: [9; 32],
            stages: [Stage { tier: 1, machine: 0, start: 3, end: 10 }, Stage { tier: 2, machine: 0, start: 10, end: 12 }]
                .into_iter()
                .collect(),
            encoding: Encoding::F16,
            tensors: [NamedTensor { id: 4, tensor }].into_iter().collect(),
            deadline_ms: 2_000,
        }
    }

    #[test]
    fn expected_wait_counts_the_requests_ahead_beyond_the_free_workers() {
        let load = |queued, running| Load { queued, running, workers: 2, service_ns: 100 }.expected_wait_ns();
        assert_eq!(load(0, 0), 0, "idle");
        assert_eq!(load(0, 1), 0, "a worker is free");
        assert_eq!(load(0, 2), 50, "both busy: half a service time on average");
        assert_eq!(load(6, 2), 350);
        let absurd = Load { queued: u32::MAX, running: u32::MAX, workers: 0, service_ns: u64::MAX };
        assert_eq!(absurd.expected_wait_ns(), MAX_WAIT_NS, "an absurd report is capped, not overflowed");
    }

    #[test]
    fn a_directory_and_the_routes_that_name_it_are_checked_on_decode() {
        let entry = |id, name| MachineEntry { id, tier: 1, name, addr: "127.0.0.1:4434" };
        let route = |machine| PlannedRoute {
            stages: [Stage { tier: 0, machine: 0, start: 0, end: 2 }, Stage { tier: 1, machine, start: 2, end: 5 }].into_iter().collect(),
            predicted_ns: 1,
        };
        let plans = |machine, machines: &[MachineEntry<'static>]| {
            encode(&Body::Plans { routes: [route(machine)].into_iter().collect(), machines: machines.iter().cloned().collect() }).unwrap()
        };
        assert!(decode(&plans(3, &[entry(3, "edge-b")])).is_ok());
        assert!(decode(&plans(0, &[])).is_ok(), "the configured server needs no entry");
        assert!(decode(&plans(4, &[entry(3, "edge-b")])).is_err(), "a machine the directory does not list");
        assert!(decode(&plans(3, &[entry(3, "edge-b"), entry(3, "edge-c")])).is_err(), "two entries with one id");
        assert!(decode(&plans(3, &[entry(3, "edge-b"), entry(4, "edge-b")])).is_err(), "two entries with one name");
        assert!(decode(&plans(0, &[entry(0x80, "edge-b")])).is_err(), "an id that would share a server key");
        assert!(decode(&plans(0, &[entry(0, "edge-b")])).is_err(), "the configured id is not listed");
    }

    #[test]
    fn an_infer_request_is_recognised_from_its_first_bytes() {
        let (_, data) = encode_f32(&[1.0; 6], Encoding::F32);
        for id in [0, 7, 300, u64::MAX] {
            let Body::Infer { model, stages, encoding, tensors, deadline_ms, .. } = request(&data) else { unreachable!() };
            let bytes = encode(&Body::Infer { request: id, model, stages, encoding, tensors, deadline_ms }).unwrap();
            assert_eq!(peek_infer(&bytes[..PEEK_BYTES.min(bytes.len())]), Some(id), "request {id}");
        }
        assert_eq!(peek_infer(&encode(&Body::Ping { nonce: 1, padding: &[] }).unwrap()), None, "not an inference");
        let future = postcard::to_allocvec(&Envelope { version: 99, body: request(&data) }).unwrap();
        assert_eq!(peek_infer(&future[..PEEK_BYTES]), None, "another version");
        assert_eq!(peek_infer(&[0x83]), None, "cut short");
        assert_eq!(peek_infer(&[0xff; 32]), None, "a varint longer than 64 bits");
    }

    #[test]
    fn round_trip_borrows_the_payload() {
        let (_, data) = encode_f32(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], Encoding::F32);
        let bytes = encode(&request(&data)).unwrap();
        let body = decode(&bytes).unwrap();
        assert_eq!(body, request(&data));
        let Body::Infer { tensors, .. } = body else { unreachable!() };
        let payload = tensors[0].tensor.data;
        let inside = bytes.as_ptr_range();
        assert!(inside.contains(&payload.as_ptr()), "decoding copies nothing");
        // Overhead beyond the payload: a few bytes of header.
        assert!(bytes.len() - data.len() < 64, "{} bytes of overhead", bytes.len() - data.len());
    }

    #[test]
    fn rejects_bad_messages() {
        let (_, data) = encode_f32(&[1.0; 6], Encoding::F32);
        let mut bytes = encode(&request(&data)).unwrap();
        assert!(decode(&bytes[..bytes.len() - 1]).is_err(), "truncated");
        bytes.push(0);
        assert_eq!(decode(&bytes), Err(WireError::Malformed("trailing bytes after the message")));
        let short = encode(&request(&data[..20])).unwrap();
        assert_eq!(decode(&short), Err(WireError::PayloadSize { got: 20, expected: 24 }));
        let future = postcard::to_allocvec(&Envelope { version: 99, body: Body::Pong { nonce: 1 } }).unwrap();
        assert_eq!(decode(&future), Err(WireError::Version { got: 99, expected: PROTOCOL_VERSION }));
        let Body::Infer { request, model, tensors, .. } = request(&data) else { unreachable!() };
        let backwards = Body::Infer {
            request,
            model,
            stages: [Stage { tier: 2, machine: 0, start: 3, end: 4 }, Stage { tier: 1, machine: 0, start: 4, end: 5 }]
                .into_iter()
                .collect(),
            encoding: Encoding::F32,
            tensors,
            deadline_ms: 0,
        };
        assert!(decode(&encode(&backwards).unwrap()).is_err());
    }
}
