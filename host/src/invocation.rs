//! The shared vocabulary between triggers and executors.
//!
//! A trigger (HTTP today) turns an event into an [`HttpInvocation`] and hands it
//! to a [`Dispatch`]. The dispatch runs the guest somewhere (in this process,
//! or later in a worker process) and answers with a response or an
//! [`InvocationError`] whose [`FailureKind`] decides the status code and the
//! `fnhost-error` header. Triggers never see wasmtime.

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A streaming HTTP body as it travels between a trigger and a dispatch.
pub type Body = UnsyncBoxBody<Bytes, BodyError>;

/// `response` with `held` kept alive until its body ends or is dropped:
/// a concurrency slot stays taken while the guest still streams.
pub fn hold_until_body_ends<T: Send + Unpin + 'static>(
    response: http::Response<Body>,
    held: T,
) -> http::Response<Body> {
    response.map(|inner| http_body_util::BodyExt::boxed_unsync(HoldingBody { inner, _held: held }))
}

/// A response body that keeps something alive until it ends or is dropped.
struct HoldingBody<T> {
    inner: Body,
    _held: T,
}

impl<T: Unpin> hyper::body::Body for HoldingBody<T> {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// How a response body ended, as [`on_body_end`] tells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyEnd {
    /// It was read to its end.
    Finished,
    /// It failed.
    Failed,
    /// It was dropped before its end: the client (or its connection) went
    /// away.
    Dropped,
}

/// `response` whose body calls `on_end` once, when it ends, fails, or is
/// dropped before its end. On a drop, `on_end` runs before the inner body
/// (and whatever produces it) goes; a body dropped once it has nothing
/// left to send (hyper does not poll past a known length) has finished.
pub fn on_body_end(
    response: http::Response<Body>,
    on_end: impl FnOnce(BodyEnd) + Send + Unpin + 'static,
) -> http::Response<Body> {
    response.map(|inner| {
        http_body_util::BodyExt::boxed_unsync(EndWatchedBody {
            inner,
            on_end: Some(on_end),
        })
    })
}

/// The body [`on_body_end`] makes.
struct EndWatchedBody<F: FnOnce(BodyEnd)> {
    inner: Body,
    on_end: Option<F>,
}

impl<F: FnOnce(BodyEnd)> EndWatchedBody<F> {
    fn end(&mut self, how: BodyEnd) {
        if let Some(on_end) = self.on_end.take() {
            on_end(how);
        }
    }
}

impl<F: FnOnce(BodyEnd) + Unpin> hyper::body::Body for EndWatchedBody<F> {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let frame = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        match &frame {
            std::task::Poll::Ready(None) => this.end(BodyEnd::Finished),
            std::task::Poll::Ready(Some(Err(_))) => this.end(BodyEnd::Failed),
            _ => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl<F: FnOnce(BodyEnd)> Drop for EndWatchedBody<F> {
    fn drop(&mut self) {
        let how = if hyper::body::Body::is_end_stream(&self.inner) {
            BodyEnd::Finished
        } else {
            BodyEnd::Dropped
        };
        self.end(how);
    }
}

/// Why a body stream stopped early.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The client sent more than the configured `--max-body` bytes.
    #[error("request body exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// The connection or the guest failed while the body was streaming.
    #[error("body stream failed: {0}")]
    Transport(String),
}

/// Identifies one invocation in responses (`fnhost-invocation-id`) and logs.
///
/// Ids are 16 hex digits: a per-process prefix taken from the clock and the pid,
/// then a counter, so they are unique within a host and unlikely to collide
/// across hosts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InvocationId(u64);

impl InvocationId {
    /// Allocates the next id of this process.
    pub fn next() -> Self {
        static PREFIX: OnceLock<u64> = OnceLock::new();
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let prefix = *PREFIX.get_or_init(|| {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            (nanos ^ (u64::from(std::process::id()) << 16)) << 32
        });
        Self(prefix ^ COUNTER.fetch_add(1, Ordering::Relaxed))
    }

    /// The id as a number, for storing in an atomic.
    pub fn to_u64(self) -> u64 {
        self.0
    }

    /// The id stored by [`InvocationId::to_u64`].
    pub fn from_u64(raw: u64) -> Self {
        Self(raw)
    }
}

impl fmt::Display for InvocationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// One HTTP request on its way to a guest.
pub struct HttpInvocation {
    /// The id the response and the log lines carry.
    pub id: InvocationId,
    /// The request as the client sent it, body still streaming.
    pub request: http::Request<Body>,
}

/// The classes of failure a client can see, each with its status code and
/// `fnhost-error` value (see DESIGN.md, "Contracts").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum FailureKind {
    /// The guest trapped (a panic, `unreachable`, a host error it caused). 500.
    Trap,
    /// The invocation ran past its wall-clock deadline or CPU budget. 504.
    Timeout,
    /// The guest tried to grow its memory past `--max-memory`. 500.
    Memory,
    /// No capacity to start the invocation (instance pool exhausted). 503.
    Capacity,
    /// The process running the invocation went away. 502.
    WorkerLost,
    /// A queue handler returned an error (queue invocations only).
    Rejected,
    /// No function of the app has a route for the request's path. 404.
    NoRoute,
}

impl FailureKind {
    /// The value of the `fnhost-error` response header.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trap => "trap",
            Self::Timeout => "timeout",
            Self::Memory => "memory",
            Self::Capacity => "capacity",
            Self::WorkerLost => "worker-lost",
            Self::Rejected => "rejected",
            Self::NoRoute => "no-route",
        }
    }

    /// The HTTP status a client receives for this failure.
    pub fn status(self) -> http::StatusCode {
        use http::StatusCode;
        match self {
            Self::Trap | Self::Memory | Self::Rejected => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Self::Capacity => StatusCode::SERVICE_UNAVAILABLE,
            Self::WorkerLost => StatusCode::BAD_GATEWAY,
            Self::NoRoute => StatusCode::NOT_FOUND,
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An invocation that produced no response.
///
/// `detail` is for the operator's log (the trap message, say); it never goes
/// into a response body, which must not leak guest backtraces or host paths.
#[derive(Debug, thiserror::Error)]
#[error("{kind}: {detail}")]
pub struct InvocationError {
    /// What class of failure this was.
    pub kind: FailureKind,
    /// A one-line description for the log.
    pub detail: String,
}

impl InvocationError {
    /// Builds an error of `kind` with a log `detail`.
    pub fn new(kind: FailureKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
        }
    }
}

/// What a dispatch future resolves to.
pub type DispatchResult = Result<http::Response<Body>, InvocationError>;

/// One delivery of a queue message, as the guest's queue handler sees it
/// (`fnhost:function/queue-handler`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueueMessage {
    /// The message's id, stable across deliveries.
    pub id: String,
    /// The payload.
    pub body: Bytes,
    /// Deliveries so far, this one included.
    pub dequeue_count: u32,
    /// Enqueue time in milliseconds since the Unix epoch.
    pub enqueued_at_ms: u64,
    /// Key-value attributes from the sender.
    pub attributes: Vec<(String, String)>,
}

impl QueueMessage {
    /// Bytes the message takes on the wire, about: body, id and attributes.
    pub fn size(&self) -> usize {
        self.body.len()
            + self.id.len()
            + self
                .attributes
                .iter()
                .map(|(key, value)| key.len() + value.len())
                .sum::<usize>()
    }
}

/// One queue message on its way to a guest.
#[derive(Clone, Debug)]
pub struct QueueInvocation {
    /// The id the log lines carry.
    pub id: InvocationId,
    /// The delivery.
    pub message: QueueMessage,
}

/// What a queue dispatch resolves to: `Ok` acknowledges the message; a
/// [`FailureKind::Rejected`] error is the handler's own `err`.
pub type QueueResult = Result<(), InvocationError>;

/// Runs invocations. Triggers hold an `Arc<dyn Dispatch>` and know nothing else
/// about where or how the guest runs.
pub trait Dispatch: Send + Sync + 'static {
    /// Runs one HTTP invocation and resolves once the response head is ready;
    /// the response body may keep streaming from the guest after that.
    fn dispatch_http(
        &self,
        invocation: HttpInvocation,
    ) -> Pin<Box<dyn Future<Output = DispatchResult> + Send + 'static>>;

    /// Runs one queue message through the component's queue handler. The
    /// default answers that there is none.
    fn dispatch_queue(
        &self,
        invocation: QueueInvocation,
    ) -> Pin<Box<dyn Future<Output = QueueResult> + Send + 'static>> {
        let _ = invocation;
        Box::pin(std::future::ready(Err(InvocationError::new(
            FailureKind::Trap,
            "the component exports no queue handler",
        ))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invocation_ids_are_distinct_and_sixteen_hex_digits() {
        let a = InvocationId::next();
        let b = InvocationId::next();
        assert_ne!(a, b);
        let text = a.to_string();
        assert_eq!(text.len(), 16);
        assert!(text.chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn failure_kinds_map_to_the_documented_statuses() {
        assert_eq!(FailureKind::Trap.status(), 500);
        assert_eq!(FailureKind::Memory.status(), 500);
        assert_eq!(FailureKind::Timeout.status(), 504);
        assert_eq!(FailureKind::Capacity.status(), 503);
        assert_eq!(FailureKind::WorkerLost.status(), 502);
        assert_eq!(FailureKind::WorkerLost.as_str(), "worker-lost");
    }
}
