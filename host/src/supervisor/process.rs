//! Starting a worker process, hardened (Linux).
//!
//! The worker is this very binary (`/proc/self/exe`, so replacing the file
//! on disk cannot start a different version) running the hidden `worker`
//! subcommand. Between fork and exec the child:
//!
//! - moves to its own process group, so a terminal's Ctrl-C reaches only the
//!   supervisor, which drains and then stops its workers;
//! - asks for SIGKILL when the supervisor dies (`PR_SET_PDEATHSIG`), and
//!   exits if the supervisor is already gone;
//! - sets `no_new_privs`, so nothing it runs can gain privileges;
//! - gets resource limits: no core dumps (they would hold guest memory),
//!   [`WORKER_OPEN_FILES`] file descriptors, and `--worker-memory` as
//!   `RLIMIT_DATA` when set;
//! - gets its end of the channel as fd 3, and nothing else: the environment
//!   is cleared, stdin is `/dev/null`, and every descriptor above 3 is
//!   closed at exec (`close_range` with `CLOSE_RANGE_CLOEXEC`), including
//!   any the supervisor itself inherited.
//!
//! See docs/security.md for what this does and does not isolate.

use crate::worker::CHANNEL_FD;
use std::os::fd::{AsRawFd, RawFd};
use std::process::Stdio;

/// Soft limit on a worker's open file descriptors (capped by the hard limit).
pub const WORKER_OPEN_FILES: u64 = 16_384;

/// OS limits applied to every worker.
#[derive(Clone, Copy, Debug, Default)]
pub struct WorkerLimits {
    /// `RLIMIT_DATA` in bytes (`--worker-memory`): the worker's writable
    /// private memory, heap and guest memories included.
    pub memory: Option<u64>,
}

/// A started worker and the supervisor's end of its channel.
pub struct WorkerProcess {
    /// The child process.
    pub child: tokio::process::Child,
    /// Its process id.
    pub pid: u32,
    /// The supervisor's end of the channel.
    pub channel: tokio::net::UnixStream,
}

/// Starts a worker. Must be called from a thread that lives as long as the
/// supervisor (a runtime worker thread, not a blocking-pool thread):
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked exits.
pub fn spawn(limits: WorkerLimits) -> std::io::Result<WorkerProcess> {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    let their_fd = theirs.as_raw_fd();
    // SAFETY: getpid has no preconditions.
    let supervisor_pid = unsafe { libc::getpid() };
    let mut command = tokio::process::Command::new("/proc/self/exe");
    command
        .arg0("fnhost")
        .arg("worker")
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    // SAFETY: the closure runs in the forked child before exec and calls
    // only async-signal-safe functions (setpgid, prctl, getppid, setrlimit,
    // getrlimit, dup2, fcntl, close_range) on values copied in before the
    // fork, and allocates nothing.
    unsafe {
        command.pre_exec(move || harden_child(their_fd, supervisor_pid, limits));
    }
    let child = command.spawn()?;
    drop(theirs);
    let pid = child.id().unwrap_or(0);
    ours.set_nonblocking(true)?;
    Ok(WorkerProcess {
        child,
        pid,
        channel: tokio::net::UnixStream::from_std(ours)?,
    })
}

/// Runs in the child between fork and exec; see the module documentation.
fn harden_child(
    channel_fd: RawFd,
    supervisor_pid: libc::pid_t,
    limits: WorkerLimits,
) -> std::io::Result<()> {
    let check = |result: libc::c_int| {
        if result == -1 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    // SAFETY (all calls): async-signal-safe libc calls on plain values.
    unsafe {
        check(libc::setpgid(0, 0))?;
        check(libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        ))?;
        if libc::getppid() != supervisor_pid {
            // The supervisor died before the death signal was armed.
            return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
        }
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
        set_limit(libc::RLIMIT_CORE, 0)?;
        set_limit(libc::RLIMIT_NOFILE, WORKER_OPEN_FILES)?;
        if let Some(bytes) = limits.memory {
            set_limit(libc::RLIMIT_DATA, bytes)?;
        }
        if channel_fd == CHANNEL_FD {
            // dup2 onto itself keeps close-on-exec; clear it instead.
            check(libc::fcntl(CHANNEL_FD, libc::F_SETFD, 0))?;
        } else {
            check(libc::dup2(channel_fd, CHANNEL_FD))?;
        }
        // Descriptors the supervisor inherited without close-on-exec (from
        // whatever started it) must not reach the worker either: mark all
        // above 3 close-on-exec (closing them here would also close the
        // pipe std uses to report a failed exec).
        if libc::syscall(
            libc::SYS_close_range,
            CHANNEL_FD as libc::c_uint + 1,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        ) == -1
        {
            // Kernels before 5.11: one by one, up to the limit set above.
            for fd in CHANNEL_FD + 1..WORKER_OPEN_FILES as RawFd {
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            }
        }
    }
    Ok(())
}

/// Lowers both limits of `resource` to `value` (or to the hard limit, if lower).
///
/// # Safety
/// Calls getrlimit and setrlimit; async-signal-safe.
unsafe fn set_limit(resource: libc::__rlimit_resource_t, value: u64) -> std::io::Result<()> {
    let mut current = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: the struct is ours to write.
    if unsafe { libc::getrlimit(resource, &mut current) } == -1 {
        return Err(std::io::Error::last_os_error());
    }
    // Soft and hard alike, so the worker cannot raise it again.
    let value = (value as libc::rlim_t).min(current.rlim_max);
    let limit = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: a valid rlimit for a valid resource.
    if unsafe { libc::setrlimit(resource, &limit) } == -1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
