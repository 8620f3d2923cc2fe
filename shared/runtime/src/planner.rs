//! The cloud's planning service: edges register their profiles and measured links, devices
//! ask for ranked plans, the solver answers. Also serves the model file in chunks to a tier
//! that does not have it.
//!
//! The registry is bounded and registrations expire unless renewed (edges renew with a
//! heartbeat that carries their load); the solver runs on a snapshot taken under the lock,
//! never while holding it. Each machine's reported queue becomes the waiting time the solver
//! charges a plan that hands work to it, so plans move away from a loaded machine.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::Context;

use scission_core::link::Link;
use scission_core::policy::plan_route;
use scission_core::profile::{Profile, TierKind};
use scission_core::solver::profiles::{Topology, problem_from_profiles, set_link};
use scission_core::solver::{self, Constraints, CostOptions, Objective, SolveError};
use scission_core::wire::message::{
    CONFIGURED, Load, MAX_DIRECTORY, MAX_ROUTES, MAX_STAGES, MachineEntry, MachineId, PlannedRoute, REGISTERED_SERVER,
};
use scission_engine::profile_file::parse_profile;

use crate::convert::bounded;
use crate::load::LoadMeter;

/// Most machines registered at once (each gets a place in the directory).
pub const MAX_REGISTERED: usize = MAX_DIRECTORY;
/// A registration not renewed within this long is forgotten.
pub const REGISTRATION_TTL: Duration = Duration::from_secs(600);

/// Why a registration or a plan request failed.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The profile is not one this planner can use.
    #[error("bad profile: {0}")]
    Profile(String),
    /// The profile benchmarked another model.
    #[error("'{name}' benchmarked another model ({theirs}) than the cloud serves ({ours})")]
    OtherModel {
        /// Who sent it.
        name: String,
        /// Their model's SHA-256.
        theirs: String,
        /// Ours.
        ours: String,
    },
    /// Only servers register, with a tier of the chain (not the device's).
    #[error("only servers register, each with its tier's index in the planner's chain (1 to its last); devices ask for plans")]
    NotAServerTier,
    /// The registry has no id left, or the name is the planner's own.
    #[error("cannot register '{0}': {1}")]
    Refused(String, &'static str),
    /// The registry is full.
    #[error("the registry is full ({0} edges)")]
    RegistryFull(usize),
    /// A plan request must ask for at least one plan.
    #[error("a plan request must ask for at least one plan")]
    NoPlansAsked,
    /// No plan meets the constraints.
    #[error("no plan satisfies the constraints (culprits: {culprits:?})")]
    Infeasible {
        /// Constraint groups whose removal alone would allow a plan.
        culprits: Vec<String>,
    },
    /// The planning problem is inconsistent.
    #[error("cannot plan: {0}")]
    Problem(String),
    /// The registry's lock was poisoned by a panic elsewhere.
    #[error("the planner's registry is unusable")]
    Poisoned,
}

impl From<SolveError> for PlanError {
    fn from(e: SolveError) -> Self {
        match e {
            SolveError::Infeasible { culprits } => PlanError::Infeasible { culprits },
            other => PlanError::Problem(other.to_string()),
        }
    }
}

#[derive(Clone)]
struct Registration {
    id: MachineId,
    tier: u8,
    /// Where peers reach it; `None`: not advertised, so routes name it as its tier's configured
    /// server and the directory leaves it out.
    addr: Option<String>,
    profile: Profile,
    link_to_cloud: Option<Link>,
    load: Load,
    renewed: Instant,
}

/// Profiles of the cluster, and the solver over them.
pub struct Planner {
    own: Profile,
    registry: Mutex<HashMap<String, Registration>>,
    capacity: usize,
    ttl: Duration,
    deny: Option<Arc<scission_net::pki::DenyList>>,
    own_load: Option<Arc<LoadMeter>>,
    /// The chain, device first, this cloud last.
    tiers: Vec<String>,
}

impl Planner {
    /// A planner whose cloud machine has profile `own`.
    pub fn new(mut own: Profile) -> Self {
        own.machine.tier = TierKind::Cloud;
        Self {
            own,
            registry: Mutex::new(HashMap::new()),
            capacity: MAX_REGISTERED,
            ttl: REGISTRATION_TTL,
            deny: None,
            own_load: None,
            tiers: default_chain(),
        }
    }

    /// Keeps at most `capacity` edges registered, each for `ttl` after its last renewal.
    pub fn with_registry(mut self, capacity: usize, ttl: Duration) -> Self {
        self.capacity = capacity.min(MAX_DIRECTORY);
        self.ttl = ttl;
        self
    }

    /// Leaves edges the deny list names out of every plan from the moment they are revoked.
    pub fn with_deny_list(mut self, deny: Arc<scission_net::pki::DenyList>) -> Self {
        self.deny = Some(deny);
        self
    }

    /// Plans over `tiers` (names in chain order: the device's first, this cloud's last), e.g.
    /// `device, edge, edge2, cloud`; servers register with their tier's index in it.
    pub fn with_tiers(mut self, tiers: Vec<String>) -> Result<Self, PlanError> {
        if tiers.len() < 2 || tiers.len() > scission_core::solver::MAX_TIERS || tiers.len() > MAX_STAGES {
            return Err(PlanError::Problem(format!("a chain has 2 to {MAX_STAGES} tiers, not {}", tiers.len())));
        }
        if tiers.iter().enumerate().any(|(i, t)| tiers[..i].contains(t)) {
            return Err(PlanError::Problem(format!("a tier appears twice in the chain {}", tiers.join(","))));
        }
        self.tiers = tiers;
        Ok(self)
    }

    /// The chain's last tier: this cloud's index.
    pub fn own_tier(&self) -> u8 {
        u8::try_from(self.tiers.len().saturating_sub(1)).unwrap_or(u8::MAX)
    }

    /// Counts the cloud's own queue (`load`, its stage server's) in every plan.
    pub fn with_own_load(mut self, load: Arc<LoadMeter>) -> Self {
        self.own_load = Some(load);
        self
    }

    /// Records (or renews) node `name` of `tier`, reachable at `addr` (an unspecified host
    /// stands for `seen_from`, the address the registration came from; empty: not advertised,
    /// reached only as its tier's configured server), with its profile,
    /// measured link to the cloud and load. Returns its id (kept on renewal) and the directory.
    #[allow(clippy::too_many_arguments)]
    pub fn register(
        &self,
        name: &str,
        tier: u8,
        addr: &str,
        seen_from: std::net::IpAddr,
        profile_json: &[u8],
        link_to_cloud: Option<Link>,
        load: Load,
    ) -> Result<(MachineId, Vec<Listed>), PlanError> {
        let kind = match tier {
            0 => return Err(PlanError::NotAServerTier),
            t if t == self.own_tier() => TierKind::Cloud,
            t if t < self.own_tier() => TierKind::Edge,
            _ => return Err(PlanError::NotAServerTier),
        };
        if name == self.own.machine.name {
            return Err(PlanError::Refused(name.to_string(), "it is the planner's own name"));
        }
        let addr = if addr.is_empty() { None } else { Some(advertised(addr, seen_from)?) };
        let mut profile = parse_profile(profile_json).map_err(|e| PlanError::Profile(format!("{e:#}")))?;
        if profile.model.sha256 != self.own.model.sha256 {
            return Err(PlanError::OtherModel {
                name: name.to_string(),
                theirs: profile.model.sha256,
                ours: self.own.model.sha256.clone(),
            });
        }
        if !profile.blocks.iter().map(|b| b.range).eq(self.own.blocks.iter().map(|b| b.range)) {
            return Err(PlanError::Profile("its blocks differ from the cloud's (benchmark both with the same --max-crossing)".into()));
        }
        profile.machine.name = name.to_string();
        profile.machine.tier = kind;
        let mut registry = self.registry.lock().map_err(|_| PlanError::Poisoned)?;
        let now = Instant::now();
        registry.retain(|_, r| now.duration_since(r.renewed) < self.ttl);
        if !registry.contains_key(name) && registry.len() >= self.capacity {
            return Err(PlanError::RegistryFull(self.capacity));
        }
        let id = match registry.get(name) {
            Some(r) => r.id,
            // The registry holds at most MAX_DIRECTORY (32): ids stay far below the 127 the wire allows.
            None => (1..REGISTERED_SERVER)
                .find(|id| registry.values().all(|r| r.id != *id))
                .ok_or(PlanError::Refused(name.to_string(), "no machine id is free"))?,
        };
        let renewal =
            registry.insert(name.to_string(), Registration { id, tier, addr, profile, link_to_cloud, load, renewed: now }).is_some();
        match renewal {
            true => tracing::debug!("'{name}' renewed its registration ({} queued)", load.queued),
            false => tracing::info!("registered '{name}' (tier {tier}) as machine {id}"),
        }
        let listed = listing(registry.values());
        Ok((id, listed))
    }

    /// The registrations still current and not revoked.
    fn current(&self) -> Result<Vec<Registration>, PlanError> {
        let registry = self.registry.lock().map_err(|_| PlanError::Poisoned)?;
        let now = Instant::now();
        let revoked = |name: &str| self.deny.as_ref().is_some_and(|d| d.is_name_revoked(name));
        let mut current: Vec<Registration> =
            registry.values().filter(|r| now.duration_since(r.renewed) < self.ttl && !revoked(&r.profile.machine.name)).cloned().collect();
        current.sort_by_key(|r| r.id);
        Ok(current)
    }

    /// The `count` best routes for a device with `profile_json` and measured `uplinks`
    /// (device -> tier, taken for every machine of the tier), and the directory of the machines
    /// they name. Tiers in `avoid`, and registered machines in `avoid_machines`, get no work. Two registered machines' link is taken to be
    /// the one the first measured to the planner (they are not measured against each other).
    pub fn plan(
        &self,
        profile_json: &[u8],
        uplinks: &[(u8, Link)],
        avoid: &[u8],
        avoid_machines: &[MachineId],
        count: usize,
        device_memory: Option<u64>,
    ) -> Result<(Vec<PlannedRoute>, Vec<Listed>), PlanError> {
        if count == 0 {
            return Err(PlanError::NoPlansAsked);
        }
        let mut device = parse_profile(profile_json).map_err(|e| PlanError::Profile(format!("{e:#}")))?;
        device.machine.tier = TierKind::Device;
        let edges = self.current()?;
        let mut profiles = vec![device.clone()];
        profiles.extend(edges.iter().map(|r| r.profile.clone()));
        profiles.push(self.own.clone());
        let last = self.tiers.len() - 1;
        let mut placement =
            vec![(device.machine.name.clone(), self.tiers[0].clone()), (self.own.machine.name.clone(), self.tiers[last].clone())];
        placement.extend(edges.iter().filter_map(|r| Some((r.profile.machine.name.clone(), self.tiers.get(usize::from(r.tier))?.clone()))));
        let topology = Topology { tiers: self.tiers.clone(), placement };
        let mut problem =
            problem_from_profiles(&profiles, &topology, None, CostOptions::default()).map_err(|e| PlanError::Problem(e.to_string()))?;
        let cloud = profiles.len() - 1;
        // The device measured its configured peers: 1 its edge (taken for every edge tier), 2
        // its cloud (for the last tier).
        for (m, machine) in problem.machines.clone().iter().enumerate().skip(1) {
            let key = if machine.tier == last { 2 } else { 1 };
            if let Some((_, link)) = uplinks.iter().find(|(t, _)| *t == key) {
                set_link(&mut problem, 0, m, *link);
                set_link(&mut problem, m, 0, *link);
            }
        }
        for (i, r) in edges.iter().enumerate() {
            problem.machines[i + 1].queue_ns = r.load.expected_wait_ns();
            if let Some(link) = r.link_to_cloud {
                set_link(&mut problem, i + 1, cloud, link);
                set_link(&mut problem, cloud, i + 1, link);
                for (j, other) in edges.iter().enumerate().filter(|(_, o)| o.tier != r.tier) {
                    set_link(&mut problem, i + 1, j + 1, link);
                    if other.link_to_cloud.is_none() {
                        set_link(&mut problem, j + 1, i + 1, link);
                    }
                }
            }
        }
        problem.machines[cloud].queue_ns = self.own_load.as_ref().map_or(0, |l| l.snapshot().expected_wait_ns());
        let exclude_machines = edges.iter().enumerate().filter(|(_, r)| avoid_machines.contains(&r.id)).map(|(i, _)| i + 1).collect();
        // The device's memory caps its slice (the device checks each route exactly again).
        let memory_cap =
            device_memory.map(|m| (0, scission_core::memory::device_memory_cap(&mut problem, &device.blocks, m))).into_iter().collect();
        let constraints = Constraints {
            must_not_use: avoid.iter().map(|&t| usize::from(t)).collect(),
            exclude_machines,
            memory_cap,
            ..Constraints::default()
        };
        let plans = solver::solve(&problem, &constraints, Objective::Latency, count.min(MAX_ROUTES))?;
        plans
            .iter()
            .map(|p| {
                let machine_of = |m: usize| edges.get(m.wrapping_sub(1)).filter(|r| r.addr.is_some()).map_or(CONFIGURED, |r| r.id);
                let stages = plan_route(p, &device.blocks, machine_of)
                    .ok_or_else(|| PlanError::Profile("a plan does not fit the device's blocks".into()))?;
                let stages = bounded(stages, "stages in a route").map_err(|e| PlanError::Problem(format!("{e:#}")))?;
                Ok(PlannedRoute { stages, predicted_ns: p.cost.latency_ns })
            })
            .collect::<Result<Vec<_>, PlanError>>()
            .map(|routes| (routes, listing(edges.iter())))
    }
}

/// device -> edge -> cloud.
fn default_chain() -> Vec<String> {
    scission_core::solver::profiles::DEFAULT_TIERS.iter().map(|t| t.as_str().to_string()).collect()
}

/// A registered machine as the directory lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    /// Its id.
    pub id: MachineId,
    /// Its tier.
    pub tier: u8,
    /// Its enrolled name.
    pub name: String,
    /// Where it listens.
    pub addr: String,
}

impl Listed {
    /// As a wire entry.
    pub fn entry(&self) -> MachineEntry<'_> {
        MachineEntry { id: self.id, tier: self.tier, name: &self.name, addr: &self.addr }
    }
}

/// The directory of `registrations`, by id (at most [`MAX_DIRECTORY`]).
fn listing<'a>(registrations: impl Iterator<Item = &'a Registration>) -> Vec<Listed> {
    let mut listed: Vec<Listed> = registrations
        .filter_map(|r| Some(Listed { id: r.id, tier: r.tier, name: r.profile.machine.name.clone(), addr: r.addr.clone()? }))
        .collect();
    listed.sort_by_key(|l| l.id);
    listed.truncate(MAX_DIRECTORY);
    listed
}

/// `addr` as peers should use it: `HOST:PORT` with an unspecified host replaced by `seen_from`.
fn advertised(addr: &str, seen_from: std::net::IpAddr) -> Result<String, PlanError> {
    let bad = || PlanError::Profile(format!("'{addr}' is not an IP address and port"));
    let parsed: std::net::SocketAddr = addr.parse().map_err(|_| bad())?;
    let ip = if parsed.ip().is_unspecified() { seen_from } else { parsed.ip() };
    Ok(std::net::SocketAddr::new(ip, parsed.port()).to_string())
}

/// A model file served in chunks.
pub struct ModelFile {
    path: PathBuf,
    /// Its size.
    pub total: u64,
    /// Its SHA-256.
    pub sha256: [u8; 32],
}

impl ModelFile {
    /// Serves `path`, whose SHA-256 is `sha256`.
    pub fn new(path: PathBuf, sha256: [u8; 32]) -> crate::error::Result<Self> {
        let total = std::fs::metadata(&path).with_context(|| format!("cannot read {}", path.display()))?.len();
        Ok(Self { path, total, sha256 })
    }

    /// Up to `max_len` bytes from `offset` (never more than the file holds from there).
    pub fn chunk(&self, offset: u64, max_len: u32) -> crate::error::Result<Vec<u8>> {
        if offset > self.total {
            crate::error::bail!("offset {offset} is past the end of the {}-byte model", self.total);
        }
        let len = usize::try_from((self.total - offset).min(u64::from(max_len))).context("chunk length")?;
        let mut file = std::fs::File::open(&self.path)?;
        file.seek(SeekFrom::Start(offset))?;
        let mut data = vec![0u8; len];
        file.read_exact(&mut data)?;
        Ok(data)
    }
}
