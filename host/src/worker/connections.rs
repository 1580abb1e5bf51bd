//! The worker's side of connection handoff: it receives client
//! connections from the supervisor and serves them itself, with the same
//! HTTP trigger code as `--in-process`, keeping each connection's state in
//! the table the supervisor reads if this worker dies.

use super::reports::Reports;
use crate::app::dispatch::AppDispatch;
use crate::config::HttpLimits;
use crate::handoff::fdpass::ConnectionChannel;
use crate::handoff::table::{ConnectionState, ConnectionTable};
use crate::triggers::http;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

/// The connections handed to this worker.
pub struct Connections {
    table: ConnectionTable,
    limits: Arc<HttpLimits>,
    reports: Arc<Reports>,
    /// The app version new requests on handed connections go to.
    serving: RwLock<Arc<AppDispatch>>,
    /// Set once: finish the request in progress, then give every
    /// connection back.
    release: watch::Sender<bool>,
    open: AtomicUsize,
}

impl Connections {
    /// Serves connections arriving on `channel`, tracked in `table`, with
    /// app version `router` until told otherwise.
    pub fn start(
        channel: ConnectionChannel,
        table: ConnectionTable,
        limits: HttpLimits,
        reports: Arc<Reports>,
        router: Arc<AppDispatch>,
    ) -> Arc<Self> {
        let connections = Arc::new(Self {
            table,
            limits: Arc::new(limits),
            reports,
            serving: RwLock::new(router),
            release: watch::channel(false).0,
            open: AtomicUsize::new(0),
        });
        let receiver = connections.clone();
        tokio::spawn(async move {
            loop {
                match channel.recv().await {
                    Ok(Some((index, Some(fd)))) => {
                        tokio::spawn(receiver.clone().serve(index, fd));
                    }
                    Ok(Some((index, None))) => {
                        // The kernel could not give this process the
                        // descriptor (its limit): the supervisor closes it.
                        tracing::warn!(
                            "a handed connection arrived without its descriptor (at the open-files limit?)"
                        );
                        receiver.reports.closed(index);
                    }
                    Ok(None) => return,
                    Err(error) => {
                        tracing::error!("the connection channel failed: {error}");
                        return;
                    }
                }
            }
        });
        connections
    }

    /// New requests go to `router` from now on.
    pub fn serve_version(&self, router: Arc<AppDispatch>) {
        *self.serving.write().expect("serving version") = router;
    }

    /// Finish what is in progress and give every connection back.
    pub fn release_all(&self) {
        self.release.send_replace(true);
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Serves connection `index` until it ends or is given back.
    async fn serve(self: Arc<Self>, index: u32, fd: OwnedFd) {
        let Some(entry) = self.table.entry(index) else {
            tracing::error!("a handed connection with table index {index}, past the table");
            return;
        };
        let raw = fd.as_raw_fd();
        let stream = match tokio::net::TcpStream::from_std(std::net::TcpStream::from(fd)) {
            Ok(stream) => stream,
            Err(error) => {
                // Its descriptor is closed; the supervisor's goes with the
                // report, and the client sees the connection end.
                tracing::warn!("a handed connection could not be registered: {error}");
                self.reports.closed(index);
                return;
            }
        };
        self.open.fetch_add(1, Ordering::Relaxed);
        let open_requests = Arc::new(AtomicUsize::new(0));
        let io = TrackedIo {
            inner: stream,
            connections: self.clone(),
            index,
            open_requests: open_requests.clone(),
        };
        let io = http::with_write_timeout(io, &self.limits);
        let service = {
            let connections = self.clone();
            hyper::service::service_fn(move |request: ::http::Request<hyper::body::Incoming>| {
                open_requests.fetch_add(1, Ordering::Relaxed);
                let open = OpenRequest {
                    open: open_requests.clone(),
                    connections: connections.clone(),
                    index,
                };
                let router = connections.serving.read().expect("serving version").clone();
                // Which function has the call, for the supervisor to name it
                // if this worker dies with it.
                if let (Some(function), Some(entry)) = (
                    router.function_for(request.uri().path()),
                    connections.table.entry(index),
                ) {
                    entry.set_function(function as u32);
                }
                let limits = connections.limits.clone();
                Box::pin(async move {
                    let response = http::answer(router, limits, request).await?;
                    Ok::<_, std::convert::Infallible>(crate::invocation::hold_until_body_ends(
                        response, open,
                    ))
                })
            })
        };
        let builder = http::connection_builder(&self.limits);
        let mut connection = builder.serve_connection(TokioIo::new(io), service);
        let mut release = self.release.subscribe();
        let mut asked = Box::pin(async move {
            let _ = release.wait_for(|release| *release).await;
        });
        let mut releasing = false;
        let mut hand_back = false;
        let ended = std::future::poll_fn(|cx| {
            if !releasing && asked.as_mut().poll(cx).is_ready() {
                releasing = true;
                // Idle means nothing was read since the last answer: hyper
                // closes it at once, and it can be handed on. Otherwise the
                // answer in progress goes out with `connection: close`.
                hand_back = entry.state() == ConnectionState::Idle;
                Pin::new(&mut connection).graceful_shutdown();
            }
            connection.poll_without_shutdown(cx)
        })
        .await;
        // The socket stays open (`parts.io`) until it is shut down: once
        // closed, its descriptor's number can be a newly handed one's.
        let parts = connection.into_parts();
        let handed_back = hand_back && ended.is_ok() && parts.read_buf.is_empty();
        if !handed_back {
            if let Err(error) = ended {
                tracing::debug!("connection ended: {error}");
            }
            shut_down(raw);
        }
        drop(parts);
        if handed_back {
            self.reports.released(index);
        } else {
            self.reports.closed(index);
        }
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts a request as open on its connection until its response body
/// ends; then the call is done (the supervisor no longer counts it in
/// flight).
struct OpenRequest {
    open: Arc<AtomicUsize>,
    connections: Arc<Connections>,
    index: u32,
}

impl Drop for OpenRequest {
    fn drop(&mut self) {
        if self.open.fetch_sub(1, Ordering::Relaxed) == 1
            && let Some(entry) = self.connections.table.entry(self.index)
        {
            match entry.state() {
                ConnectionState::Busy => entry.set(ConnectionState::DoneUnsent),
                ConnectionState::Responding => entry.set(ConnectionState::Done),
                _ => {}
            }
        }
    }
}

/// Shuts a handed socket down both ways: the supervisor's copy of the
/// descriptor keeps it open, so closing ours alone would send no FIN.
fn shut_down(fd: RawFd) {
    // SAFETY: shutdown on a descriptor this process holds.
    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
}

/// A handed connection's socket that writes its state into the table as
/// bytes move: data read on an idle (or done) connection makes it busy,
/// the first byte written makes it responding, the end of its last
/// response body done ([`OpenRequest`]), and a flush once it is done (all
/// of hyper's buffer written to the socket) idle again. A request still
/// arriving stays busy: handed on half-read, its rest would be read as a
/// new request.
struct TrackedIo {
    inner: tokio::net::TcpStream,
    connections: Arc<Connections>,
    index: u32,
    open_requests: Arc<AtomicUsize>,
}

impl TrackedIo {
    fn entry(&self) -> &crate::handoff::table::Entry {
        self.connections
            .table
            .entry(self.index)
            .expect("checked when the connection arrived")
    }
}

impl AsyncRead for TrackedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        let entry = this.entry();
        match &polled {
            Poll::Ready(Ok(()))
                if buf.filled().len() > before
                    && matches!(
                        entry.state(),
                        ConnectionState::Idle | ConnectionState::Done | ConnectionState::DoneUnsent
                    ) =>
            {
                entry.set(ConnectionState::Busy);
            }
            _ => {}
        }
        polled
    }
}

impl TrackedIo {
    fn wrote(&self, polled: &Poll<std::io::Result<usize>>) {
        if matches!(polled, Poll::Ready(Ok(n)) if *n > 0) {
            let entry = self.entry();
            match entry.state() {
                ConnectionState::Busy => entry.set(ConnectionState::Responding),
                ConnectionState::DoneUnsent => entry.set(ConnectionState::Done),
                _ => {}
            }
        }
    }
}

impl AsyncWrite for TrackedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.wrote(&polled);
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.wrote(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        // hyper flushes its own buffer into the socket before it flushes
        // the socket: every byte of the finished answers is out.
        if matches!(polled, Poll::Ready(Ok(())))
            && this.open_requests.load(Ordering::Relaxed) == 0
            && this.entry().state() == ConnectionState::Done
        {
            this.entry().set(ConnectionState::Idle);
        }
        polled
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
