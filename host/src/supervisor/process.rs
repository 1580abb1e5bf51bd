//! Starting a worker process (Linux).
//!
//! The worker is this very binary (`/proc/self/exe`, so replacing the file
//! on disk cannot start a different version) running the hidden `worker`
//! subcommand. It is started with `posix_spawn`, which does not copy the
//! supervisor's page tables the way `fork` does (measured in
//! docs/performance.md, "Start-up"). Before `exec` the child only:
//!
//! - moves to its own process group, so a terminal's Ctrl-C reaches only the
//!   supervisor, which drains and then stops its workers;
//! - gets an empty environment, its end of the channel as stdin, and the
//!   supervisor's stdout and stderr (every other descriptor of the
//!   supervisor's own is close-on-exec).
//!
//! Before the `Init` message, the supervisor sends the worker two more
//! descriptors on its channel: its end of the connection channel and its
//! connection table (see [`crate::handoff`]); the worker moves them to fds
//! 4 and 5.
//!
//! Everything else (the death signal, `no_new_privs`, resource limits, the
//! channel moved to fd 3, descriptors the supervisor inherited closed) the
//! worker does to itself before it reads its channel: `worker/harden.rs`.
//! See docs/security.md for what this does and does not isolate.

use std::os::fd::OwnedFd;
use std::process::Stdio;

/// OS limits applied to every worker (sent in its `Init` message).
#[derive(Clone, Copy, Debug, Default)]
pub struct WorkerLimits {
    /// `RLIMIT_DATA` in bytes (`--worker-memory`): the worker's writable
    /// private memory, heap and guest memories included.
    pub memory: Option<u64>,
    /// Resident memory `--threads auto` may fill (`--threads-memory`).
    pub threads_memory: Option<u64>,
}

/// The byte that carries the handoff descriptors, first on the channel.
pub const HANDOFF_MARKER: u8 = b'H';

/// A started worker and the supervisor's end of its channel.
pub struct WorkerProcess {
    /// The child process.
    pub child: tokio::process::Child,
    /// Its process id.
    pub pid: u32,
    /// The supervisor's end of the channel.
    pub channel: tokio::net::UnixStream,
    /// The supervisor's end of the connection channel.
    pub connections: std::os::fd::OwnedFd,
    /// The worker's connection table.
    pub table: crate::handoff::table::ConnectionTable,
}

/// Starts a worker. Must be called from a thread that lives as long as the
/// supervisor (a runtime worker thread, not a blocking-pool thread): the
/// worker's `PR_SET_PDEATHSIG` fires when the *thread* that spawned it exits.
pub fn spawn() -> std::io::Result<WorkerProcess> {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    let mut command = tokio::process::Command::new("/proc/self/exe");
    command.arg0("fnhost").arg("worker");
    // No `pre_exec`: with one, the standard library forks instead of
    // using `posix_spawn`.
    command
        .env_clear()
        .process_group(0)
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let child = command.spawn()?;
    let pid = child.id().unwrap_or(0);
    let (connections, worker_connections) = crate::handoff::fdpass::pair()?;
    let mut table = crate::handoff::table::ConnectionTable::create()?;
    // The first byte on the channel carries the worker's handoff
    // descriptors; the socket buffer takes it before the worker reads.
    let table_fd = table.fd().expect("a new table has its descriptor");
    crate::handoff::fdpass::send_with_fds(
        std::os::fd::AsRawFd::as_raw_fd(&ours),
        &[HANDOFF_MARKER],
        &[std::os::fd::AsFd::as_fd(&worker_connections), table_fd],
    )?;
    drop(worker_connections);
    // Nothing of the worker's but its channels stays open here.
    table.close_fd();
    ours.set_nonblocking(true)?;
    Ok(WorkerProcess {
        child,
        pid,
        channel: tokio::net::UnixStream::from_std(ours)?,
        connections,
        table,
    })
}
