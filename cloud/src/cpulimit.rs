//! A CPU quota for the threads that play the device in the demo (`demo --device-cpu`), so that
//! its benchmark and its inference are both as slow as a small board's: a Linux cgroup (v1 `cpu`
//! controller, `cpu.cfs_quota_us`) that the calling thread joins; threads it starts afterwards (a
//! tokio runtime's workers and blocking pool) inherit it. Needs write access to
//! `/sys/fs/cgroup/cpu` (root, or a delegated group); elsewhere the demo says so and plays the
//! board by repeating its work instead.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Where the v1 `cpu` controller is mounted.
const CPU_ROOT: &str = "/sys/fs/cgroup/cpu";
/// The quota's period.
const PERIOD_US: u32 = 10_000;

/// A cgroup with a CPU quota, removed when dropped.
pub struct CpuLimit {
    dir: PathBuf,
    /// Share of one core, in percent.
    pub percent: u32,
}

impl CpuLimit {
    /// A new group allowed `percent` of one core (1..=100).
    pub fn new(percent: u32) -> Result<Self> {
        if !(1..=100).contains(&percent) {
            bail!("a CPU limit is 1 to 100 percent of one core, not {percent}");
        }
        let root = Path::new(CPU_ROOT);
        if !root.join("cpu.cfs_quota_us").exists() {
            bail!("no cgroup v1 cpu controller at {CPU_ROOT}");
        }
        let dir = root.join(format!("scission-demo-device-{}", std::process::id()));
        std::fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let limit = Self { dir, percent };
        limit.write("cpu.cfs_period_us", &PERIOD_US.to_string())?;
        limit.write("cpu.cfs_quota_us", &(PERIOD_US / 100 * percent).to_string())?;
        Ok(limit)
    }

    fn write(&self, file: &str, value: &str) -> Result<()> {
        let path = self.dir.join(file);
        std::fs::write(&path, value).with_context(|| format!("cannot write {value} to {}", path.display()))
    }

    /// Moves the calling thread into the group.
    pub fn enter(&self) -> Result<()> {
        self.write("tasks", &this_thread_id()?)
    }
}

impl Drop for CpuLimit {
    fn drop(&mut self) {
        // Threads still inside go back to the root group; then the group can go.
        if let Ok(tasks) = std::fs::read_to_string(self.dir.join("tasks")) {
            for task in tasks.lines() {
                let _ = std::fs::write(Path::new(CPU_ROOT).join("tasks"), task);
            }
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// The kernel's id of the calling thread (`/proc/thread-self` links to `PID/task/TID`).
fn this_thread_id() -> Result<String> {
    let link = std::fs::read_link("/proc/thread-self").context("cannot read /proc/thread-self")?;
    link.file_name().map(|t| t.to_string_lossy().into_owned()).context("no thread id in /proc/thread-self")
}
