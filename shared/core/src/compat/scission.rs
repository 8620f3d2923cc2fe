//! The original Scission's inputs and outputs, mapped onto the solver.
//!
//! - `<tier>-<machine>.dat`: a pickle of `{model: [LayerBenchmark, ...]}`, each record holding
//!   `input_layer`, `output_layer` (inclusive Keras layer indices), `second_prediction` (mean
//!   seconds) and `output_size` (bytes as saved by `numpy.save`);
//! - `network_stats.csv`: `source,destination,ping(ms),bandwidth(mbps)`;
//! - criteria per tier: `N` (Keras layer N runs here), `!N`, `-1` (tier unused), `!-1` (tier
//!   used), `name` (use that machine), `!name` (exclude it), comma-separated; a machine whose
//!   name is a number (`2500`) is written `@2500`;
//! - its cost model: no return hop, no message overhead, raw input of `-i` MB.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use super::pickle::{self, Value};
use crate::profile::TierKind;
use crate::solver::{ComputeCap, Constraints, CostOptions, Link, Machine, Plan, Problem};

/// One block of a legacy benchmark.
#[derive(Clone, Debug, PartialEq)]
pub struct LegacyBlock {
    /// First Keras layer of the block.
    pub input_layer: u32,
    /// Last Keras layer of the block (inclusive).
    pub output_layer: u32,
    /// Mean seconds per call.
    pub seconds: f64,
    /// Bytes of the block's output as `numpy.save` writes it.
    pub output_size: u64,
}

/// One machine's legacy benchmark file.
#[derive(Clone, Debug, PartialEq)]
pub struct LegacyMachine {
    /// Its tier, from the file name.
    pub tier: TierKind,
    /// Its name, from the file name.
    pub name: String,
    /// Model name -> blocks in execution order.
    pub models: BTreeMap<String, Vec<LegacyBlock>>,
}

/// A row of the network CSV.
#[derive(Clone, Debug, PartialEq)]
pub struct NetworkRow {
    /// Sending machine.
    pub source: String,
    /// Receiving machine.
    pub destination: String,
    /// Round-trip-style latency in milliseconds, as the original charges it per hop.
    pub ping_ms: f64,
    /// Bandwidth in megabits per second.
    pub mbps: f64,
}

/// One criterion of `-d`, `-e` or `-c`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Criterion {
    /// `N`: Keras layer N runs on this tier.
    Layer(u32),
    /// `!N`: it does not.
    NotLayer(u32),
    /// `-1`: the tier runs nothing.
    Unused,
    /// `!-1`: the tier runs something.
    Used,
    /// `name`: use this machine for the tier.
    Machine(String),
    /// `!name`: do not use this machine.
    NotMachine(String),
}

impl core::fmt::Display for Criterion {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Criterion::Layer(n) => write!(f, "{n}"),
            Criterion::NotLayer(n) => write!(f, "!{n}"),
            Criterion::Unused => f.write_str("-1"),
            Criterion::Used => f.write_str("!-1"),
            Criterion::Machine(name) => write!(f, "@{name}"),
            Criterion::NotMachine(name) => write!(f, "!@{name}"),
        }
    }
}

/// Legacy limits besides the criteria.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LegacyLimits {
    /// `--device-upload`, `--edge-upload` in bytes.
    pub upload: [Option<u64>; 2],
    /// `--device-time`, `--edge-time`, `--cloud-time`.
    pub time: [Option<ComputeCap>; 3],
}

/// Why legacy input was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CompatError {
    /// The benchmark file is not a pickle of the expected shape.
    #[error("{file}: {message}")]
    Benchmark {
        /// File name.
        file: String,
        /// What is wrong.
        message: String,
    },
    /// The file name does not say `<tier>-<machine>.dat`.
    #[error("{0}: benchmark files are named <device|edge|cloud>-<machine>.dat")]
    FileName(String),
    /// A CSV line is malformed.
    #[error("network CSV line {line}: {message}")]
    Csv {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A criterion is malformed or names something unknown.
    #[error("criterion '{criterion}' for the {tier}: {message}")]
    Criterion {
        /// Tier it was given for.
        tier: &'static str,
        /// The criterion text.
        criterion: String,
        /// What is wrong.
        message: String,
    },
    /// The machines disagree about the model.
    #[error("{0}")]
    Mismatch(String),
}

/// Splits `device-raspi4.dat` into its tier and machine name.
pub fn parse_file_name(file: &str) -> Result<(TierKind, String), CompatError> {
    let stem = file.strip_suffix(".dat").ok_or_else(|| CompatError::FileName(file.to_string()))?;
    let (tier, name) = stem.split_once('-').ok_or_else(|| CompatError::FileName(file.to_string()))?;
    let tier = match tier {
        "device" => TierKind::Device,
        "edge" => TierKind::Edge,
        "cloud" => TierKind::Cloud,
        _ => return Err(CompatError::FileName(file.to_string())),
    };
    if name.is_empty() {
        return Err(CompatError::FileName(file.to_string()));
    }
    Ok((tier, name.to_string()))
}

/// Reads one legacy benchmark file (its name gives tier and machine).
pub fn read_benchmark(file: &str, data: &[u8]) -> Result<LegacyMachine, CompatError> {
    let (tier, name) = parse_file_name(file)?;
    let bad = |message: String| CompatError::Benchmark { file: file.to_string(), message };
    let p = pickle::read(data, &[("__main__", "LayerBenchmark")]).map_err(|e| bad(e.to_string()))?;
    let Value::Dict(models) = &p.values[p.root] else { return Err(bad("the top level is not a dict".into())) };
    let mut out = BTreeMap::new();
    for &(k, v) in models {
        let Value::Str(model) = &p.values[k] else { return Err(bad("a model name is not a string".into())) };
        let Value::List(records) = &p.values[v] else { return Err(bad(format!("{model}: blocks are not a list"))) };
        let blocks = records.iter().map(|&r| legacy_block(&p, r)).collect::<Result<Vec<_>, _>>();
        out.insert(model.clone(), blocks.map_err(|m| bad(format!("{model}: {m}")))?);
    }
    Ok(LegacyMachine { tier, name, models: out })
}

fn legacy_block(p: &pickle::Pickle, record: usize) -> Result<LegacyBlock, String> {
    let Value::Instance { state: Some(state), .. } = &p.values[record] else { return Err("a block is not a LayerBenchmark".into()) };
    let Value::Dict(fields) = &p.values[*state] else { return Err("a block has no attributes".into()) };
    let field = |name: &str| fields.iter().find(|(k, _)| matches!(&p.values[*k], Value::Str(s) if s == name)).map(|&(_, v)| &p.values[v]);
    let int = |name: &str| match field(name) {
        Some(Value::Int(i)) if *i >= 0 => Ok(*i as u64),
        _ => Err(format!("field '{name}' is missing or not a non-negative integer")),
    };
    let seconds = match field("second_prediction") {
        Some(Value::Float(f)) if f.is_finite() && *f >= 0.0 => *f,
        Some(Value::Int(i)) if *i >= 0 => *i as f64,
        _ => return Err("field 'second_prediction' is missing or not a non-negative number".into()),
    };
    let layer = |name: &str| int(name).and_then(|v| u32::try_from(v).map_err(|_| format!("field '{name}' is too large")));
    Ok(LegacyBlock { input_layer: layer("input_layer")?, output_layer: layer("output_layer")?, seconds, output_size: int("output_size")? })
}

/// Reads the network CSV (header `source,destination,ping(ms),bandwidth(mbps)`; fields may be
/// padded with spaces).
pub fn read_network_csv(text: &str) -> Result<Vec<NetworkRow>, CompatError> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if line.trim().is_empty() || (line_no == 1 && fields.first().is_some_and(|f| f.eq_ignore_ascii_case("source"))) {
            continue;
        }
        let bad = |message: String| CompatError::Csv { line: line_no, message };
        let [source, destination, ping, mbps] = fields[..] else {
            return Err(bad(format!("expected 4 fields (source,destination,ping(ms),bandwidth(mbps)), found {}", fields.len())));
        };
        let number = |text: &str, what: &str| match text.parse::<f64>() {
            Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
            _ => Err(bad(format!("{what} '{text}' is not a non-negative number"))),
        };
        let (ping_ms, mbps) = (number(ping, "ping")?, number(mbps, "bandwidth")?);
        if mbps == 0.0 {
            return Err(bad("bandwidth is zero".into()));
        }
        rows.push(NetworkRow { source: source.to_string(), destination: destination.to_string(), ping_ms, mbps });
    }
    Ok(rows)
}

/// Parses a comma-separated criteria string such as `!-1`, `10,!12`, `raspi4`.
pub fn parse_criteria(tier: &'static str, text: &str) -> Result<Vec<Criterion>, CompatError> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| {
            let (negated, body) = match item.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, item),
            };
            if body.is_empty() {
                return Err(CompatError::Criterion { tier, criterion: item.to_string(), message: "nothing after '!'".into() });
            }
            if let Some(name) = body.strip_prefix('@') {
                return Ok(if negated { Criterion::NotMachine(name.to_string()) } else { Criterion::Machine(name.to_string()) });
            }
            Ok(match (body.parse::<i64>(), negated) {
                (Ok(-1), false) => Criterion::Unused,
                (Ok(-1), true) => Criterion::Used,
                (Ok(n), _) if n < 0 || n > i64::from(u32::MAX) => {
                    return Err(CompatError::Criterion {
                        tier,
                        criterion: item.to_string(),
                        message: "layer numbers are 0 or more (or -1)".into(),
                    });
                }
                (Ok(n), false) => Criterion::Layer(n as u32),
                (Ok(n), true) => Criterion::NotLayer(n as u32),
                (Err(_), false) => Criterion::Machine(body.to_string()),
                (Err(_), true) => Criterion::NotMachine(body.to_string()),
            })
        })
        .collect()
}

/// A legacy instance turned into a solver problem.
#[derive(Clone, Debug, PartialEq)]
pub struct LegacyPlanning {
    /// The problem (tiers device, edge, cloud).
    pub problem: Problem,
    /// The constraints from the criteria and limits.
    pub constraints: Constraints,
    /// Keras layer range of each block.
    pub layers: Vec<(u32, u32)>,
}

const TIERS: [(TierKind, &str); 3] = [(TierKind::Device, "device"), (TierKind::Edge, "edge"), (TierKind::Cloud, "cloud")];

/// Builds the problem for `model` from legacy machines, network rows, the raw input size and
/// per-tier criteria (device, edge, cloud).
pub fn build(
    machines: &[LegacyMachine],
    model: &str,
    network: &[NetworkRow],
    input_bytes: u64,
    criteria: &[Vec<Criterion>; 3],
    limits: &LegacyLimits,
) -> Result<LegacyPlanning, CompatError> {
    let mut sorted: Vec<&LegacyMachine> = machines.iter().collect();
    sorted.sort_by(|a, b| (a.tier, &a.name).cmp(&(b.tier, &b.name)));
    let reference = legacy_blocks(&sorted, model)?;
    let layers: Vec<(u32, u32)> = reference.iter().map(|b| (b.input_layer, b.output_layer)).collect();
    let mut solver_machines = Vec::new();
    for m in &sorted {
        let blocks = &m.models[model];
        if blocks.iter().map(|b| (b.input_layer, b.output_layer)).ne(layers.iter().copied()) {
            return Err(CompatError::Mismatch(format!("machine '{}' splits {model} into different blocks", m.name)));
        }
        let tier = TIERS.iter().position(|(t, _)| *t == m.tier).unwrap_or(0);
        let block_ns = blocks.iter().map(|b| round(b.seconds * 1e9)).collect();
        solver_machines.push(Machine::new(m.name.clone(), tier, block_ns));
    }
    let n = reference.len();
    let boundary_bytes = core::iter::once(input_bytes).chain(reference.iter().map(|b| b.output_size)).collect();
    let problem = Problem {
        tiers: TIERS.iter().map(|(_, name)| name.to_string()).collect(),
        links: links(&solver_machines, network),
        machines: solver_machines,
        boundary_bytes,
        input_bytes,
        block_weight_bytes: alloc::vec![0; n],
        block_activation_bytes: alloc::vec![0; n],
        options: CostOptions::scission_compatible(),
    };
    let constraints = build_constraints(&problem, &layers, criteria, limits)?;
    Ok(LegacyPlanning { problem, constraints, layers })
}

fn legacy_blocks<'a>(machines: &[&'a LegacyMachine], model: &str) -> Result<&'a Vec<LegacyBlock>, CompatError> {
    let first = machines.first().ok_or_else(|| CompatError::Mismatch("no benchmark files were given".into()))?;
    for m in machines {
        if !m.models.contains_key(model) {
            let known: Vec<&str> = m.models.keys().map(String::as_str).collect();
            return Err(CompatError::Mismatch(format!(
                "machine '{}' has no benchmark of '{model}' (it has: {})",
                m.name,
                known.join(", ")
            )));
        }
    }
    let blocks = &first.models[model];
    if blocks.is_empty() {
        return Err(CompatError::Mismatch(format!("'{model}' has no blocks")));
    }
    Ok(blocks)
}

/// Rounds a non-negative figure to the nearest integer (no_std has no `f64::round`).
fn round(x: f64) -> u64 {
    (x + 0.5) as u64
}

fn links(machines: &[Machine], network: &[NetworkRow]) -> Vec<(usize, usize, Link)> {
    let index = |name: &str| machines.iter().position(|m| m.name == name);
    network
        .iter()
        .filter_map(|row| {
            let link = Link { latency_ns: round(row.ping_ms * 1e6), bits_per_sec: round(row.mbps * 1e6) };
            Some((index(&row.source)?, index(&row.destination)?, link))
        })
        .collect()
}

/// Turns criteria and limits into constraints; `layers` gives each block's layer range (use
/// `(b, b)` to address blocks directly).
pub fn build_constraints(
    problem: &Problem,
    layers: &[(u32, u32)],
    criteria: &[Vec<Criterion>; 3],
    limits: &LegacyLimits,
) -> Result<Constraints, CompatError> {
    let mut c = Constraints::default();
    for (role, list) in criteria.iter().enumerate() {
        let role_name = TIERS[role].1;
        let tier = match role_tier(problem, role) {
            Some(t) => t,
            None if list.is_empty() => continue,
            None => {
                let criterion = list.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
                return Err(CompatError::Criterion { tier: role_name, criterion, message: "this chain has no edge tier".into() });
            }
        };
        let tier_name = problem.tiers[tier].as_str();
        for criterion in list {
            let bad = |message: String| CompatError::Criterion { tier: role_name, criterion: criterion.to_string(), message };
            let block_of = |layer: u32| {
                layers.iter().position(|&(a, b)| a <= layer && layer <= b).ok_or_else(|| bad(format!("the model has no layer {layer}")))
            };
            let machine = |name: &str| {
                problem
                    .machine_index(name)
                    .filter(|&m| problem.machines[m].tier == tier)
                    .ok_or_else(|| bad(format!("no {tier_name} machine is called '{name}'")))
            };
            match criterion {
                Criterion::Layer(l) => c.pin.push((block_of(*l)?, tier)),
                Criterion::NotLayer(l) => c.forbid.push((block_of(*l)?, tier)),
                Criterion::Unused => c.must_not_use.push(tier),
                Criterion::Used => c.must_use.push(tier),
                Criterion::Machine(name) => {
                    let keep = machine(name)?;
                    let others = (0..problem.machines.len()).filter(|&m| m != keep && problem.machines[m].tier == tier);
                    c.exclude_machines.extend(others);
                }
                Criterion::NotMachine(name) => c.exclude_machines.push(machine(name)?),
            }
        }
    }
    for (role, cap) in limits.upload.iter().enumerate() {
        c.upload_cap.extend(cap.and_then(|b| Some((role_tier(problem, role)?, b))));
    }
    for (role, cap) in limits.time.iter().enumerate() {
        c.compute_cap.extend(cap.and_then(|t| Some((role_tier(problem, role)?, t))));
    }
    Ok(c)
}

/// The tier playing a role of the original's chain (0 device, 1 edge, 2 cloud) in `problem`'s
/// chain: the first tier, the second (only in chains of three or more), the last.
fn role_tier(problem: &Problem, role: usize) -> Option<usize> {
    let last = problem.tiers.len().checked_sub(1)?;
    match role {
        0 => Some(0),
        1 => (last >= 2).then_some(1),
        _ => Some(last),
    }
}

/// One result line as the original prints it:
/// `[1] 9.0106s - 2.4087MB - Device(raspi4) = 0 - 6, Edge(vm2Core) = 7 - 11, ...`.
pub fn format_line(rank: usize, problem: &Problem, layers: &[(u32, u32)], plan: &Plan) -> String {
    let parts: Vec<String> = plan
        .segments
        .iter()
        .filter(|s| s.end > s.start)
        .map(|s| {
            let tier = match s.tier {
                0 => "Device",
                1 => "Edge",
                _ => "Cloud",
            };
            let name = &problem.machines[s.machine].name;
            format!("{tier}({name}) = {} - {}", layers[s.start].0, layers[s.end - 1].1)
        })
        .collect();
    format!("[{rank}] {:.4}s - {:.4}MB - {}", plan.cost.latency_ns as f64 * 1e-9, plan.cost.total_bytes as f64 * 1e-6, parts.join(", "))
}
