//! Why a stage request failed, as the server tells its peer, and a request's deadline.

use super::*;

/// Why a stage request failed, as the server tells the peer.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// The request is malformed or inconsistent with this node.
    #[error("{0}")]
    BadRequest(String),
    /// A frame was over the limit.
    #[error("frame of {len} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Announced length.
        len: u64,
        /// The limit.
        limit: u64,
    },
    /// The next tier on the route could not be reached.
    #[error("tier {tier} is unreachable: {reason}")]
    Unreachable {
        /// The tier.
        tier: u8,
        /// Its machine, as the route named it.
        machine: MachineId,
        /// What happened.
        reason: String,
    },
    /// Running the slice failed.
    #[error("engine: {0}")]
    Engine(String),
    /// Planning failed.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// This node does not offer what was asked.
    #[error("this node does not {0}")]
    NotOffered(&'static str),
    /// The request cannot be taken on: its deadline would pass before a worker is free, or the
    /// queue is full (in requests or in bytes).
    #[error("tier {tier} is busy: {waiting} inferences are waiting{}", expected_wait(*wait_ms))]
    Busy {
        /// This node's tier.
        tier: u8,
        /// This node, as the route named it.
        machine: MachineId,
        /// Inferences queued or running.
        waiting: usize,
        /// The expected time to answer (the wait for a worker and the run), in milliseconds (0:
        /// not why it was refused).
        wait_ms: u64,
    },
    /// The peer's role may not ask this.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// Building the stage's slice would take more than this server's memory budget for slices.
    #[error("{message}")]
    OverMemory {
        /// The node's words ([`RuntimeError::OverMemory`](crate::error::RuntimeError)).
        message: String,
        /// Bytes building the slice holds.
        need: u64,
        /// The budget for built slices.
        budget: u64,
    },
    /// The request's deadline passed before this tier (or the next) could answer.
    #[error("tier {tier} could not answer within the request's deadline of {deadline_ms} ms ({waiting_for})")]
    Expired {
        /// The tier that gave up.
        tier: u8,
        /// Its machine, as the route named it.
        machine: MachineId,
        /// The deadline the request carried.
        deadline_ms: u32,
        /// What it was waiting for.
        waiting_for: &'static str,
    },
}

/// The end of a busy refusal's message: the expected time to answer, where that was the reason.
pub(super) fn expected_wait(wait_ms: u64) -> String {
    match wait_ms {
        0 => String::new(),
        ms => format!("; it would be answered in about {ms} ms, past the request's deadline"),
    }
}

/// When a request must be answered: its arrival plus the deadline it carried.
#[derive(Clone, Copy, Debug)]
pub(super) struct Deadline {
    pub(super) at: Instant,
    pub(super) ms: u32,
}

impl Deadline {
    /// The deadline of a request that arrived now carrying `ms` (0: none).
    pub(super) fn from_arrival(ms: u32) -> Option<Self> {
        (ms > 0).then(|| Self { at: Instant::now() + Duration::from_millis(u64::from(ms)), ms })
    }

    /// What is left of it, in whole milliseconds (0 once passed).
    pub(super) fn remaining_ms(&self) -> u32 {
        u32::try_from(self.at.saturating_duration_since(Instant::now()).as_millis()).unwrap_or(u32::MAX)
    }
}

impl StageError {
    pub(super) fn engine(e: impl std::fmt::Display) -> Self {
        Self::Engine(e.to_string())
    }

    /// A failure of the node running a stage: over its memory budget, or the engine's.
    pub(super) fn from_node(e: crate::error::RuntimeError) -> Self {
        match e {
            crate::error::RuntimeError::OverMemory { need, budget, .. } => Self::OverMemory { message: e.to_string(), need, budget },
            e => Self::Engine(format!("{e:#}")),
        }
    }

    fn code(&self) -> FailureCode {
        match self {
            Self::BadRequest(_) => FailureCode::BadRequest,
            Self::TooLarge { .. } | Self::OverMemory { .. } => FailureCode::TooLarge,
            Self::Unreachable { .. } => FailureCode::Unreachable,
            Self::Engine(_) => FailureCode::Engine,
            Self::Plan(PlanError::Infeasible { .. }) => FailureCode::Infeasible,
            Self::Plan(_) => FailureCode::BadRequest,
            Self::NotOffered(_) | Self::Forbidden(_) => FailureCode::Forbidden,
            Self::Busy { .. } => FailureCode::Busy,
            Self::Expired { .. } => FailureCode::Expired,
        }
    }

    fn detail(&self) -> FailureDetail {
        match self {
            Self::Unreachable { tier, machine, .. } => FailureDetail::Unreachable { tier: *tier, machine: *machine },
            Self::TooLarge { len, limit } => FailureDetail::TooLarge { len: *len, limit: *limit },
            Self::OverMemory { need, budget, .. } => FailureDetail::TooLarge { len: *need, limit: *budget },
            Self::Busy { tier, machine, .. } => FailureDetail::Busy { tier: *tier, machine: *machine },
            Self::Expired { tier, machine, .. } => FailureDetail::Expired { tier: *tier, machine: *machine },
            Self::Plan(PlanError::Infeasible { culprits }) => {
                let mut names = heapless::Vec::new();
                for c in culprits {
                    if names.push(bounded_text(c)).is_err() {
                        break;
                    }
                }
                FailureDetail::Infeasible { culprits: names }
            }
            _ => FailureDetail::None,
        }
    }

    /// The failure frame for `request`.
    pub fn to_frame(&self, request: u64) -> Vec<u8> {
        let body = Body::Failure { request, code: self.code(), message: failure_text(&self.to_string()), detail: self.detail() };
        encode(&body).unwrap_or_default()
    }
}
