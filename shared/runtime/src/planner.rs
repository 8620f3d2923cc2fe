//! The cloud's planning service: nodes register their profiles and measured links, devices
//! ask for ranked plans, the solver answers. Also serves the model file in chunks to a tier
//! that does not have it.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::{Context, Result, bail};

use scission_core::policy::plan_route;
use scission_core::profile::{Profile, TierKind};
use scission_core::solver::profiles::{Topology, problem_from_profiles, set_link};
use scission_core::solver::{self, Constraints, CostOptions, Link, Objective};
use scission_core::wire::message::{MAX_ROUTES, PlannedRoute};

struct Registration {
    profile: Profile,
    link_to_cloud: Option<Link>,
}

/// Profiles of the cluster, and the solver over them.
pub struct Planner {
    own: Profile,
    registry: Mutex<HashMap<String, Registration>>,
}

fn parse_profile(json: &[u8]) -> Result<Profile> {
    let profile: Profile = serde_json::from_slice(json).context("not a scission profile")?;
    if profile.format != scission_core::profile::PROFILE_FORMAT || profile.version != scission_core::profile::PROFILE_VERSION {
        bail!("profile format {} v{} is not supported", profile.format, profile.version);
    }
    Ok(profile)
}

impl Planner {
    /// A planner whose cloud machine has profile `own`.
    pub fn new(mut own: Profile) -> Self {
        own.machine.tier = TierKind::Cloud;
        Self { own, registry: Mutex::new(HashMap::new()) }
    }

    /// Records (or replaces) node `name`'s profile and measured link to the cloud.
    pub fn register(&self, name: &str, tier: u8, profile_json: &[u8], link_to_cloud: Option<Link>) -> Result<()> {
        let mut profile = parse_profile(profile_json)?;
        if profile.model.sha256 != self.own.model.sha256 {
            bail!("'{name}' benchmarked another model ({}) than the cloud serves ({})", profile.model.sha256, self.own.model.sha256);
        }
        if tier != 1 {
            bail!("only edge nodes (tier 1) register; devices ask for plans");
        }
        profile.machine.name = name.to_string();
        profile.machine.tier = TierKind::Edge;
        self.registry
            .lock()
            .map_err(|_| anyhow::anyhow!("registry poisoned"))?
            .insert(name.to_string(), Registration { profile, link_to_cloud });
        tracing::info!("registered edge '{name}'");
        Ok(())
    }

    /// The `count` best routes for a device with `profile_json` and measured `uplinks`
    /// (device -> tier).
    /// Tiers in `avoid` get no work.
    pub fn plan(&self, profile_json: &[u8], uplinks: &[(u8, Link)], avoid: &[u8], count: usize) -> Result<Vec<PlannedRoute>> {
        if count == 0 {
            bail!("a plan request must ask for at least one plan");
        }
        let mut device = parse_profile(profile_json)?;
        device.machine.tier = TierKind::Device;
        let registry = self.registry.lock().map_err(|_| anyhow::anyhow!("registry poisoned"))?;
        let mut profiles = vec![device.clone()];
        profiles.extend(registry.values().map(|r| r.profile.clone()));
        profiles.push(self.own.clone());
        let mut problem = problem_from_profiles(&profiles, &Topology::default(), None, CostOptions::default())?;
        let cloud = profiles.len() - 1;
        for (m, machine) in problem.machines.clone().iter().enumerate().skip(1) {
            if let Some((_, link)) = uplinks.iter().find(|(t, _)| usize::from(*t) == machine.tier) {
                set_link(&mut problem, 0, m, *link);
                set_link(&mut problem, m, 0, *link);
            }
        }
        for (i, r) in registry.values().enumerate() {
            if let Some(link) = r.link_to_cloud {
                set_link(&mut problem, i + 1, cloud, link);
                set_link(&mut problem, cloud, i + 1, link);
            }
        }
        let constraints = Constraints { must_not_use: avoid.iter().map(|&t| usize::from(t)).collect(), ..Constraints::default() };
        let plans = solver::solve(&problem, &constraints, Objective::Latency, count.min(MAX_ROUTES))?;
        plans
            .iter()
            .map(|p| {
                let stages = plan_route(p, &device.blocks).context("a plan does not fit the device's blocks")?;
                Ok(PlannedRoute { stages: crate::convert::bounded(stages, "stages in a route")?, predicted_ns: p.cost.latency_ns })
            })
            .collect()
    }
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
    pub fn new(path: PathBuf, sha256: [u8; 32]) -> Result<Self> {
        let total = std::fs::metadata(&path).with_context(|| format!("cannot read {}", path.display()))?.len();
        Ok(Self { path, total, sha256 })
    }

    /// Up to `max_len` bytes from `offset`.
    pub fn chunk(&self, offset: u64, max_len: u32) -> Result<Vec<u8>> {
        if offset > self.total {
            bail!("offset {offset} is past the end of the {}-byte model", self.total);
        }
        let len = (self.total - offset).min(u64::from(max_len)) as usize;
        let mut file = std::fs::File::open(&self.path)?;
        file.seek(SeekFrom::Start(offset))?;
        let mut data = vec![0u8; len];
        file.read_exact(&mut data)?;
        Ok(data)
    }
}
