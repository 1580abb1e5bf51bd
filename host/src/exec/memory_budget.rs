//! How much memory `--threads auto` may let this process hold (Linux).
//!
//! A thread of the sync lane keeps a warm instance: a CPython instance
//! holds about 9 MiB resident, so a Python `def` function that waits on
//! I/O, grown to 200 threads, held 2 GiB in one worker (docs/performance.md,
//! "A memory budget for `--threads auto`"). The controller therefore grows
//! a lane only while the process's resident memory, plus what the new
//! threads would hold, stays within a budget, and gives threads back when
//! the process is over it:
//!
//! - `--threads-memory` when it is set;
//! - otherwise [`AUTO_MEMORY_SHARE`] of the memory this process may use
//!   (the cgroup's limit, or the machine's memory when it is lower or
//!   there is none), divided among the host's worker processes;
//! - and never more than `--worker-memory`.
//!
//! A fixed `--threads N` is the user's choice and is not limited by it.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Share of the memory available to the host that `--threads auto` may
/// fill by default; the rest is left to the rest of the machine and to the
/// host's own growth (request bodies, other lanes).
pub const AUTO_MEMORY_SHARE: f64 = 0.5;

/// What a sync-lane thread holds besides its instance's linear memory: its
/// stack as touched by a call, and the instance's tables and bookkeeping.
pub const THREAD_OVERHEAD: u64 = 1 << 20;

/// What the budget is made from.
#[derive(Clone, Copy, Debug)]
pub struct BudgetSettings {
    /// `--threads-memory`, in bytes.
    pub explicit: Option<u64>,
    /// The most worker processes the host runs at once (1 in process).
    pub processes: usize,
    /// `--worker-memory`, in bytes.
    pub worker_memory: Option<u64>,
}

static SETTINGS: OnceLock<BudgetSettings> = OnceLock::new();

static LANES: AtomicUsize = AtomicUsize::new(0);

/// One `--threads auto` lane sharing the budget, for as long as it lives.
#[must_use = "the lane shares the budget while this lives"]
pub struct LaneShare(());

impl LaneShare {
    /// Counts a lane in.
    pub fn join() -> Self {
        LANES.fetch_add(1, Ordering::Relaxed);
        Self(())
    }
}

impl Drop for LaneShare {
    fn drop(&mut self) {
        LANES.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The `--threads auto` lanes sharing the budget now (at least 1).
pub fn lanes() -> usize {
    LANES.load(Ordering::Relaxed).max(1)
}

/// Sets what the budget is made from; once per process, before any lane
/// starts (a later call changes nothing). Without it: the default share,
/// one process.
pub fn configure(settings: BudgetSettings) {
    let _ = SETTINGS.set(settings);
}

/// The budget in bytes of resident memory, worked out on first use;
/// `None` when nothing could be read (the controller then has no memory
/// ceiling).
pub fn budget() -> Option<u64> {
    static BUDGET: OnceLock<Option<u64>> = OnceLock::new();
    *BUDGET.get_or_init(|| {
        let settings = SETTINGS.get().copied().unwrap_or(BudgetSettings {
            explicit: None,
            processes: 1,
            worker_memory: None,
        });
        let budget = match settings.explicit {
            Some(bytes) => bytes,
            None => {
                let available = match (machine_memory(), cgroup_memory_limit()) {
                    (Some(machine), Some(cgroup)) => machine.min(cgroup),
                    (machine, cgroup) => machine.or(cgroup)?,
                };
                (available as f64 * AUTO_MEMORY_SHARE / settings.processes.max(1) as f64) as u64
            }
        };
        Some(
            settings
                .worker_memory
                .map_or(budget, |limit| budget.min(limit)),
        )
    })
}

/// This process's resident memory now, in bytes (`/proc/self/statm`).
pub fn resident() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

/// `MemTotal` from `/proc/meminfo`.
fn machine_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|line| line.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The memory limit of this process's cgroup: `memory.max` (v2) or
/// `memory.limit_in_bytes` (v1); `None` when unlimited or unreadable.
fn cgroup_memory_limit() -> Option<u64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let candidates = cgroups.lines().filter_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        match controllers {
            "" => Some(format!("/sys/fs/cgroup{path}/memory.max")),
            list if list.split(',').any(|c| c == "memory") => {
                Some(format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes"))
            }
            _ => None,
        }
    });
    candidates
        .filter_map(|file| std::fs::read_to_string(file).ok())
        .find_map(|text| text.trim().parse::<u64>().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_budget_and_holds_less_than_it() {
        let budget = budget().expect("a budget on Linux");
        let resident = resident().expect("statm on Linux");
        assert!(resident > 0 && resident < budget, "{resident} of {budget}");
    }
}
