//! Facts about the machine a benchmark runs on.

use scission_core::profile::{MachineFacts, TierKind};

/// Describes this machine as `name` in `tier`, using `threads` engine threads.
pub fn machine_facts(name: &str, tier: TierKind, threads: usize) -> MachineFacts {
    MachineFacts {
        name: name.to_string(),
        tier,
        arch: std::env::consts::ARCH.to_string(),
        os: std::env::consts::OS.to_string(),
        cpu_model: cpu_model().unwrap_or_else(|| "unknown".to_string()),
        cores: available_cores() as u32,
        threads: threads as u32,
    }
}

/// Logical cores this process may use (1 when unknown).
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The CPU model from `/proc/cpuinfo` (`model name` on x86, `Model` or `Hardware` on ARM boards).
fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    ["model name", "Model", "Hardware", "CPU part"].iter().find_map(|key| {
        info.lines().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            (k.trim() == *key).then(|| v.trim().to_string())
        })
    })
}

/// The hostname, for default machine names.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}
