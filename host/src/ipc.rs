//! The supervisor ↔ worker protocol.
//!
//! One Unix stream socket per worker (a `socketpair`, the worker's end is its
//! fd 3). Each message is a frame: tokio-util's `LengthDelimitedCodec` (a
//! 4-byte big-endian length, at most [`MAX_FRAME`] bytes) around one
//! postcard-encoded [`ToWorker`] or [`ToSupervisor`]. The supervisor's first
//! message is [`ToWorker::Init`] carrying [`PROTOCOL_VERSION`]; a worker
//! speaking another version answers [`ToSupervisor::StartFailed`] and exits.
//! Enum variants are only ever appended, so a version bump is needed only
//! when a message changes shape.
//!
//! Invocations are multiplexed on the socket by their id. A request body
//! follows its head as [`ToWorker::RequestBody`] chunks of at most
//! [`MAX_CHUNK`] bytes and ends with [`ToWorker::RequestEnd`]; responses
//! stream back the same way. Many frames queued at once are written with one
//! system call ([`spawn_writer`]).
//!
//! A frame that does not decode is a protocol error: the reader stops, and
//! the supervisor recycles that worker. Nothing here panics on bad input.

use crate::config::HostConfig;
use crate::invocation::{BodyError, FailureKind, QueueMessage};
use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use std::marker::PhantomData;
use std::path::PathBuf;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_util::codec::{Decoder, Encoder, FramedRead, FramedWrite, LengthDelimitedCodec};

/// The protocol version; bumped whenever a message changes shape.
pub const PROTOCOL_VERSION: u32 = 10;
/// Largest frame on the wire, in bytes: room for a queue message of
/// [`crate::queue::MAX_MESSAGE_BYTES`] or a response head with 256 KiB of
/// headers, with plenty to spare. A message that does not fit cannot be
/// sent; the writer then stops and the link is treated as lost.
pub const MAX_FRAME: usize = 16 << 20;
/// Largest body chunk in one frame, in bytes (leaves room for the envelope).
pub const MAX_CHUNK: usize = 256 << 10;
/// Response body bytes a worker may send for one invocation ahead of what
/// the supervisor has handed to the client's connection: a client that
/// stops reading costs the supervisor at most this much per invocation.
pub const RESPONSE_WINDOW: usize = 1 << 20;
/// Frames the writer coalesces into one write before flushing.
const MAX_COALESCED: usize = 64;

/// What the supervisor tells a worker.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToWorker {
    /// The first message: what to load and how to run it.
    Init(Box<WorkerInit>),
    /// Start an invocation.
    Invoke(Box<InvokeHead>),
    /// The next piece of an invocation's request body.
    RequestBody {
        /// The invocation.
        id: u64,
        /// At most [`MAX_CHUNK`] bytes.
        chunk: Bytes,
    },
    /// The request body is complete.
    RequestEnd {
        /// The invocation.
        id: u64,
    },
    /// The request body failed (the client went away or sent too much).
    RequestAbort {
        /// The invocation.
        id: u64,
        /// Why, for the guest's error and the log.
        reason: String,
        /// Whether it was the `--max-body` limit.
        too_large: Option<u64>,
    },
    /// The client no longer wants the response: stop the invocation.
    Cancel {
        /// The invocation.
        id: u64,
    },
    /// Finish nothing new; exit once in-flight invocations are done.
    Shutdown,
    /// Load app version `generation` next to the running ones (a
    /// redeploy); the worker answers [`ToSupervisor::Loaded`].
    Load {
        /// The new version's number.
        generation: u64,
        /// Its functions, in the order invocations index them.
        functions: Vec<FunctionInit>,
    },
    /// No new invocation of version `generation` will come: drop it once
    /// its in-flight invocations finish.
    Release {
        /// The retired version.
        generation: u64,
    },
    /// Run one queue message through the queue handler.
    InvokeQueue {
        /// The invocation.
        id: u64,
        /// The app version it belongs to.
        generation: u64,
        /// The function's index in that version.
        function: u32,
        /// The delivery.
        message: QueueMessage,
    },
    /// The client's connection took `bytes` more of an invocation's
    /// response body: the worker may send that much more
    /// ([`RESPONSE_WINDOW`]).
    ResponseCredit {
        /// The invocation.
        id: u64,
        /// Bytes taken.
        bytes: u32,
    },
    /// The connections handed to this worker serve app version
    /// `generation` from their next request on (it is loaded).
    ServeVersion {
        /// The version.
        generation: u64,
    },
    /// Finish the request in progress on every handed connection, then
    /// give each connection back ([`ToSupervisor::Served`]'s `released`)
    /// instead of reading more from it.
    ReleaseConnections,
    /// Send what is counted and not yet reported, then
    /// [`ToSupervisor::Flushed`] with this token.
    Flush {
        /// Echoed back.
        token: u64,
    },
}

/// Everything a worker needs to start.
#[derive(Debug, Serialize, Deserialize)]
pub struct WorkerInit {
    /// Must equal the worker's [`PROTOCOL_VERSION`].
    pub protocol: u32,
    /// The worker's slot number, for its log lines.
    pub slot: usize,
    /// The app version it loads.
    pub generation: u64,
    /// The app's functions, in the order invocations index them.
    pub functions: Vec<FunctionInit>,
    /// Threads of the worker's async runtime.
    pub runtime_threads: usize,
    /// The log filter (the worker's environment is cleared).
    pub log_filter: String,
    /// The supervisor's process id: the worker's parent must be it.
    pub supervisor_pid: u32,
    /// `--worker-memory` in bytes, applied as `RLIMIT_DATA`.
    pub memory_limit: Option<u64>,
    /// The most worker processes the host runs at once, which share the
    /// machine's memory (`exec/memory_budget.rs`).
    pub worker_processes: usize,
    /// `--threads-memory` in bytes.
    pub threads_memory: Option<u64>,
}

/// One function a worker loads.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FunctionInit {
    /// Its name, for log lines.
    pub name: String,
    /// The component to load.
    pub component: PathBuf,
    /// Its settings (the worker uses the execution, limits and grants).
    pub config: HostConfig,
    /// Whether it has an HTTP route (the component must export the HTTP
    /// handler).
    pub http_bound: bool,
    /// Whether a queue trigger feeds it (the component must export the
    /// queue handler).
    pub queue_bound: bool,
    /// Its HTTP route, for the worker's router on handed connections.
    pub route: Option<crate::app::Route>,
    /// Its `max_concurrent` cap, held by the worker's router (handed
    /// connections are used only where that cap is the host's: one worker).
    pub max_concurrent: Option<usize>,
}

/// The head of an HTTP invocation.
#[derive(Debug, Serialize, Deserialize)]
pub struct InvokeHead {
    /// The invocation id (the supervisor allocates it; logs and the
    /// `fnhost-invocation-id` header agree).
    pub id: u64,
    /// The app version it belongs to.
    pub generation: u64,
    /// The function's index in that version.
    pub function: u32,
    /// Request method.
    pub method: String,
    /// Request target as received.
    pub uri: String,
    /// Header fields in order, repeated names kept.
    pub headers: Vec<(String, Bytes)>,
    /// Whether the request has no body at all (no body frames follow).
    pub body_empty: bool,
    /// The body's length, when the client declared it.
    pub body_length: Option<u64>,
}

/// What a worker tells the supervisor.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToSupervisor {
    /// The component is loaded; the worker takes invocations.
    Ready(Box<WorkerReady>),
    /// The worker could not start; it exits after sending this.
    StartFailed {
        /// One line naming the file and what is wrong.
        message: String,
    },
    /// An invocation's response head.
    ResponseHead {
        /// The invocation.
        id: u64,
        /// Status code.
        status: u16,
        /// Header fields in order.
        headers: Vec<(String, Bytes)>,
        /// The body's length, when the guest's body knows it exactly.
        body_length: Option<u64>,
        /// The start of the body: whatever the guest had written when the
        /// head was sent (at most [`MAX_CHUNK`] bytes).
        body_start: Bytes,
        /// Whether `body_start` is the whole body (no body frames follow).
        body_complete: bool,
    },
    /// The next piece of a response body.
    ResponseBody {
        /// The invocation.
        id: u64,
        /// At most [`MAX_CHUNK`] bytes.
        chunk: Bytes,
    },
    /// The response body is complete.
    ResponseEnd {
        /// The invocation.
        id: u64,
    },
    /// The response body failed midway (the head was already sent).
    ResponseAbort {
        /// The invocation.
        id: u64,
        /// Why, for the log.
        detail: String,
    },
    /// The invocation failed before a response head.
    Failed {
        /// The invocation.
        id: u64,
        /// The failure class.
        kind: FailureKind,
        /// One line for the log.
        detail: String,
    },
    /// The answer to [`ToWorker::Load`].
    Loaded {
        /// The version.
        generation: u64,
        /// `None` when it is loaded, else one line saying why not.
        failure: Option<String>,
    },
    /// Periodic worker statistics.
    Stats {
        /// Instances alive in the worker (warm or running).
        instances: u64,
        /// Stalled WASIp3 instances the worker noticed since it started.
        async_stalls: u64,
        /// Guest output lines the worker dropped since it started.
        guest_output_dropped: u64,
        /// Each loaded function's costs so far (cumulative).
        profiles: Vec<FunctionProfile>,
    },
    /// A queue invocation finished.
    QueueDone {
        /// The invocation.
        id: u64,
        /// `None` on success, else the failure class and its detail.
        failure: Option<(FailureKind, String)>,
    },
    /// What the handed connections did since the last report (sent every
    /// few milliseconds while there is something to say).
    Served {
        /// Invocations that finished.
        completions: Vec<Completion>,
        /// Connections that ended (the worker shut them down): their
        /// table entries are free.
        closed: Vec<u32>,
        /// Connections given back at a request boundary: the supervisor
        /// hands them on (or closes them when the host is stopping).
        released: Vec<u32>,
    },
    /// Everything counted before [`ToWorker::Flush`] was sent.
    Flushed {
        /// The flush's token.
        token: u64,
    },
}

/// One finished invocation on a handed connection.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Completion {
    /// The app version.
    pub generation: u64,
    /// The function's index in it.
    pub function: u32,
    /// How it ended.
    pub outcome: Outcome,
    /// From the request's head to the end of its response, in ns.
    pub wall_ns: u64,
}

/// How an invocation ended, as the metrics count it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Outcome {
    /// Answered to the end of its body.
    Ok,
    /// The client left first.
    Cancelled,
    /// A failure class.
    Failed(FailureKind),
}

impl Outcome {
    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Cancelled => "cancelled",
            Self::Failed(kind) => kind.as_str(),
        }
    }
}

/// One function's cumulative costs in a worker.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FunctionProfile {
    /// The app version.
    pub generation: u64,
    /// The function's index in it.
    pub function: u32,
    /// Calls, CPU and time queued so far.
    pub profile: crate::exec::profile::ProfileSnapshot,
}

/// What a worker reports once it is ready.
#[derive(Debug, Serialize, Deserialize)]
pub struct WorkerReady {
    /// Must equal the supervisor's [`PROTOCOL_VERSION`].
    pub protocol: u32,
}

/// A tokio-util codec: length-delimited frames of postcard-encoded `In`
/// (decoding) and `Out` (encoding).
pub struct MessageCodec<In, Out> {
    frames: LengthDelimitedCodec,
    _types: PhantomData<fn(Out) -> In>,
}

impl<In, Out> Default for MessageCodec<In, Out> {
    fn default() -> Self {
        Self {
            frames: LengthDelimitedCodec::builder()
                .max_frame_length(MAX_FRAME)
                .new_codec(),
            _types: PhantomData,
        }
    }
}

/// Why a channel stopped.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The socket failed or a frame exceeded [`MAX_FRAME`].
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A frame held something that is not a message.
    #[error("undecodable frame: {0}")]
    Decode(#[from] postcard::Error),
}

impl<In: for<'de> Deserialize<'de>, Out> Decoder for MessageCodec<In, Out> {
    type Item = In;
    type Error = ProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<In>, ProtocolError> {
        match self.frames.decode(src)? {
            Some(frame) => Ok(Some(postcard::from_bytes(&frame)?)),
            None => Ok(None),
        }
    }
}

impl<In, Out: Serialize> Encoder<Out> for MessageCodec<In, Out> {
    type Error = ProtocolError;

    fn encode(&mut self, message: Out, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        let bytes = postcard::to_allocvec(&message)?;
        self.frames.encode(Bytes::from(bytes), dst)?;
        Ok(())
    }
}

/// Reads messages of type `In` from one end of a channel.
pub type MessageReader<R, In> = FramedRead<R, MessageCodec<In, ()>>;

/// Wraps the read half of a channel.
pub fn reader<R: AsyncRead, In: for<'de> Deserialize<'de>>(io: R) -> MessageReader<R, In> {
    FramedRead::new(io, MessageCodec::default())
}

/// Starts the task that writes every message sent on the returned sender to
/// `io`, coalescing those queued together into one write. The task ends,
/// having flushed everything, when every sender is dropped or the socket
/// fails.
pub fn spawn_writer<W, Out>(io: W) -> (mpsc::UnboundedSender<Out>, tokio::task::JoinHandle<()>)
where
    W: AsyncWrite + Send + Unpin + 'static,
    Out: Serialize + Send + 'static,
{
    let (sender, mut receiver) = mpsc::unbounded_channel::<Out>();
    let mut sink = FramedWrite::new(io, MessageCodec::<(), Out>::default());
    let task = tokio::spawn(async move {
        while let Some(first) = receiver.recv().await {
            if sink.feed(first).await.is_err() {
                return;
            }
            let mut queued = 1;
            while queued < MAX_COALESCED {
                let Ok(next) = receiver.try_recv() else { break };
                if sink.feed(next).await.is_err() {
                    return;
                }
                queued += 1;
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    (sender, task)
}

/// Reads the next message, mapping the end of the stream (the peer closed
/// it, or died and the kernel reset it) to `Ok(None)`.
pub async fn next_message<R, In>(
    reader: &mut MessageReader<R, In>,
) -> Result<Option<In>, ProtocolError>
where
    R: AsyncRead + Unpin,
    In: for<'de> Deserialize<'de>,
{
    match reader.next().await.transpose() {
        Err(ProtocolError::Io(error))
            if matches!(
                error.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ) =>
        {
            Ok(None)
        }
        other => other,
    }
}

/// Splits `bytes` into chunks of at most [`MAX_CHUNK`] bytes without copying.
pub fn chunks(mut bytes: Bytes) -> impl Iterator<Item = Bytes> {
    std::iter::from_fn(move || {
        if bytes.is_empty() {
            return None;
        }
        let take = bytes.len().min(MAX_CHUNK);
        Some(bytes.split_to(take))
    })
}

/// Header fields as they travel on the wire.
pub fn headers_to_wire(headers: &http::HeaderMap) -> Vec<(String, Bytes)> {
    headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_string(),
                Bytes::copy_from_slice(value.as_bytes()),
            )
        })
        .collect()
}

/// Header fields from the wire; a field that is not valid HTTP is an error
/// naming it (the peer is the same binary, so this means corruption).
pub fn headers_from_wire(fields: Vec<(String, Bytes)>) -> Result<http::HeaderMap, String> {
    let mut headers = http::HeaderMap::with_capacity(fields.len());
    for (name, value) in fields {
        let name = http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("invalid header name {name:?}"))?;
        let value = http::HeaderValue::from_maybe_shared(value)
            .map_err(|_| format!("invalid value for header {name}"))?;
        headers.append(name, value);
    }
    Ok(headers)
}

/// A body fed from a channel: what one side of the socket receives for an
/// invocation, handed to hyper (supervisor) or the guest (worker). The
/// stream ends when the sender is dropped; an `Err` item fails it.
pub struct ChannelBody {
    chunks: mpsc::UnboundedReceiver<Result<Bytes, BodyError>>,
    length: Option<u64>,
    on_drop: Option<Box<dyn FnOnce(bool) + Send>>,
    on_chunk: Option<Box<dyn FnMut(usize) + Send>>,
    finished: bool,
}

impl ChannelBody {
    /// A body and the sender that feeds it.
    pub fn new() -> (mpsc::UnboundedSender<Result<Bytes, BodyError>>, Self) {
        let (sender, chunks) = mpsc::unbounded_channel();
        let body = Self {
            chunks,
            length: None,
            on_drop: None,
            on_chunk: None,
            finished: false,
        };
        (sender, body)
    }

    /// Declares the body's exact length (passed on as its size hint).
    pub fn with_length(mut self, length: Option<u64>) -> Self {
        self.length = length;
        self
    }

    /// Runs `hook` with each chunk's length as the reader takes it.
    pub fn on_chunk(mut self, hook: impl FnMut(usize) + Send + 'static) -> Self {
        self.on_chunk = Some(Box::new(hook));
        self
    }

    /// Runs `hook` when the body is dropped, with whether it was read to
    /// its end (`false` means the reader gave up early).
    pub fn on_drop(mut self, hook: impl FnOnce(bool) + Send + 'static) -> Self {
        self.on_drop = Some(Box::new(hook));
        self
    }
}

impl Drop for ChannelBody {
    fn drop(&mut self) {
        if let Some(hook) = self.on_drop.take() {
            hook(self.finished);
        }
    }
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if this.finished {
            return std::task::Poll::Ready(None);
        }
        this.chunks.poll_recv(cx).map(|item| match item {
            Some(Ok(chunk)) => {
                if let Some(hook) = this.on_chunk.as_mut() {
                    hook(chunk.len());
                }
                Some(Ok(hyper::body::Frame::data(chunk)))
            }
            Some(Err(error)) => {
                this.finished = true;
                Some(Err(error))
            }
            None => {
                this.finished = true;
                None
            }
        })
    }

    fn is_end_stream(&self) -> bool {
        self.finished
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self.length {
            Some(length) => hyper::body::SizeHint::with_exact(length),
            None => hyper::body::SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(message: ToSupervisor) -> ToSupervisor {
        let mut encoder = MessageCodec::<(), ToSupervisor>::default();
        let mut buffer = BytesMut::new();
        encoder.encode(message, &mut buffer).unwrap();
        let mut decoder = MessageCodec::<ToSupervisor, ()>::default();
        decoder
            .decode(&mut buffer)
            .unwrap()
            .expect("one whole frame")
    }

    #[test]
    fn messages_survive_the_wire() {
        let decoded = round_trip(ToSupervisor::ResponseHead {
            id: 7,
            status: 201,
            headers: vec![("x-a".into(), Bytes::from_static(b"1"))],
            body_length: Some(3),
            body_start: Bytes::from_static(b"abc"),
            body_complete: true,
        });
        match decoded {
            ToSupervisor::ResponseHead {
                id,
                status,
                headers,
                body_length,
                body_start,
                body_complete,
            } => {
                assert_eq!((id, status, body_length), (7, 201, Some(3)));
                assert_eq!((&body_start[..], body_complete), (&b"abc"[..], true));
                assert_eq!(headers[0].1, Bytes::from_static(b"1"));
            }
            other => panic!("decoded {other:?}"),
        }
        match round_trip(ToSupervisor::Failed {
            id: 1,
            kind: FailureKind::Memory,
            detail: "x".into(),
        }) {
            ToSupervisor::Failed { kind, .. } => assert_eq!(kind, FailureKind::Memory),
            other => panic!("decoded {other:?}"),
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut decoder = MessageCodec::<ToSupervisor, ()>::default();
        // A well-formed frame whose payload names no message variant.
        let mut buffer = BytesMut::from(&[0, 0, 0, 3, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            decoder.decode(&mut buffer),
            Err(ProtocolError::Decode(_))
        ));
        // A length beyond MAX_FRAME.
        let mut buffer = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3][..]);
        assert!(matches!(
            decoder.decode(&mut buffer),
            Err(ProtocolError::Io(_))
        ));
    }

    #[test]
    fn bodies_split_into_bounded_chunks() {
        let body = Bytes::from(vec![1u8; MAX_CHUNK * 2 + 5]);
        let sizes: Vec<usize> = chunks(body).map(|c| c.len()).collect();
        assert_eq!(sizes, vec![MAX_CHUNK, MAX_CHUNK, 5]);
        assert_eq!(chunks(Bytes::new()).count(), 0);
    }
}
