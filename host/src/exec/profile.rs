//! What one function's calls cost in this process, always on: calls, the
//! CPU they took on the host's threads, and the time they waited for a
//! sync-lane thread. Cumulative counters, read by the worker's statistics
//! report (and summed across workers by the supervisor).
//!
//! CPU is the thread's own clock around a sync-lane call (a call blocked
//! in a host wait uses none), the time spent inside the polls of an
//! async-lane call (a waiting call is not polled), and for a WASIp3
//! instance, whose calls share one guest event loop, the time its guest
//! code runs, less its waits at epoch yields: what the seed's advice
//! needs, I/O-bound or CPU-bound, for about two clock reads per call.
//! A sync-lane thread that was ready to run but had no core is neither
//! working nor waiting on I/O; the kernel counts that time per thread
//! (`/proc/self/task/TID/schedstat`), and a snapshot adds it up for the
//! function's threads, so a loaded machine does not make a CPU-bound
//! function look as if it waited.
//!
//! The profile also carries the sync lane's thread count and how often
//! `--threads auto` changed it, so `GET /functions` shows them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// One function's cumulative costs in this process.
#[derive(Debug, Default)]
pub struct Profile {
    calls: AtomicU64,
    cpu_ns: AtomicU64,
    queued_ns: AtomicU64,
    /// The function's sync-lane threads, by kernel thread id, each with
    /// its schedstat kept open.
    threads: std::sync::Mutex<Vec<(libc::pid_t, OwnRunDelay)>>,
    /// Time ready without a core of the sync-lane threads that have left.
    left_descheduled_ns: AtomicU64,
    /// Sync-lane threads running now.
    sync_threads: AtomicU64,
    /// Changes `--threads auto` made.
    thread_changes: AtomicU64,
}

/// A reading of a [`Profile`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProfileSnapshot {
    /// Calls finished.
    pub calls: u64,
    /// CPU they took, in nanoseconds.
    pub cpu_ns: u64,
    /// Time they waited for a lane slot, in nanoseconds.
    pub queued_ns: u64,
    /// Time the function's sync-lane threads were ready to run but had no
    /// core, in nanoseconds.
    #[serde(default)]
    pub descheduled_ns: u64,
    /// Sync-lane threads running now (a gauge, not a sum over time).
    #[serde(default)]
    pub sync_threads: u64,
    /// Changes `--threads auto` made to the thread count.
    #[serde(default)]
    pub thread_changes: u64,
}

impl Profile {
    /// Counts one finished call.
    pub fn record(&self, cpu: Duration, queued: Duration) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.cpu_ns.fetch_add(nanos(cpu), Ordering::Relaxed);
        self.queued_ns.fetch_add(nanos(queued), Ordering::Relaxed);
    }

    /// Adds CPU that no single call owns: a WASIp3 instance's guest runs
    /// serve all the calls on it at once (`exec/stall.rs`), which are
    /// counted with [`Profile::record`] and no CPU.
    pub fn add_cpu(&self, cpu: Duration) {
        self.cpu_ns.fetch_add(nanos(cpu), Ordering::Relaxed);
    }

    /// Counts the calling thread as one of the function's sync-lane threads.
    pub fn add_this_thread(&self) {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        let delay = OwnRunDelay::open();
        self.threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((tid, delay));
    }

    /// No longer counts the calling thread, which is leaving; keeps the
    /// time it spent ready without a core.
    pub fn remove_this_thread(&self) {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        let mut threads = self.threads.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(at) = threads.iter().position(|(other, _)| *other == tid) {
            let (_, delay) = threads.swap_remove(at);
            self.left_descheduled_ns
                .fetch_add(nanos(delay.now()), Ordering::Relaxed);
        }
    }

    /// Records that the sync lane runs `threads` threads now.
    pub fn set_threads(&self, threads: usize) {
        self.sync_threads.store(threads as u64, Ordering::Relaxed);
    }

    /// Counts one change `--threads auto` made.
    pub fn count_thread_change(&self) {
        self.thread_changes.fetch_add(1, Ordering::Relaxed);
    }

    /// Time the function's sync-lane threads, present and past, have been
    /// ready to run without a core, in nanoseconds.
    pub fn descheduled_ns(&self) -> u64 {
        // Read under the lock (one `pread` a thread): a thread leaving
        // moves its time from one count to the other.
        let threads = self.threads.lock().unwrap_or_else(|e| e.into_inner());
        let present: u64 = threads.iter().map(|(_, delay)| nanos(delay.now())).sum();
        present + self.left_descheduled_ns.load(Ordering::Relaxed)
    }

    /// The counts so far.
    pub fn snapshot(&self) -> ProfileSnapshot {
        ProfileSnapshot {
            calls: self.calls.load(Ordering::Relaxed),
            cpu_ns: self.cpu_ns.load(Ordering::Relaxed),
            queued_ns: self.queued_ns.load(Ordering::Relaxed),
            descheduled_ns: self.descheduled_ns(),
            sync_threads: self.sync_threads.load(Ordering::Relaxed),
            thread_changes: self.thread_changes.load(Ordering::Relaxed),
        }
    }
}

/// The calling thread's own schedstat, kept open: one `pread` per reading
/// (about a microsecond) instead of an open, a read and a close. Any
/// thread may read it; it stays the opening thread's.
#[derive(Debug)]
pub struct OwnRunDelay(Option<std::fs::File>);

impl OwnRunDelay {
    /// Opens the calling thread's schedstat; readings are 0 if it cannot.
    pub fn open() -> Self {
        Self(std::fs::File::open("/proc/thread-self/schedstat").ok())
    }

    /// Time the thread has spent ready to run without a core so far.
    pub fn now(&self) -> Duration {
        use std::os::unix::fs::FileExt;
        let Some(file) = &self.0 else {
            return Duration::ZERO;
        };
        let mut buffer = [0u8; 96];
        let read = file.read_at(&mut buffer, 0).unwrap_or(0);
        let nanos = std::str::from_utf8(&buffer[..read])
            .ok()
            .and_then(|text| text.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0);
        Duration::from_nanos(nanos)
    }
}

/// `duration` in nanoseconds, saturating.
pub(crate) fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// CPU time the calling thread has used so far.
pub fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only into the timespec we own.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) } == 0;
    if !ok {
        return Duration::ZERO;
    }
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_thread_sees_its_cpu_clock_move_and_a_sleeping_one_does_not() {
        let before = thread_cpu_time();
        let mut x = 0u64;
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_millis(20) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let busy = thread_cpu_time() - before;
        let before = thread_cpu_time();
        std::thread::sleep(Duration::from_millis(20));
        let slept = thread_cpu_time() - before;
        assert!(busy > slept * 4, "busy {busy:?}, slept {slept:?}");
        let profile = Profile::default();
        profile.record(Duration::from_millis(3), Duration::from_millis(1));
        assert_eq!(
            profile.snapshot(),
            ProfileSnapshot {
                calls: 1,
                cpu_ns: 3_000_000,
                queued_ns: 1_000_000,
                ..ProfileSnapshot::default()
            }
        );
        profile.add_this_thread();
        // Readable for a thread of this process (0 is a valid reading).
        let _ = profile.snapshot().descheduled_ns;
        // The kept-open reading moves forward, never back.
        let own = OwnRunDelay::open();
        let first = own.now();
        std::thread::yield_now();
        assert!(own.now() >= first);
    }
}
