//! The supervisor's side of connection handoff: it accepts each client
//! connection and hands it to the worker with the fewest open connections,
//! keeping its own copy of the descriptor. It reads the worker's
//! [`ConnectionTable`] only when that worker is gone (or stuck): an idle
//! connection goes to another worker, a request that was read and not
//! answered gets 502 `worker-lost` (504 `timeout` for the call that got
//! the worker recycled), and a response cut short is closed.

use super::Supervisor;
use super::pool::WorkerLink;
use crate::FailureKind;
use crate::handoff::fdpass::ConnectionChannel;
use crate::handoff::table::{
    CONNECTIONS_PER_WORKER, ConnectionState, ConnectionTable, EntrySnapshot, now_ms,
};
use crate::triggers::http::failure_response_bytes;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// How long a connection waits for a ready worker before it is refused.
const WAIT_FOR_A_WORKER: Duration = Duration::from_secs(5);
/// How often the supervisor looks for a worker that stopped answering.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(250);

/// The connections handed to one worker.
pub struct Handed {
    table: ConnectionTable,
    channel: ConnectionChannel,
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    streams: HashMap<u32, TcpStream>,
    free: Vec<u32>,
    next: u32,
    /// Idle connections seen with unread bytes, and since when.
    unread_since: HashMap<u32, Instant>,
}

impl Handed {
    /// The connections of the worker whose table and connection channel
    /// these are.
    pub fn new(table: ConnectionTable, channel: OwnedFd) -> std::io::Result<Self> {
        Ok(Self {
            table,
            channel: ConnectionChannel::new(channel)?,
            open: Mutex::default(),
        })
    }

    /// Connections the worker holds.
    pub fn open_count(&self) -> usize {
        self.open.lock().expect("open connections").streams.len()
    }

    /// Requests the worker is serving on them now.
    pub fn in_flight(&self) -> usize {
        let open = self.open.lock().expect("open connections");
        open.streams
            .keys()
            .filter_map(|&index| self.table.entry(index))
            .filter(|entry| {
                matches!(
                    entry.state(),
                    ConnectionState::Busy | ConnectionState::Responding
                )
            })
            .count()
    }

    /// Hands `stream` to the worker; gives it back if the worker holds
    /// [`CONNECTIONS_PER_WORKER`] already or its channel is gone.
    pub async fn hand(&self, stream: TcpStream) -> Result<(), TcpStream> {
        let fd = match stream.try_clone() {
            Ok(copy) => OwnedFd::from(copy),
            Err(_) => return Err(stream),
        };
        let index = {
            let mut open = self.open.lock().expect("open connections");
            let index = match open.free.pop() {
                Some(index) => index,
                None if (open.next as usize) < CONNECTIONS_PER_WORKER => {
                    open.next += 1;
                    open.next - 1
                }
                None => return Err(stream),
            };
            if let Some(entry) = self.table.entry(index) {
                entry.reset();
            }
            // In the map before the worker can report it closed.
            open.streams.insert(index, stream);
            index
        };
        match self.channel.send(index, fd.as_fd()).await {
            Ok(()) => Ok(()),
            Err(_) => {
                let mut open = self.open.lock().expect("open connections");
                match open.streams.remove(&index) {
                    Some(stream) => {
                        open.free.push(index);
                        Err(stream)
                    }
                    // The worker died meanwhile and its rescue took the
                    // connection: it is answered there.
                    None => Ok(()),
                }
            }
        }
    }

    /// The worker shut these connections down: forget them.
    pub fn closed(&self, indices: &[u32]) {
        let mut open = self.open.lock().expect("open connections");
        for index in indices {
            if open.streams.remove(index).is_some() {
                open.unread_since.remove(index);
                open.free.push(*index);
            }
        }
    }

    /// The worker gave these connections back: take them.
    pub fn released(&self, indices: &[u32]) -> Vec<TcpStream> {
        let mut open = self.open.lock().expect("open connections");
        let mut streams = Vec::with_capacity(indices.len());
        for index in indices {
            if let Some(stream) = open.streams.remove(index) {
                open.unread_since.remove(index);
                open.free.push(*index);
                streams.push(stream);
            }
        }
        streams
    }

    /// Every connection, its last state, and how long the watchdog has
    /// seen it idle with bytes nobody read (the worker is gone).
    fn take_all(&self) -> Vec<(TcpStream, EntrySnapshot, Option<Duration>)> {
        let mut open = self.open.lock().expect("open connections");
        let streams = std::mem::take(&mut open.streams);
        let unread_since = std::mem::take(&mut open.unread_since);
        streams
            .into_iter()
            .filter_map(|(index, stream)| {
                let unread_for = unread_since.get(&index).map(Instant::elapsed);
                Some((stream, self.table.entry(index)?.snapshot(), unread_for))
            })
            .collect()
    }

    /// Whether the worker has left a request unanswered for `limit`: one
    /// it routed to a function without writing a byte back, or one it
    /// never read. (A request still arriving, its head or body trickling
    /// in, is not the worker's delay: hyper's header timeout and the
    /// guest's `--timeout` end those.)
    pub fn overdue(&self, limit: Duration) -> bool {
        let now = now_ms();
        let limit_ms = limit.as_millis() as u64;
        let mut open = self.open.lock().expect("open connections");
        let Open {
            streams,
            unread_since,
            ..
        } = &mut *open;
        let mut overdue = false;
        for (index, stream) in streams.iter() {
            let Some(entry) = self.table.entry(*index) else {
                continue;
            };
            let snapshot = entry.snapshot();
            match snapshot.state {
                ConnectionState::Busy
                    if snapshot.function.is_some()
                        && now.saturating_sub(snapshot.since_ms) > limit_ms =>
                {
                    overdue = true;
                }
                ConnectionState::Idle if unread_bytes(stream) > 0 => {
                    let since = *unread_since.entry(*index).or_insert_with(Instant::now);
                    overdue |= since.elapsed() > limit;
                }
                _ => {
                    unread_since.remove(index);
                }
            }
        }
        overdue
    }
}

/// Bytes the kernel holds for `stream` that nobody has read.
fn unread_bytes(stream: &TcpStream) -> usize {
    let mut bytes: libc::c_int = 0;
    // SAFETY: FIONREAD writes an int into the one we own.
    let read = unsafe { libc::ioctl(stream.as_raw_fd(), libc::FIONREAD, &mut bytes) };
    if read == 0 { bytes.max(0) as usize } else { 0 }
}

/// Writes the failure response for `kind` and closes `stream`. What the
/// client sent and nobody read is read first: closing a socket with unread
/// data resets it, and the reset could overtake the answer.
fn answer_and_close(mut stream: TcpStream, kind: FailureKind) {
    let _ = stream.set_nonblocking(true);
    let mut scratch = [0u8; 16 << 10];
    for _ in 0..64 {
        match stream.read(&mut scratch) {
            Ok(n) if n > 0 => continue,
            _ => break,
        }
    }
    let _ = stream.write_all(&failure_response_bytes(kind));
    close(stream);
}

/// Shuts `stream` down both ways and drops it.
fn close(stream: TcpStream) {
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

impl Supervisor {
    /// Accepts connections until `stop` resolves and hands each to a
    /// worker; then has the workers finish what is in progress and waits
    /// up to `grace` for every connection to end. Returns whether all did.
    pub(super) async fn serve_handoff(
        self: &Arc<Self>,
        listener: TcpListener,
        stop: impl std::future::Future<Output = ()>,
        grace: Duration,
    ) -> bool {
        tokio::pin!(stop);
        loop {
            let stream = tokio::select! {
                stream = crate::triggers::http::accept(&listener) => stream,
                () = &mut stop => break,
            };
            let _ = stream.set_nodelay(true);
            match stream.into_std() {
                Ok(stream) => {
                    let supervisor = self.clone();
                    tokio::spawn(async move { supervisor.hand_off(stream, false).await });
                }
                Err(error) => tracing::warn!("an accepted connection failed: {error}"),
            }
        }
        drop(listener);
        tracing::info!(
            "draining: no new connections, waiting up to {} s for in-flight requests",
            grace.as_secs()
        );
        for link in self.pool.links() {
            link.release_connections();
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self
                .pool
                .links()
                .iter()
                .all(|link| link.handed.open_count() == 0)
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    /// Hands `stream` to the ready worker with the current app version
    /// and the fewest open connections; answers 503 when no worker becomes
    /// ready within [`WAIT_FOR_A_WORKER`]. A connection `rehomed` from a
    /// worker that is gone or retiring (neither is in the pool any more)
    /// is closed instead when the host is stopping.
    pub(super) async fn hand_off(self: Arc<Self>, mut stream: TcpStream, rehomed: bool) {
        let waited = Instant::now();
        loop {
            if rehomed && self.draining.load(std::sync::atomic::Ordering::Relaxed) {
                close(stream);
                return;
            }
            let generation = self.current.get().id;
            if let Some(link) = self.pool.pick_for_connection(generation) {
                tracing::debug!(
                    "a connection to worker {} ({} open, {} in flight there)",
                    link.slot,
                    link.handed.open_count(),
                    link.handed.in_flight()
                );
                match link.handed.hand(stream).await {
                    Ok(()) => return,
                    // That worker is full or gone: another may take it.
                    Err(back) => stream = back,
                }
            }
            if waited.elapsed() > WAIT_FOR_A_WORKER {
                answer_and_close(stream, FailureKind::Capacity);
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Connections a worker gave back: handed on, or closed when the host
    /// is stopping.
    pub(super) fn rehome(self: &Arc<Self>, streams: Vec<TcpStream>) {
        for stream in streams {
            if self.draining.load(std::sync::atomic::Ordering::Relaxed) {
                close(stream);
            } else {
                tokio::spawn(self.clone().hand_off(stream, true));
            }
        }
    }

    /// The worker of `link` is gone (dead, or killed for `overran`): what
    /// it held is answered, closed or handed on as its table says.
    pub(super) fn rescue_connections(self: &Arc<Self>, link: &WorkerLink, overran: bool) {
        let limit_ms = self.overrun_limit().as_millis() as u64;
        let now = now_ms();
        let mut idle = Vec::new();
        let mut lost = Vec::new();
        let limit = self.overrun_limit();
        for (stream, snapshot, unread_for) in link.handed.take_all() {
            match snapshot.state {
                // The request the stuck worker never read: the one that
                // got it recycled. Others waiting less go on intact.
                ConnectionState::Idle if overran && unread_for.is_some_and(|d| d > limit) => {
                    answer_and_close(stream, FailureKind::Timeout);
                }
                ConnectionState::Idle => idle.push(stream),
                ConnectionState::Busy | ConnectionState::DoneUnsent => {
                    let overdue = snapshot.function.is_some()
                        && now.saturating_sub(snapshot.since_ms) > limit_ms;
                    let kind = if overran && overdue {
                        FailureKind::Timeout
                    } else {
                        FailureKind::WorkerLost
                    };
                    let ran = Duration::from_millis(now.saturating_sub(snapshot.since_ms));
                    lost.push((snapshot.function, kind, ran));
                    answer_and_close(stream, kind);
                }
                // Done: its answer may not all be out; closing is what a
                // client of a finished response can take.
                ConnectionState::Responding | ConnectionState::Done | ConnectionState::Free => {
                    close(stream)
                }
            }
        }
        if !lost.is_empty() {
            link.count_lost_connections(self.current.get().id, &lost);
        }
        self.rehome(idle);
    }

    /// How long a request may go unanswered before its worker is taken
    /// for stuck: the longest `--timeout` of the app's functions, plus
    /// [`super::pool::OVERRUN_GRACE`].
    pub(super) fn overrun_limit(&self) -> Duration {
        let longest = self
            .current
            .get()
            .functions
            .iter()
            .map(|function| function.config.invocation.timeout)
            .max()
            .unwrap_or_default();
        longest + super::pool::OVERRUN_GRACE
    }

    /// Every [`WATCH_INTERVAL`], recycles a worker that left a handed
    /// request unanswered past [`Self::overrun_limit`].
    pub(super) async fn watch_handed(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(WATCH_INTERVAL);
        loop {
            ticker.tick().await;
            let limit = self.overrun_limit();
            for link in self.pool.links() {
                if !link.overran() && link.handed.overdue(limit) {
                    tracing::error!(
                        "worker {} (pid {}) left a request unanswered for --timeout + {} s; recycling it",
                        link.slot,
                        link.pid,
                        super::pool::OVERRUN_GRACE.as_secs()
                    );
                    link.overrun_connections();
                }
            }
        }
    }
}
