//! Guest stdout and stderr, forwarded line by line to the host's own stdout
//! and stderr with the invocation id as prefix: `[0123456789abcdef] text`.
//!
//! What a guest writes cannot harm the host's log or its threads:
//! - **Capped per invocation**: stdout and stderr together get
//!   `--max-guest-output` bytes per invocation; past that one marker line
//!   says the output was cut, and the rest is dropped.
//! - **Escaped**: control characters other than tab (terminal escape
//!   sequences, carriage returns, C1 controls) are written as `\u{1b}`, so
//!   a log viewed in a terminal cannot be driven by a guest.
//! - **Never blocking**: a line is written at once when nothing is queued
//!   ahead of it and the host's stream polls writable (so it is in the log
//!   when its call returns); otherwise it goes to one writer thread through
//!   a queue of at most 4 MiB; when the host's stdout or stderr does not keep up,
//!   lines are dropped and counted ([`dropped_lines`]), and the writer says
//!   how many once it catches up. Guest calls never wait for the host's
//!   log. [`flush`] lets the last lines out at shutdown.

use super::state::CurrentInvocation;
use bytes::Bytes;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::Write;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::task::{Context, Poll};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// A partial line longer than this is forwarded without waiting for its
/// newline, so a guest cannot grow host memory by never ending a line.
const MAX_LINE: usize = 16 << 10;
/// Bytes of lines waiting for the writer thread; beyond, lines are
/// dropped (fnhost's own marker lines excepted).
const QUEUED_BYTES: usize = 4 << 20;

/// Which host stream a guest stream goes to.
#[derive(Clone, Copy, Debug)]
pub enum HostStream {
    /// The host's stdout.
    Stdout,
    /// The host's stderr.
    Stderr,
}

/// What one store's invocation may still write, shared by its stdout and
/// stderr; reset at the start of each invocation.
pub struct OutputBudget {
    limit: u64,
    used: AtomicU64,
    cut: AtomicBool,
}

impl OutputBudget {
    /// A budget of `limit` bytes per invocation.
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(Self {
            limit,
            used: AtomicU64::new(0),
            cut: AtomicBool::new(false),
        })
    }

    /// Starts a new invocation's budget.
    pub fn reset(&self) {
        self.used.store(0, Ordering::Relaxed);
        self.cut.store(false, Ordering::Relaxed);
    }

    /// How many of `wanted` bytes may still be written.
    fn take(&self, wanted: usize) -> usize {
        let before = self.used.fetch_add(wanted as u64, Ordering::Relaxed);
        self.limit.saturating_sub(before).min(wanted as u64) as usize
    }

    /// True the first time the budget runs out in an invocation.
    fn first_cut(&self) -> bool {
        !self.cut.swap(true, Ordering::Relaxed)
    }
}

/// A [`StdoutStream`] for one invocation's stdout or stderr.
#[derive(Clone)]
pub struct GuestOutput {
    invocation: CurrentInvocation,
    target: HostStream,
    budget: Arc<OutputBudget>,
}

impl GuestOutput {
    /// Forwards to `target`, prefixing each line with the id of the
    /// invocation the store is running at the time of the write, within
    /// `budget`.
    pub fn new(
        invocation: CurrentInvocation,
        target: HostStream,
        budget: Arc<OutputBudget>,
    ) -> Self {
        Self {
            invocation,
            target,
            budget,
        }
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(LineForwarder::new(self.clone()))
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(LineForwarder::new(self.clone()))
    }
}

/// Buffers a partial line and queues each complete one with its prefix.
struct LineForwarder {
    output: GuestOutput,
    pending: Vec<u8>,
}

impl LineForwarder {
    fn new(output: GuestOutput) -> Self {
        Self {
            output,
            pending: Vec::new(),
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        let allowed = self.output.budget.take(bytes.len());
        self.pending.extend_from_slice(&bytes[..allowed]);
        let mut start = 0;
        while let Some(offset) = self.pending[start..].iter().position(|&b| b == b'\n') {
            let end = start + offset;
            self.emit(&self.pending[start..end]);
            start = end + 1;
        }
        self.pending.drain(..start);
        if self.pending.len() > MAX_LINE {
            let line = std::mem::take(&mut self.pending);
            self.emit(&line);
        }
        if allowed < bytes.len() && self.output.budget.first_cut() {
            let line = std::mem::take(&mut self.pending);
            if !line.is_empty() {
                self.emit(&line);
            }
            let id = self.output.invocation.get();
            queue(
                self.output.target,
                format!(
                    "[{id}] fnhost: guest output cut at {} for this invocation (--max-guest-output)",
                    crate::config::parse::format_size(self.output.budget.limit)
                ),
                true,
            );
        }
    }

    fn emit(&self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches('\r');
        let id = self.output.invocation.get();
        let mut formatted = format!("[{id}] ");
        escape_into(&mut formatted, text);
        queue(self.output.target, formatted, false);
    }
}

/// Appends `text` with every control character but tab escaped, and the
/// invisible characters that reorder or break what a terminal shows (bidi
/// embeddings, overrides and isolates, line and paragraph separators).
fn escape_into(out: &mut String, text: &str) {
    let reorders = |c: char| matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{2028}' | '\u{2029}');
    for c in text.chars() {
        if (c.is_control() && c != '\t') || reorders(c) {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        } else {
            out.push(c);
        }
    }
}

impl Drop for LineForwarder {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            let line = std::mem::take(&mut self.pending);
            self.emit(&line);
        }
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LineForwarder {
    async fn ready(&mut self) {}
}

impl OutputStream for LineForwarder {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 << 10)
    }
}

impl tokio::io::AsyncWrite for LineForwarder {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Guest output lines dropped in this process because the host's stdout
/// or stderr did not keep up.
pub fn dropped_lines() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Waits up to `within` for the writer to write every queued line (at
/// shutdown, so the last lines of the last calls reach the log).
pub fn flush(within: std::time::Duration) {
    let queue = writer();
    let deadline = std::time::Instant::now() + within;
    let mut state = queue.state.lock().unwrap_or_else(|e| e.into_inner());
    while !state.lines.is_empty() || state.writing {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return;
        }
        state = queue
            .changed
            .wait_timeout(state, left)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Lines waiting for the writer thread, bounded by their bytes.
struct Queue {
    state: Mutex<QueueState>,
    /// Signalled when a line is queued or the writer finished one.
    changed: Condvar,
}

#[derive(Default)]
struct QueueState {
    lines: VecDeque<(HostStream, String)>,
    bytes: usize,
    writing: bool,
}

/// The process's writer thread and its queue, started on first use.
fn writer() -> &'static Queue {
    static QUEUE: OnceLock<Arc<Queue>> = OnceLock::new();
    QUEUE.get_or_init(|| {
        let queue = Arc::new(Queue {
            state: Mutex::new(QueueState::default()),
            changed: Condvar::new(),
        });
        let writer = queue.clone();
        let started = std::thread::Builder::new()
            .name("fnhost-guest-output".into())
            .spawn(move || write_lines(&writer));
        if let Err(error) = started {
            tracing::warn!("cannot start the guest output writer: {error}");
        }
        queue
    })
}

/// Hands `line` to the writer thread, or drops and counts it when the
/// queue already holds [`QUEUED_BYTES`]. A `marker` (fnhost's own line
/// about the output) is always queued: at most one per invocation.
fn queue(target: HostStream, line: String, marker: bool) {
    let queue = writer();
    let mut state = queue.state.lock().unwrap_or_else(|e| e.into_inner());
    // Nothing ahead of it and room in the host's stream: written at once,
    // so a line is in the log when its call returns (and survives a
    // worker killed right after), as long as the reader keeps up.
    if state.lines.is_empty() && !state.writing && write_now(target, &line) {
        return;
    }
    if !marker && state.bytes + line.len() > QUEUED_BYTES {
        DROPPED.fetch_add(1, Ordering::Relaxed);
        return;
    }
    state.bytes += line.len();
    state.lines.push_back((target, line));
    queue.changed.notify_all();
}

/// Writes `line` (and its newline) if the host's stream can take it
/// without blocking: at most `PIPE_BUF` bytes, which a pipe that polls
/// writable takes whole.
fn write_now(target: HostStream, line: &str) -> bool {
    use std::os::fd::AsRawFd;
    if line.len() + 1 > libc::PIPE_BUF {
        return false;
    }
    let fd = match target {
        HostStream::Stdout => std::io::stdout().as_raw_fd(),
        HostStream::Stderr => std::io::stderr().as_raw_fd(),
    };
    let mut poll = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no timeout.
    let ready = unsafe { libc::poll(&mut poll, 1, 0) };
    if ready != 1 || poll.revents & libc::POLLOUT == 0 {
        return false;
    }
    let _ = match target {
        HostStream::Stdout => writeln!(std::io::stdout().lock(), "{line}"),
        HostStream::Stderr => writeln!(std::io::stderr().lock(), "{line}"),
    };
    true
}

/// The writer thread: writes each line, and after a drop says how many
/// lines were lost.
fn write_lines(queue: &Queue) {
    let mut reported = 0;
    loop {
        let (target, line) = {
            let mut state = queue.state.lock().unwrap_or_else(|e| e.into_inner());
            state.writing = false;
            queue.changed.notify_all();
            loop {
                if let Some(next) = state.lines.pop_front() {
                    state.bytes -= next.1.len();
                    state.writing = true;
                    break next;
                }
                state = queue.changed.wait(state).unwrap_or_else(|e| e.into_inner());
            }
        };
        // A failed write to the host's own stdio is not the guest's problem.
        let _ = match target {
            HostStream::Stdout => writeln!(std::io::stdout().lock(), "{line}"),
            HostStream::Stderr => writeln!(std::io::stderr().lock(), "{line}"),
        };
        let dropped = DROPPED.load(Ordering::Relaxed);
        if dropped > reported {
            let _ = writeln!(
                std::io::stderr().lock(),
                "fnhost: {} lines of guest output dropped: the host's stdout or stderr did not keep up",
                dropped - reported
            );
            reported = dropped;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_but_tab_are_escaped() {
        let mut out = String::new();
        escape_into(
            &mut out,
            "a\tb\u{1b}[31mred\u{7}\rx\u{9b}y é\u{202e}z\u{2028}",
        );
        assert_eq!(
            out,
            "a\tb\\u{1b}[31mred\\u{7}\\u{d}x\\u{9b}y é\\u{202e}z\\u{2028}"
        );
    }

    #[test]
    fn the_budget_is_shared_and_cut_once() {
        let budget = OutputBudget::new(10);
        assert_eq!(budget.take(6), 6);
        assert_eq!(budget.take(6), 4);
        assert_eq!(budget.take(6), 0);
        assert!(budget.first_cut());
        assert!(!budget.first_cut());
        budget.reset();
        assert_eq!(budget.take(3), 3);
        assert!(budget.first_cut());
    }
}
