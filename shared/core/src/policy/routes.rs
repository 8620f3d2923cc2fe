//! Routes from plans: a fixed split, or a solver plan's segments as node ranges per tier.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use crate::profile::BlockProfile;
use crate::solver::Plan;
use crate::wire::message::Stage;

/// A route as one line: `device[0,12) edge[12,40) cloud[40,58)` (tiers past the cloud as
/// `tierN`).
pub fn describe_route(stages: &[Stage]) -> String {
    let mut line = String::new();
    for (i, s) in stages.iter().enumerate() {
        let separator = if i == 0 { "" } else { " " };
        let _ = match s.tier {
            0 => write!(line, "{separator}device[{},{})", s.start, s.end),
            1 => write!(line, "{separator}edge[{},{})", s.start, s.end),
            2 => write!(line, "{separator}cloud[{},{})", s.start, s.end),
            t => write!(line, "{separator}tier{t}[{},{})", s.start, s.end),
        };
    }
    line
}

/// Why a fixed split is not a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("split {device_end},{edge_end} must satisfy 0 <= device end <= edge end <= {nodes}")]
pub struct BadSplit {
    /// Where the device's range ends.
    pub device_end: usize,
    /// Where the edge's range ends.
    pub edge_end: usize,
    /// Compute nodes in the model.
    pub nodes: usize,
}

/// The route for a split of `nodes` nodes: the device runs `[0, device_end)`, the edge
/// `[device_end, edge_end)`, the cloud the rest; empty ranges are skipped.
pub fn split_route(device_end: usize, edge_end: usize, nodes: usize) -> Result<Vec<Stage>, BadSplit> {
    let bad = BadSplit { device_end, edge_end, nodes };
    if !(device_end <= edge_end && edge_end <= nodes) {
        return Err(bad);
    }
    let end = u32::try_from(nodes).map_err(|_| bad)?;
    let (a, b) = (device_end as u32, edge_end as u32);
    Ok([(0u8, 0, a), (1, a, b), (2, b, end)]
        .into_iter()
        .filter(|(_, s, e)| s < e)
        .map(|(tier, start, end)| Stage { tier, machine: 0, start, end })
        .collect())
}

/// The route of a solver plan over `blocks`: each non-empty segment's blocks as one node range
/// on its tier, run by the machine `machine_of` names for the segment's solver machine. `None`
/// when the plan does not fit the blocks (another model's plan).
pub fn plan_route(plan: &Plan, blocks: &[BlockProfile], machine_of: impl Fn(usize) -> u8) -> Option<Vec<Stage>> {
    plan.segments
        .iter()
        .filter(|s| s.end > s.start)
        .map(|s| {
            let first = blocks.get(s.start)?;
            let last = blocks.get(s.end - 1)?;
            Some(Stage {
                tier: u8::try_from(s.tier).ok()?,
                machine: machine_of(s.machine),
                start: u32::try_from(first.range.start).ok()?,
                end: u32::try_from(last.range.end).ok()?,
            })
        })
        .collect()
}
