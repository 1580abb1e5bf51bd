//! A worker's first step: it locks itself down before it reads a byte from
//! its channel or loads any guest code (Linux).
//!
//! The supervisor starts workers with `posix_spawn` (no fork of the
//! supervisor's address space, see `supervisor/process.rs`), which can set
//! the process group, the environment and the standard descriptors but run
//! nothing else in the child, so the rest is done here, first thing after
//! `exec`:
//!
//! - the channel arrives as stdin; it moves to fd 3 and stdin becomes
//!   `/dev/null` ([`take_channel`]); then, with the supervisor's `Init`
//!   message read ([`harden`]):
//! - every descriptor above 3 is closed, including any the supervisor
//!   itself inherited without close-on-exec;
//! - `PR_SET_PDEATHSIG` asks for SIGKILL when the supervisor dies, and the
//!   worker exits if the supervisor is already gone;
//! - `no_new_privs`, so nothing it runs can gain privileges;
//! - resource limits, soft and hard alike so they cannot be raised again:
//!   no core dumps (they would hold guest memory), [`WORKER_OPEN_FILES`]
//!   descriptors, and `--worker-memory` as `RLIMIT_DATA` when set.
//!
//! See docs/security.md for what this does and does not isolate.

use super::{CHANNEL_FD, CONNECTIONS_FD, TABLE_FD};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

/// Soft and hard limit on a worker's open file descriptors (capped by the
/// hard limit it inherits): room for a full connection table and as many
/// again for the guests' files and the runtime.
pub const WORKER_OPEN_FILES: u64 = 2 * crate::handoff::table::CONNECTIONS_PER_WORKER as u64;

/// What the supervisor's `Init` message says of the worker's limits.
#[derive(Clone, Copy, Debug)]
pub struct Hardening {
    /// The supervisor's process id: the worker's parent must be it.
    pub supervisor: u32,
    /// `RLIMIT_DATA` in bytes (`--worker-memory`).
    pub memory: Option<u64>,
}

/// Applies everything in the module documentation. An error means the
/// worker must not run (it was not started by a live supervisor, or the
/// kernel refused a limit).
pub fn harden(settings: Hardening) -> anyhow::Result<()> {
    close_descriptors_above(TABLE_FD);
    // SAFETY (all calls): plain system calls on integers.
    unsafe {
        check(libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        ))?;
        if libc::getppid() as u32 != settings.supervisor {
            anyhow::bail!(
                "the supervisor (pid {}) is gone, or did not start this worker",
                settings.supervisor
            );
        }
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
    }
    set_limit(libc::RLIMIT_CORE, 0)?;
    set_limit(libc::RLIMIT_NOFILE, WORKER_OPEN_FILES)?;
    if let Some(bytes) = settings.memory {
        set_limit(libc::RLIMIT_DATA, bytes)?;
    }
    Ok(())
}

/// Moves the channel from stdin to fd 3, points stdin at `/dev/null`, and
/// returns the channel. Someone running `fnhost worker` by hand gets a
/// clear error, not a hang.
pub fn take_channel() -> anyhow::Result<UnixStream> {
    // SAFETY: fstat only writes into the struct we own.
    let is_socket = unsafe {
        let mut stat: libc::stat = std::mem::zeroed();
        libc::fstat(0, &mut stat) == 0 && (stat.st_mode & libc::S_IFMT) == libc::S_IFSOCK
    };
    if !is_socket {
        anyhow::bail!(
            "`fnhost worker` is started by `fnhost serve --workers N`; its stdin is not a channel"
        );
    }
    // SAFETY (all calls): plain system calls on descriptors this process
    // owns; dup2 onto 3 replaces whatever was there.
    unsafe {
        check(libc::dup2(0, CHANNEL_FD))?;
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        check(null)?;
        check(libc::dup2(null, 0))?;
        check(libc::close(null))?;
        // SAFETY: fd 3 is now the socket the supervisor gave this
        // process, owned by nothing else in it.
        Ok(UnixStream::from_raw_fd(CHANNEL_FD))
    }
}

/// Takes the handoff descriptors the supervisor sent first on the channel
/// (the connection channel and the connection table) and moves them to
/// [`CONNECTIONS_FD`] and [`TABLE_FD`].
pub fn take_handoff_fds(channel: &UnixStream) -> anyhow::Result<(OwnedFd, OwnedFd)> {
    let mut marker = [0u8; 1];
    let (read, mut fds) =
        crate::handoff::fdpass::recv_with_fds(channel.as_raw_fd(), &mut marker, 2)?;
    if read != 1 || marker[0] != crate::supervisor::process::HANDOFF_MARKER || fds.len() != 2 {
        anyhow::bail!("the supervisor's first message was not the handoff descriptors");
    }
    // Out of the way first: either could sit on the other's number.
    let table = out_of_the_way(fds.pop().expect("two descriptors"))?;
    let connections = out_of_the_way(fds.pop().expect("two descriptors"))?;
    Ok((
        move_to(&connections, CONNECTIONS_FD)?,
        move_to(&table, TABLE_FD)?,
    ))
}

/// A copy of `fd` numbered above the handoff descriptors; `fd` is closed.
fn out_of_the_way(fd: OwnedFd) -> anyhow::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC makes a new descriptor this process owns.
    unsafe {
        let copy = libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, TABLE_FD + 1);
        check(copy)?;
        Ok(OwnedFd::from_raw_fd(copy))
    }
}

/// A copy of `fd` numbered `target` (whatever was there is replaced).
fn move_to(fd: &OwnedFd, target: RawFd) -> anyhow::Result<OwnedFd> {
    // SAFETY: dup3 onto a number this process reserves for the copy.
    unsafe {
        check(libc::dup3(fd.as_raw_fd(), target, libc::O_CLOEXEC))?;
        Ok(OwnedFd::from_raw_fd(target))
    }
}

/// Closes every descriptor above `last`.
fn close_descriptors_above(last: RawFd) {
    // SAFETY: close_range on a range of this process's descriptors.
    let closed = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            last as libc::c_uint + 1,
            libc::c_uint::MAX,
            0,
        )
    };
    if closed == -1 {
        // Kernels before 5.11: one by one, up to the descriptor limit.
        for fd in last + 1..WORKER_OPEN_FILES as RawFd {
            // SAFETY: closing a descriptor number, open or not.
            unsafe { libc::close(fd) };
        }
    }
}

/// Lowers both limits of `resource` to `value` (or to the hard limit, if lower).
fn set_limit(resource: libc::__rlimit_resource_t, value: u64) -> io::Result<()> {
    let mut current = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: the struct is ours to write.
    check(unsafe { libc::getrlimit(resource, &mut current) })?;
    let value = (value as libc::rlim_t).min(current.rlim_max);
    let limit = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: a valid rlimit for a valid resource.
    check(unsafe { libc::setrlimit(resource, &limit) })
}

/// Turns a libc `-1` into the OS error.
fn check(result: libc::c_int) -> io::Result<()> {
    if result == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
