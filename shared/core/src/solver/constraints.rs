//! User constraints on plans, and their compilation into per-tier and per-machine limits the
//! solvers check cheaply.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

use super::problem::{Problem, ProblemError};

/// A cap on one tier's compute time.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum ComputeCap {
    /// At most this many nanoseconds.
    Nanos(u64),
    /// At most this fraction (0..=1) of the whole model's time on the same machine.
    Fraction(f64),
}

/// Constraints a plan must meet. All combine; the default allows every plan.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Constraints {
    /// `(block, tier)`: the block runs on that tier.
    pub pin: Vec<(usize, usize)>,
    /// `(block, tier)`: the block does not run on that tier.
    pub forbid: Vec<(usize, usize)>,
    /// Tiers that must run at least one block.
    pub must_use: Vec<usize>,
    /// Tiers that must run nothing.
    pub must_not_use: Vec<usize>,
    /// Machines that may not be chosen (to choose one, exclude the others of its tier).
    pub exclude_machines: Vec<usize>,
    /// `(tier, bytes)`: at most this many bytes leave the tier.
    pub upload_cap: Vec<(usize, u64)>,
    /// `(tier, cap)`: the tier's compute time is capped.
    pub compute_cap: Vec<(usize, ComputeCap)>,
    /// `(tier, bytes)`: weights plus largest block activations of the tier's slice.
    pub memory_cap: Vec<(usize, u64)>,
    /// The device runs at least the first block, so the raw input never leaves it.
    pub keep_input_on_device: bool,
    /// At most this many bytes reach the last tier (the cloud).
    pub cloud_bytes_cap: Option<u64>,
}

/// Constraints compiled against a problem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Compiled {
    /// Per tier: `bad[t][b]` when block `b` may not run on tier `t`.
    pub bad: Vec<Vec<bool>>,
    /// Per tier: must run something / must run nothing.
    pub must_use: Vec<bool>,
    /// Per tier: must be empty.
    pub must_not_use: Vec<bool>,
    /// Per machine: may be chosen.
    pub allowed: Vec<bool>,
    /// Per tier: bytes that may leave it.
    pub upload_cap: Vec<u64>,
    /// Per machine: compute nanoseconds it may spend.
    pub compute_cap: Vec<u64>,
    /// Per tier: memory bytes of its slice.
    pub memory_cap: Vec<u64>,
    /// Bytes that may reach the last tier.
    pub cloud_bytes_cap: u64,
    /// Extra cap on every stage (compute of one tier, one transfer), used by the throughput
    /// search.
    pub stage_cap: u64,
}

fn check_tier(problem: &Problem, tier: usize, what: &str) -> Result<(), ProblemError> {
    if tier < problem.tiers.len() { Ok(()) } else { Err(ProblemError::BadConstraint(format!("{what}: there is no tier {tier}"))) }
}

fn check_block(problem: &Problem, block: usize, what: &str) -> Result<(), ProblemError> {
    let n = problem.blocks();
    if block < n { Ok(()) } else { Err(ProblemError::BadConstraint(format!("{what}: block {block} does not exist (the model has {n})"))) }
}

impl Constraints {
    /// Checks the constraints against `problem` and compiles them.
    pub(crate) fn compile(&self, problem: &Problem) -> Result<Compiled, ProblemError> {
        let (n, tiers) = (problem.blocks(), problem.tiers.len());
        let mut c = Compiled {
            bad: vec![vec![false; n]; tiers],
            must_use: vec![false; tiers],
            must_not_use: vec![false; tiers],
            allowed: vec![true; problem.machines.len()],
            upload_cap: vec![u64::MAX; tiers],
            compute_cap: vec![u64::MAX; problem.machines.len()],
            memory_cap: vec![u64::MAX; tiers],
            cloud_bytes_cap: self.cloud_bytes_cap.unwrap_or(u64::MAX),
            stage_cap: u64::MAX,
        };
        self.compile_placement(problem, &mut c)?;
        self.compile_caps(problem, &mut c)?;
        for t in 0..tiers {
            if c.must_use[t] && c.must_not_use[t] {
                return Err(ProblemError::Contradiction(format!("tier '{}' must be used and must not be used", problem.tiers[t])));
            }
            let any_machine = problem.machines.iter().enumerate().any(|(i, m)| m.tier == t && c.allowed[i]);
            let needed = t == 0 || c.must_use[t];
            if needed && !any_machine {
                return Err(ProblemError::Contradiction(format!(
                    "tier '{}' is needed but all its machines are excluded",
                    problem.tiers[t]
                )));
            }
        }
        Ok(c)
    }

    fn compile_placement(&self, problem: &Problem, c: &mut Compiled) -> Result<(), ProblemError> {
        let tiers = problem.tiers.len();
        let mut pinned: Vec<Option<usize>> = vec![None; problem.blocks()];
        for &(b, t) in &self.pin {
            check_block(problem, b, "pin")?;
            check_tier(problem, t, "pin")?;
            if let Some(other) = pinned[b].filter(|&o| o != t) {
                let (x, y) = (&problem.tiers[other], &problem.tiers[t]);
                return Err(ProblemError::Contradiction(format!("block {b} is pinned to both '{x}' and '{y}'")));
            }
            pinned[b] = Some(t);
            c.must_use[t] = true;
            for other in (0..tiers).filter(|&o| o != t) {
                c.bad[other][b] = true;
            }
        }
        for &(b, t) in &self.forbid {
            check_block(problem, b, "forbid")?;
            check_tier(problem, t, "forbid")?;
            if pinned[b] == Some(t) {
                return Err(ProblemError::Contradiction(format!("block {b} is both pinned to and forbidden on '{}'", problem.tiers[t])));
            }
            c.bad[t][b] = true;
        }
        for &t in &self.must_use {
            check_tier(problem, t, "must use")?;
            c.must_use[t] = true;
        }
        for &t in &self.must_not_use {
            check_tier(problem, t, "must not use")?;
            c.must_not_use[t] = true;
        }
        if self.keep_input_on_device {
            c.must_use[0] = true;
        }
        for &m in &self.exclude_machines {
            if m >= problem.machines.len() {
                return Err(ProblemError::BadConstraint(format!("machine index {m} does not exist")));
            }
            c.allowed[m] = false;
        }
        Ok(())
    }

    fn compile_caps(&self, problem: &Problem, c: &mut Compiled) -> Result<(), ProblemError> {
        for &(t, bytes) in &self.upload_cap {
            check_tier(problem, t, "upload cap")?;
            c.upload_cap[t] = c.upload_cap[t].min(bytes);
        }
        for &(t, bytes) in &self.memory_cap {
            check_tier(problem, t, "memory cap")?;
            c.memory_cap[t] = c.memory_cap[t].min(bytes);
        }
        for &(t, cap) in &self.compute_cap {
            check_tier(problem, t, "compute cap")?;
            for (i, m) in problem.machines.iter().enumerate().filter(|(_, m)| m.tier == t) {
                let ns = match cap {
                    ComputeCap::Nanos(ns) => ns,
                    ComputeCap::Fraction(f) if (0.0..=1.0).contains(&f) => {
                        let total: u64 = m.block_ns.iter().sum();
                        (total as f64 * f) as u64
                    }
                    ComputeCap::Fraction(f) => {
                        return Err(ProblemError::BadConstraint(format!(
                            "compute share {f} for tier '{}' is not between 0 and 1",
                            problem.tiers[t]
                        )));
                    }
                };
                c.compute_cap[i] = c.compute_cap[i].min(ns);
            }
        }
        Ok(())
    }

    /// A short name for each constraint group, used to explain infeasibility.
    pub(crate) fn groups(&self) -> Vec<(String, Constraints)> {
        let mut out = Vec::new();
        let mut push = |name: &str, relaxed: Constraints| out.push((String::from(name), relaxed));
        if !self.pin.is_empty() {
            push("pinned blocks", Constraints { pin: Vec::new(), ..self.clone() });
        }
        if !self.forbid.is_empty() {
            push("forbidden blocks", Constraints { forbid: Vec::new(), ..self.clone() });
        }
        if !self.must_use.is_empty() || self.keep_input_on_device {
            push(
                "tiers that must be used (or keep-input-on-device)",
                Constraints { must_use: Vec::new(), keep_input_on_device: false, ..self.clone() },
            );
        }
        if !self.must_not_use.is_empty() {
            push("tiers that must be unused", Constraints { must_not_use: Vec::new(), ..self.clone() });
        }
        if !self.exclude_machines.is_empty() {
            push("machine choices", Constraints { exclude_machines: Vec::new(), ..self.clone() });
        }
        if !self.upload_cap.is_empty() {
            push("upload caps", Constraints { upload_cap: Vec::new(), ..self.clone() });
        }
        if !self.compute_cap.is_empty() {
            push("compute-time caps", Constraints { compute_cap: Vec::new(), ..self.clone() });
        }
        if !self.memory_cap.is_empty() {
            push("memory caps", Constraints { memory_cap: Vec::new(), ..self.clone() });
        }
        if self.cloud_bytes_cap.is_some() {
            push("the cap on bytes reaching the cloud", Constraints { cloud_bytes_cap: None, ..self.clone() });
        }
        out
    }
}
