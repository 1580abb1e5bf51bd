//! The connection table: what each connection handed to a worker is doing,
//! in memory the supervisor and that worker share.
//!
//! The worker writes an entry's state as the connection moves (a relaxed
//! atomic store, no system call); the supervisor reads it only to decide
//! what to do with the connection when the worker is gone: hand an idle one
//! to another worker, answer 502 `worker-lost` for a request the worker had
//! read but not answered, or close one whose response had started. The
//! memory is a sealed memfd, so a worker cannot shrink it under the
//! supervisor (which would make the supervisor's reads fault); what a
//! worker writes into its own table only ever misleads the supervisor about
//! that worker's own connections.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Most connections one worker holds at once; the supervisor hands the
/// next one to another worker, or refuses it with 503 when all are full.
pub const CONNECTIONS_PER_WORKER: usize = 16_384;

/// What a handed-over connection is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionState {
    /// Not in use.
    Free,
    /// Between requests: nothing read that is not answered.
    Idle,
    /// A request's bytes were read and no response byte was written.
    Busy,
    /// A response is being written.
    Responding,
    /// Every response on it has ended, perhaps not all of it written out
    /// yet: no longer a call in flight, not yet safe to hand on.
    Done,
    /// Its response ended before any byte of it was written (hyper writes
    /// a short answer's head and body together, after the body's end): a
    /// worker dying now leaves the client with nothing, as a busy one does.
    DoneUnsent,
}

impl ConnectionState {
    fn from_raw(raw: u32) -> Self {
        match raw {
            0 => Self::Free,
            1 => Self::Idle,
            2 => Self::Busy,
            4 => Self::Done,
            5 => Self::DoneUnsent,
            // Anything else (a worker writing garbage) is treated as the
            // state that promises the least: the connection is closed.
            _ => Self::Responding,
        }
    }

    fn raw(self) -> u32 {
        match self {
            Self::Free => 0,
            Self::Idle => 1,
            Self::Busy => 2,
            Self::Responding => 3,
            Self::Done => 4,
            Self::DoneUnsent => 5,
        }
    }
}

/// One connection's entry.
#[repr(C)]
pub struct Entry {
    state: AtomicU32,
    /// The index of the function serving its request, plus one (0: none yet).
    function: AtomicU32,
    /// `CLOCK_MONOTONIC_COARSE` in ms when the request in progress arrived.
    since_ms: AtomicU64,
}

/// An entry as read at one moment.
#[derive(Clone, Copy, Debug)]
pub struct EntrySnapshot {
    /// The connection's state.
    pub state: ConnectionState,
    /// The function serving its request, if the worker had routed it.
    pub function: Option<u32>,
    /// When its request arrived (`now_ms` clock).
    pub since_ms: u64,
}

impl Entry {
    /// The supervisor hands the connection over: idle, nothing routed.
    pub fn reset(&self) {
        self.function.store(0, Ordering::Relaxed);
        self.state
            .store(ConnectionState::Idle.raw(), Ordering::Release);
    }

    /// The worker moves the connection to `state`.
    pub fn set(&self, state: ConnectionState) {
        if state == ConnectionState::Busy {
            self.since_ms.store(now_ms(), Ordering::Relaxed);
            self.function.store(0, Ordering::Relaxed);
        }
        self.state.store(state.raw(), Ordering::Release);
    }

    /// The worker's current state of the connection, as it last wrote it.
    pub fn state(&self) -> ConnectionState {
        ConnectionState::from_raw(self.state.load(Ordering::Relaxed))
    }

    /// The worker routed the request in progress to function `index`.
    pub fn set_function(&self, index: u32) {
        self.function
            .store(index.saturating_add(1), Ordering::Relaxed);
    }

    /// The entry now.
    pub fn snapshot(&self) -> EntrySnapshot {
        let state = ConnectionState::from_raw(self.state.load(Ordering::Acquire));
        let function = self.function.load(Ordering::Relaxed);
        EntrySnapshot {
            state,
            function: function.checked_sub(1),
            since_ms: self.since_ms.load(Ordering::Relaxed),
        }
    }
}

/// One worker's connection table, mapped into this process.
pub struct ConnectionTable {
    entries: NonNull<Entry>,
    /// The memfd, until it is sent to the worker (the mapping outlives it).
    fd: Option<OwnedFd>,
}

// SAFETY: the mapping is shared memory of atomics only; every access goes
// through them.
unsafe impl Send for ConnectionTable {}
// SAFETY: as above.
unsafe impl Sync for ConnectionTable {}

const TABLE_BYTES: usize = CONNECTIONS_PER_WORKER * std::mem::size_of::<Entry>();

impl ConnectionTable {
    /// A new, zeroed table (every entry free), sealed at its size.
    pub fn create() -> io::Result<Self> {
        // SAFETY (all calls): plain system calls; the name is a C string.
        let fd = unsafe {
            let fd = libc::memfd_create(
                c"fnhost-connections".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            );
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            OwnedFd::from_raw_fd(fd)
        };
        // SAFETY: ftruncate and fcntl on the descriptor we own.
        unsafe {
            if libc::ftruncate(fd.as_raw_fd(), TABLE_BYTES as libc::off_t) != 0 {
                return Err(io::Error::last_os_error());
            }
            let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
            if libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Self::map(fd)
    }

    /// The table the supervisor made, from its descriptor (in the worker).
    pub fn open(fd: OwnedFd) -> io::Result<Self> {
        // SAFETY: fstat writes into the struct we own.
        let size = unsafe {
            let mut stat: libc::stat = std::mem::zeroed();
            if libc::fstat(fd.as_raw_fd(), &mut stat) != 0 {
                return Err(io::Error::last_os_error());
            }
            stat.st_size
        };
        if size as usize != TABLE_BYTES {
            return Err(io::Error::other(format!(
                "the connection table is {size} bytes, not {TABLE_BYTES}"
            )));
        }
        Self::map(fd)
    }

    fn map(fd: OwnedFd) -> io::Result<Self> {
        // SAFETY: a shared mapping of the whole (sealed) file; unmapped in Drop.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                TABLE_BYTES,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if address == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let entries = NonNull::new(address.cast::<Entry>())
            .ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Self {
            entries,
            fd: Some(fd),
        })
    }

    /// The table's descriptor, to send to the worker (`None` once closed).
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.fd.as_ref().map(AsFd::as_fd)
    }

    /// Closes this process's descriptor of the table; the mapping stays.
    pub fn close_fd(&mut self) {
        self.fd = None;
    }

    /// Entry `index`, if the table has it.
    pub fn entry(&self, index: u32) -> Option<&Entry> {
        let index = index as usize;
        // SAFETY: in bounds of the mapping, which lives as long as `self`;
        // `Entry` is atomics only, valid for any bit pattern.
        (index < CONNECTIONS_PER_WORKER).then(|| unsafe { &*self.entries.as_ptr().add(index) })
    }
}

impl Drop for ConnectionTable {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once.
        unsafe { libc::munmap(self.entries.as_ptr().cast(), TABLE_BYTES) };
    }
}

/// Milliseconds of `CLOCK_MONOTONIC_COARSE`: the same clock in every
/// process of the machine, read without a system call.
pub fn now_ms() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the struct we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut now) };
    now.tv_sec as u64 * 1000 + now.tv_nsec as u64 / 1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_mappings_of_one_table_see_each_others_writes() {
        let table = ConnectionTable::create().unwrap();
        let copy = table.fd().unwrap().try_clone_to_owned().unwrap();
        let worker = ConnectionTable::open(copy).unwrap();
        let ours = table.entry(7).unwrap();
        assert_eq!(ours.snapshot().state, ConnectionState::Free);
        ours.reset();
        let theirs = worker.entry(7).unwrap();
        theirs.set(ConnectionState::Busy);
        theirs.set_function(2);
        let seen = ours.snapshot();
        assert_eq!(seen.state, ConnectionState::Busy);
        assert_eq!(seen.function, Some(2));
        assert!(seen.since_ms > 0);
        assert!(table.entry(CONNECTIONS_PER_WORKER as u32).is_none());
    }

    #[test]
    fn a_sealed_table_cannot_be_shrunk_by_the_worker() {
        let table = ConnectionTable::create().unwrap();
        // SAFETY: ftruncate on a descriptor we own.
        let shrunk = unsafe { libc::ftruncate(table.fd().unwrap().as_raw_fd(), 0) };
        assert_ne!(shrunk, 0, "the seal refuses it");
        assert!(table.entry(0).is_some());
    }
}
