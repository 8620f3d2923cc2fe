//! The device service's configuration: one TOML file (every field has a default; see
//! `cross/image/device.toml` for a documented example), with command-line flags over it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use scission_cli::{EncodingArg, HostPort};
use scission_core::policy::PolicyConfig;
use scission_core::profile::{Profile, TierKind};
use scission_core::wire::frame::DEFAULT_MAX_FRAME;
use scission_engine::profile_file::read_profile;
use scission_runtime::device::Planning;
use scission_runtime::node::Slices;
use scission_runtime::session::SessionConfig;
use scission_serving::image::{Preprocess, Preset, Resize};

/// Each probe of a tier that stopped answering waits its back-off give or take this many
/// percent (a fleet's devices do not all probe a returning server at once).
pub const PROBE_JITTER_PERCENT: u32 = 25;

/// The whole file.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This device's enrolled name.
    pub name: String,
    /// The cluster directory (CA, this device's certificate and key).
    pub cluster: PathBuf,
    /// The ONNX model, or a directory of its slice artifacts (`scission-cloud slice`): then only
    /// those slices are loaded, and only plans whose device part is among them are used.
    pub model: PathBuf,
    /// Concrete input shapes, one per input in model order (e.g. `[[1, 3, 640, 640]]`), for a
    /// model exported with symbolic dimensions other than the batch (detectors, OCR); the
    /// edge and cloud serve it with the same `--input-shape`.
    pub input_shapes: Vec<Vec<usize>>,
    /// Fetch the model from the cloud when the file is missing.
    pub fetch_model: bool,
    /// With `model` a directory of slice artifacts: the most MiB of them kept on disk.
    pub slice_cache_mib: u64,
    /// Memory the service may use, in MiB (default: its cgroup limit or the system's available
    /// memory); plans whose device slice would need more are not used.
    pub memory_mib: Option<u64>,
    /// Engine threads for the device's stages.
    pub threads: usize,
    /// The edge server.
    pub edge: Option<Server>,
    /// The cloud server.
    pub cloud: Option<Server>,
    /// The cloud's planner, when it runs apart from the cloud's stage servers (a scaled-out
    /// cloud); default: the cloud answers plan requests itself.
    pub planner: Option<Server>,
    /// Where plans come from, and how the device reacts to failures.
    pub planning: PlanningConfig,
    /// The local API.
    pub api: ApiConfig,
    /// Image inputs.
    pub image: ImageConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            name: "device".into(),
            cluster: PathBuf::from("cluster"),
            model: PathBuf::from("model.onnx"),
            input_shapes: Vec::new(),
            fetch_model: false,
            slice_cache_mib: 1024,
            memory_mib: None,
            threads: 1,
            edge: None,
            cloud: None,
            planner: None,
            planning: PlanningConfig::default(),
            api: ApiConfig::default(),
            image: ImageConfig::default(),
        }
    }
}

/// An edge or cloud server.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    /// `HOST:PORT` (a name is resolved again on every reconnect).
    pub address: String,
    /// Its enrolled name (its certificate must carry it); defaults to `edge` or `cloud`.
    #[serde(default)]
    pub name: Option<String>,
}

/// Planning and failure handling.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlanningConfig {
    /// This device's benchmark profile: the cloud plans with it and the measured uplinks.
    pub profile: Option<PathBuf>,
    /// Device, edge and cloud profiles: the device plans by itself (with `links`).
    pub profiles: Vec<PathBuf>,
    /// A fixed split `[device_end, edge_end]` instead of planning.
    pub split: Option<[usize; 2]>,
    /// Link figures `FROM-TO=BANDWIDTH,LATENCY` for planning from `profiles`.
    pub links: Vec<String>,
    /// Re-measure the links and re-plan this often, in seconds, in the first moment with no
    /// request in flight (0: only on failures).
    pub replan_every_s: u64,
    /// First wait before a tier that stopped answering is probed again, in milliseconds
    /// (doubling after each failed probe up to `retry_max_ms`, give or take a quarter).
    pub retry_after_ms: u64,
    /// Longest wait between two probes of a tier that stopped answering, in milliseconds: the
    /// most a returned tier waits to be used again.
    pub retry_max_ms: u64,
    /// Give a server up after this many milliseconds without a packet from it (it is asked to
    /// answer five times as often): how fast a killed server or a dead path is noticed. Each
    /// idle connection then carries about 20 small packets a second (about 100 MB a day);
    /// on a metered link, 10000 sends one ping every 2 s.
    pub silence_ms: u64,
    /// Re-plan when the best plan's measured latency departs from its prediction by more than
    /// this many percent, averaged over 8 requests (0: never).
    pub drift_percent: u32,
    /// Give up on a tier that has not answered within this many milliseconds. A request that
    /// every plan's tiers refuse as busy tries again, after a back-off with jitter, for as long.
    pub timeout_ms: u64,
    /// Activation encoding on the wire: `f32`, `f16` or `int8`.
    pub encoding: String,
    /// With edge and cloud unreachable, run the whole model here (degraded) instead of failing.
    /// Turn off where the board cannot hold the whole model.
    pub local_fallback: bool,
}

impl Default for PlanningConfig {
    fn default() -> Self {
        Self {
            profile: None,
            profiles: Vec::new(),
            split: None,
            links: Vec::new(),
            replan_every_s: 60,
            retry_after_ms: 250,
            retry_max_ms: 2000,
            silence_ms: 500,
            drift_percent: 50,
            timeout_ms: 5000,
            encoding: "f32".into(),
            local_fallback: true,
        }
    }
}

/// The local inference API.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// TCP address (loopback: only the board's own applications); empty: no TCP listener.
    pub listen: String,
    /// A Unix socket path, besides or instead of TCP.
    pub unix_socket: Option<PathBuf>,
    /// The model's name in URLs (default: the model file's stem).
    pub model_name: Option<String>,
    /// Largest request body, in MiB.
    pub max_body_mib: usize,
    /// Most requests in flight through the pipeline at once; more wait.
    pub max_outstanding: usize,
    /// Inference requests read, parsed and run at once (each holds its body and tensors: this
    /// bounds the service's working memory).
    pub max_concurrent: usize,
    /// Inference requests waiting for one of those slots; one more is answered 503 with
    /// `Retry-After`.
    pub max_waiting: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            unix_socket: None,
            model_name: None,
            max_body_mib: 64,
            max_outstanding: 64,
            max_concurrent: 4,
            max_waiting: 64,
        }
    }
}

/// Image inputs.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImageConfig {
    /// Scaling and normalisation: `imagenet`, `torch`, `keras-caffe`, `keras-tf`, `unit`, `raw`.
    pub preset: Preset,
    /// `crop` (centre crop) or `stretch`; default: what the preset's framework does.
    pub resize: Option<Resize>,
    /// A labels file, one class name per line.
    pub labels: Option<PathBuf>,
    /// How many of the best classes answers list.
    pub top_k: usize,
}

impl Default for ImageConfig {
    fn default() -> Self {
        Self { preset: Preset::Imagenet, resize: None, labels: None, top_k: 5 }
    }
}

/// Flags that override the file (`serve` and `infer`).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Overrides {
    /// The configuration file (TOML). Without it, the defaults and these flags.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The ONNX model, or a directory of its slice artifacts (overrides `model`).
    #[arg(long, value_name = "FILE|DIR")]
    pub model: Option<PathBuf>,
    /// Concrete input shape, e.g. `1,3,640,640`; repeat once per input, in model order
    /// (overrides `input_shapes`). Needed only when the model has symbolic dimensions other than
    /// the batch; give the edge and cloud the same.
    #[arg(long = "input-shape", value_name = "DIMS", value_parser = scission_cli::parse_shape)]
    pub input_shapes: Vec<Vec<usize>>,
    /// This device's enrolled name (overrides `name`).
    #[arg(long)]
    pub name: Option<String>,
    /// The cluster directory (overrides `cluster`).
    #[arg(long, value_name = "DIR")]
    pub cluster: Option<PathBuf>,
    /// The edge server, HOST:PORT (overrides `[edge] address`).
    #[arg(long, value_name = "HOST:PORT")]
    pub edge: Option<String>,
    /// The cloud server, HOST:PORT (overrides `[cloud] address`).
    #[arg(long, value_name = "HOST:PORT")]
    pub cloud: Option<String>,
    /// The cloud's planner, HOST:PORT, when apart from the cloud's stage servers (overrides
    /// `[planner] address`).
    #[arg(long, value_name = "HOST:PORT")]
    pub planner: Option<String>,
    /// This device's profile, for the cloud's planner (overrides `[planning] profile`).
    #[arg(long, value_name = "FILE")]
    pub profile: Option<PathBuf>,
    /// A fixed split DEVICE_END,EDGE_END (node positions, see `inspect`; overrides `[planning]`).
    #[arg(long, value_name = "DEVICE_END,EDGE_END", value_parser = parse_split)]
    pub split: Option<[usize; 2]>,
    /// The API's TCP address (overrides `[api] listen`; port 0 picks a free one).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// The API's Unix socket (overrides `[api] unix_socket`).
    #[arg(long, value_name = "PATH")]
    pub unix_socket: Option<PathBuf>,
    /// Probe a tier that stopped answering after this many milliseconds (overrides
    /// `[planning] retry_after_ms`).
    #[arg(long, value_name = "MS")]
    pub retry_after_ms: Option<u64>,
    /// Never run the whole model here when edge and cloud are gone.
    #[arg(long)]
    pub no_local_fallback: bool,
    /// Inference requests served at once; more wait (overrides `[api] max_concurrent`).
    #[arg(long, value_name = "N")]
    pub max_concurrent: Option<usize>,
}

impl Overrides {
    /// The file's configuration (or the defaults) with these flags over it.
    pub fn load(&self) -> Result<Config> {
        let mut config = match &self.config {
            Some(path) => read(path)?,
            None => Config::default(),
        };
        let set = |slot: &mut Option<Server>, address: &Option<String>| {
            if let Some(address) = address {
                let name = slot.as_ref().and_then(|s| s.name.clone());
                *slot = Some(Server { address: address.clone(), name });
            }
        };
        set(&mut config.edge, &self.edge);
        set(&mut config.cloud, &self.cloud);
        set(&mut config.planner, &self.planner);
        if let Some(v) = &self.model {
            config.model = v.clone();
        }
        if !self.input_shapes.is_empty() {
            config.input_shapes = self.input_shapes.clone();
        }
        if let Some(v) = &self.name {
            config.name = v.clone();
        }
        if let Some(v) = &self.cluster {
            config.cluster = v.clone();
        }
        if let Some(v) = &self.profile {
            config.planning.profile = Some(v.clone());
        }
        if let Some(v) = self.split {
            config.planning.split = Some(v);
        }
        if let Some(v) = &self.listen {
            config.api.listen = v.clone();
        }
        if let Some(v) = &self.unix_socket {
            config.api.unix_socket = Some(v.clone());
        }
        if let Some(v) = self.retry_after_ms {
            config.planning.retry_after_ms = v;
        }
        if self.no_local_fallback {
            config.planning.local_fallback = false;
        }
        if let Some(v) = self.max_concurrent {
            config.api.max_concurrent = v;
        }
        Ok(config)
    }
}

/// A session's timings in milliseconds, as `serve`, `infer` (from the file or flags) and `run`
/// (from flags) give them, bounded the same way for all three: a zero timeout or retry is one
/// millisecond, a silence 100 ms to an hour, the longest retry no shorter than the first.
pub struct Timings {
    /// Give up on a tier after this long; a request refused as busy everywhere retries as long.
    pub timeout_ms: u64,
    /// First probe of a tier that stopped answering.
    pub retry_after_ms: u64,
    /// Longest wait between two probes.
    pub retry_max_ms: u64,
    /// Give a server up after this long without a packet from it.
    pub silence_ms: u64,
}

impl Timings {
    /// The policy's timings (back-off, jitter, busy patience) for device `name`; the caller
    /// sets the re-planning fields.
    pub fn policy(&self, name: &str) -> PolicyConfig {
        PolicyConfig {
            backoff_initial: embassy_time::Duration::from_millis(self.retry_after_ms.max(1)),
            backoff_max: embassy_time::Duration::from_millis(self.retry_max_ms.max(self.retry_after_ms).max(1)),
            probe_jitter_percent: PROBE_JITTER_PERCENT,
            jitter_seed: scission_core::policy::seed_of(name),
            // A request refused as busy everywhere tries again while its deadline lasts.
            busy_patience: embassy_time::Duration::from_millis(self.timeout_ms.max(1)),
            ..PolicyConfig::default()
        }
    }

    /// How long a tier has to answer.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.max(1))
    }

    /// How the session watches its servers.
    pub fn liveness(&self) -> scission_net::quic::Liveness {
        scission_net::quic::Liveness { silence: Duration::from_millis(self.silence_ms.clamp(100, 3_600_000)) }
    }
}

/// The memory a device session may use: `memory_mib` when given, else what the host has free.
pub fn device_memory(memory_mib: Option<u64>) -> Option<u64> {
    memory_mib.map(|m| m.saturating_mul(1 << 20)).or_else(scission_engine::host::available_memory)
}

/// Plans from a fixed split, else from the cloud (with this device's `profile`), else from the
/// solver here (with every tier's `profiles`), each file read and checked now.
pub fn planning(split: Option<[usize; 2]>, profile: Option<&Path>, profiles: &[PathBuf], links: &[String]) -> Result<Planning> {
    if let Some([device_end, edge_end]) = split {
        return Ok(Planning::Split { device_end, edge_end });
    }
    if let Some(profile) = profile {
        same_board(&read_profile(profile)?, profile)?;
        let profile_json = std::fs::read(profile).with_context(|| format!("cannot read {}", profile.display()))?;
        return Ok(Planning::Cloud { profile_json, links: links.to_vec() });
    }
    let profiles = profiles
        .iter()
        .map(|path| {
            let profile = read_profile(path)?;
            same_board(&profile, path)?;
            Ok(profile)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Planning::Profiles { profiles, links: links.to_vec() })
}

/// A device's profile predicts this process's times only if it was benchmarked as the board
/// this process plays (`--emulate-slower`, 1 at the machine's own speed); other tiers' profiles
/// were made by other processes.
fn same_board(profile: &Profile, path: &Path) -> Result<()> {
    if profile.machine.tier == TierKind::Device {
        scission_engine::slower::check_same_board(&profile.machine).with_context(|| path.display().to_string())?;
    }
    Ok(())
}

/// Parses `DEVICE_END,EDGE_END`.
pub fn parse_split(text: &str) -> Result<[usize; 2], String> {
    let bad = || format!("'{text}': expected two node positions DEVICE_END,EDGE_END, e.g. 40,120");
    let (a, b) = text.split_once(',').ok_or_else(bad)?;
    Ok([a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?])
}

/// The model's SHA-256 as the device's own profile records it, when there is one.
pub fn pinned_model(planning: &Planning) -> Result<Option<[u8; 32]>> {
    let hex = match planning {
        Planning::Split { .. } => return Ok(None),
        Planning::Profiles { profiles, .. } => profiles.first().map(|p| p.model.sha256.clone()),
        Planning::Cloud { profile_json, .. } => Some(scission_engine::profile_file::parse_profile(profile_json)?.model.sha256),
    };
    Ok(hex.map(|h| scission_core::profile::parse_sha256(&h)).transpose()?)
}

/// The device's slices: a directory of slice artifacts (from `scission-cloud slice`; only
/// those are loaded, never the whole model), or an ONNX file loaded whole. `pinned` is the
/// model's SHA-256 from the device's profile, when it has one: artifacts of another model are
/// refused.
///
/// A directory with no artifact yet is filled from `session`'s cloud (the one-node slice that
/// describes the model first; the session fetches the slices its plans need after).
pub fn open_slices(
    path: &Path,
    options: &scission_engine::LoadOptions,
    pinned: Option<[u8; 32]>,
    session: &SessionConfig,
) -> Result<Slices> {
    if path.is_dir() {
        let pinned = pinned.map(|p| scission_engine::model_graph::hex(&p));
        let dir = scission_runtime::fetch::open_artifacts_blocking(
            &session.cluster,
            &session.name,
            session.cloud.as_ref(),
            path,
            pinned.as_deref(),
            session.max_frame,
        )?;
        tracing::info!(dir = %path.display(), slices = ?dir.blocks(), "running from slice artifacts");
        return Ok(Slices::Artifacts(dir));
    }
    #[cfg(feature = "full")]
    return Ok(Slices::Whole(scission_engine::Model::load_path(path, options)?));
    #[cfg(not(feature = "full"))]
    {
        let _ = options;
        anyhow::bail!(
            "{} is not a directory of slice artifacts; this lean build runs slices only (`scission-cloud slice` writes them)",
            path.display()
        )
    }
}

/// Reads and parses a configuration file; relative paths in it are relative to the file.
pub fn read(path: &Path) -> Result<Config> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read the configuration {}", path.display()))?;
    let mut config: Config = toml::from_str(&text).with_context(|| format!("{} is not a valid configuration", path.display()))?;
    if let Some(dir) = path.parent() {
        config.anchor(dir);
    }
    Ok(config)
}

impl Config {
    /// Makes relative paths relative to `dir`.
    fn anchor(&mut self, dir: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        };
        fix(&mut self.cluster);
        fix(&mut self.model);
        self.planning.profile.iter_mut().for_each(fix);
        self.planning.profiles.iter_mut().for_each(fix);
        self.image.labels.iter_mut().for_each(fix);
        self.api.unix_socket.iter_mut().for_each(fix);
    }

    /// What is missing or wrong, one line each (empty when the configuration can start).
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let ca = self.cluster.join("ca.cert.pem");
        for (what, path) in [
            ("the cluster's CA certificate", ca),
            ("this device's certificate", self.cluster.join(format!("{}.cert.pem", self.name))),
            ("this device's key", self.cluster.join(format!("{}.key.pem", self.name))),
        ] {
            if !path.exists() {
                problems.push(format!(
                    "{what} {} is missing (enrol the device: scission-cloud enroll {} --tier device)",
                    path.display(),
                    self.name
                ));
            }
        }
        let fetched = self.fetch_model && self.cloud.is_some();
        if !self.model.exists() && !fetched {
            problems.push(format!("the model {} is missing (copy it, or set fetch_model = true with a [cloud])", self.model.display()));
        }
        for profile in self.planning.profile.iter().chain(&self.planning.profiles) {
            if let Err(e) = read_profile(profile).map_err(anyhow::Error::from).and_then(|p| same_board(&p, profile)) {
                problems.push(format!("{e:#}"));
            }
        }
        if self.planning.profile.is_some() && self.cloud.is_none() {
            problems.push("[planning] profile asks the cloud to plan, but there is no [cloud] address".into());
        }
        if self.planning.profile.is_none() && self.planning.profiles.is_empty() && self.planning.split.is_none() {
            problems.push("no planning: set [planning] profile (the cloud plans), profiles (this device plans) or split".into());
        }
        for (what, server) in [("edge", &self.edge), ("cloud", &self.cloud), ("planner", &self.planner)] {
            if let Some(s) = server
                && let Err(e) = s.address.parse::<HostPort>()
            {
                problems.push(format!("[{what}] address: {e}"));
            }
        }
        if let Err(e) = self.encoding() {
            problems.push(format!("{e:#}"));
        }
        if let Some(labels) = &self.image.labels
            && !labels.exists()
        {
            problems.push(format!("the labels file {} is missing", labels.display()));
        }
        if !self.api.listen.is_empty()
            && let Err(e) = self.api.listen.parse::<SocketAddr>()
        {
            problems.push(format!("[api] listen '{}': {e}", self.api.listen));
        }
        if self.api.listen.is_empty() && self.api.unix_socket.is_none() {
            problems.push("[api] has neither a listen address nor a unix_socket: applications could not reach the service".into());
        }
        problems
    }

    fn encoding(&self) -> Result<EncodingArg> {
        clap::ValueEnum::from_str(&self.planning.encoding, true)
            .map_err(|_| anyhow::anyhow!("[planning] encoding '{}' is not one of f32, f16, int8", self.planning.encoding))
    }

    /// Where plans come from.
    pub fn planning(&self) -> Result<Planning> {
        let p = &self.planning;
        if p.split.is_none() && p.profile.is_none() && p.profiles.is_empty() {
            bail!("no planning: set [planning] profile (the cloud plans), profiles (this device plans) or split");
        }
        planning(p.split, p.profile.as_deref(), &p.profiles, &p.links)
    }

    /// The session this configuration opens.
    pub fn session(&self) -> Result<SessionConfig> {
        let peer = |server: &Option<Server>, default: &str| -> Result<Option<scission_runtime::peer::Peer>> {
            let Some(s) = server else { return Ok(None) };
            let host: HostPort = s.address.parse().map_err(|e: String| anyhow::anyhow!("{default} address: {e}"))?;
            Ok(Some(host.peer(s.name.as_deref().unwrap_or(default))))
        };
        let p = &self.planning;
        let timings =
            Timings { timeout_ms: p.timeout_ms, retry_after_ms: p.retry_after_ms, retry_max_ms: p.retry_max_ms, silence_ms: p.silence_ms };
        Ok(SessionConfig {
            cluster: self.cluster.clone(),
            name: self.name.clone(),
            edge: peer(&self.edge, "edge")?,
            cloud: peer(&self.cloud, "cloud")?,
            planner: peer(&self.planner, "cloud")?,
            planning: self.planning()?,
            policy: PolicyConfig {
                replan_period: embassy_time::Duration::from_secs(p.replan_every_s),
                drift_percent: p.drift_percent,
                ..timings.policy(&self.name)
            },
            emulate: false,
            timeout: timings.timeout(),
            encoding: self.encoding()?.into(),
            threads: self.threads.max(1),
            max_frame: DEFAULT_MAX_FRAME,
            local_fallback: p.local_fallback,
            require_plan: false,
            max_outstanding: self.api.max_outstanding.max(1),
            max_slice_bytes: self.slice_cache_mib.saturating_mul(1 << 20),
            device_memory: device_memory(self.memory_mib),
            liveness: timings.liveness(),
        })
    }

    /// Preprocessing of image inputs.
    pub fn preprocess(&self) -> Preprocess {
        Preprocess { preset: self.image.preset, resize: self.image.resize.unwrap_or(self.image.preset.default_resize()) }
    }

    /// The labels, one per line (none without a labels file).
    pub fn labels(&self) -> Result<Vec<String>> {
        let Some(path) = &self.image.labels else { return Ok(Vec::new()) };
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read the labels {}", path.display()))?;
        Ok(text.lines().map(|l| l.trim().to_string()).collect())
    }

    /// The model's name in URLs.
    pub fn model_name(&self) -> String {
        self.api
            .model_name
            .clone()
            .unwrap_or_else(|| self.model.file_stem().map_or_else(|| "model".to_string(), |s| s.to_string_lossy().into_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_or_absurd_timings_are_bounded_alike_for_serve_infer_and_run() {
        let zero = Timings { timeout_ms: 0, retry_after_ms: 0, retry_max_ms: 0, silence_ms: 0 };
        assert_eq!(zero.timeout(), Duration::from_millis(1));
        let policy = zero.policy("device");
        assert_eq!(policy.backoff_initial, embassy_time::Duration::from_millis(1));
        assert_eq!(policy.backoff_max, embassy_time::Duration::from_millis(1));
        assert_eq!(policy.busy_patience, embassy_time::Duration::from_millis(1));
        assert_eq!(zero.liveness().silence, Duration::from_millis(100));
        let odd = Timings { timeout_ms: 5000, retry_after_ms: 800, retry_max_ms: 100, silence_ms: u64::MAX };
        assert_eq!(
            odd.policy("device").backoff_max,
            embassy_time::Duration::from_millis(800),
            "the longest retry is no shorter than the first"
        );
        assert_eq!(odd.liveness().silence, Duration::from_secs(3600));
    }

    #[test]
    fn every_field_has_a_default_and_unknown_fields_are_errors() {
        let empty: Config = toml::from_str("").unwrap();
        assert_eq!(empty.api.listen, "127.0.0.1:8080");
        assert!(empty.planning.local_fallback);
        let err = toml::from_str::<Config>("[api]\nlisten_on = '1.2.3.4:5'").unwrap_err().to_string();
        assert!(err.contains("listen_on"), "{err}");
    }

    #[test]
    fn the_example_in_the_image_parses_and_flags_override_it() {
        let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../cross/image/device.toml");
        let config = read(Path::new(example)).unwrap();
        assert_eq!(config.edge.as_ref().unwrap().address, "edge.local:4434");
        let flags =
            Overrides { config: Some(example.into()), edge: Some("127.0.0.1:9".into()), no_local_fallback: true, ..Overrides::default() };
        let config = flags.load().unwrap();
        assert_eq!(config.edge.unwrap().address, "127.0.0.1:9");
        assert!(!config.planning.local_fallback);
    }

    #[test]
    fn problems_say_what_is_missing() {
        let config = Config { cluster: "/nonexistent".into(), model: "/nonexistent/m.onnx".into(), ..Config::default() };
        let problems = config.problems().join("\n");
        assert!(problems.contains("ca.cert.pem is missing"), "{problems}");
        assert!(problems.contains("the model /nonexistent/m.onnx is missing"), "{problems}");
        assert!(problems.contains("no planning"), "{problems}");
    }
}
