//! Guest stdout and stderr, forwarded line by line to the host's own stdout
//! and stderr with the invocation id as prefix: `[0123456789abcdef] text`.

use super::state::CurrentInvocation;
use bytes::Bytes;
use std::io::Write;
use std::pin::Pin;
use std::task::{Context, Poll};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// A partial line longer than this is forwarded without waiting for its
/// newline, so a guest cannot grow host memory by never ending a line.
const MAX_LINE: usize = 16 << 10;

/// Which host stream a guest stream goes to.
#[derive(Clone, Copy, Debug)]
pub enum HostStream {
    /// The host's stdout.
    Stdout,
    /// The host's stderr.
    Stderr,
}

/// A [`StdoutStream`] for one invocation's stdout or stderr.
#[derive(Clone)]
pub struct GuestOutput {
    invocation: CurrentInvocation,
    target: HostStream,
}

impl GuestOutput {
    /// Forwards to `target`, prefixing each line with the id of the
    /// invocation the store is running at the time of the write.
    pub fn new(invocation: CurrentInvocation, target: HostStream) -> Self {
        Self { invocation, target }
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

/// Buffers a partial line and writes each complete one with its prefix.
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
        self.pending.extend_from_slice(bytes);
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
    }

    fn emit(&self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches('\r');
        let id = self.output.invocation.get();
        // A failed write to the host's own stdio is not the guest's problem.
        let _ = match self.output.target {
            HostStream::Stdout => writeln!(std::io::stdout().lock(), "[{id}] {text}"),
            HostStream::Stderr => writeln!(std::io::stderr().lock(), "[{id}] {text}"),
        };
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
