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
        // The profile says what its figures are of when this process plays a slower board.
        emulated_slowdown: Some(crate::slower::factor()).filter(|&n| n > 1),
    }
}

/// Logical cores this process may use (1 when unknown).
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Memory this process may use, in bytes: the smallest of its cgroup's limit (v1 or v2) and
/// the system's available memory (`MemAvailable`); `None` where neither can be read.
pub fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok().and_then(|info| {
        let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
        line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kib| kib.saturating_mul(1024))
    });
    [meminfo, cgroup_memory_limit()].into_iter().flatten().min()
}

/// This process's resident set now (`VmRSS`), in bytes, where `/proc` has it.
pub fn resident_bytes() -> Option<u64> {
    proc_status_kib("VmRSS:").map(|kib| kib.saturating_mul(1024))
}

/// The most this process has had resident (`VmHWM`), in bytes, where `/proc` has it.
pub fn peak_resident_bytes() -> Option<u64> {
    proc_status_kib("VmHWM:").map(|kib| kib.saturating_mul(1024))
}

/// A KiB figure of `/proc/self/status`.
fn proc_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// This process's cgroup memory limit, v1 (`memory.limit_in_bytes`) or v2 (`memory.max`).
fn cgroup_memory_limit() -> Option<u64> {
    let groups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    groups.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let file = if controllers.split(',').any(|c| c == "memory") {
            format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes")
        } else if controllers.is_empty() {
            format!("/sys/fs/cgroup{path}/memory.max")
        } else {
            return None;
        };
        // "max" (v2) and the v1 "no limit" value (about 2^63) are no limit.
        std::fs::read_to_string(file).ok()?.trim().parse::<u64>().ok().filter(|&b| b < 1 << 62)
    })
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
