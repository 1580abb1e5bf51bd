//! Where one call's answer goes, and whether the client stayed for it.
//!
//! A client that hangs up mid-response makes the guest's next write fail;
//! CPython then raises, the SDK aborts, and the call ends in a trap after
//! its response started. That is the client's doing, not the instance's:
//! counted as evidence against instance reuse, one burst of disconnects
//! (`wrk` stopping with 200 calls in flight) turned reuse off for good and
//! left a Python `def` app at a tenth of its throughput (docs/architecture.md,
//! "Instance reuse, made safe"). So the response body is watched: dropped
//! before its end means the client is gone.

use crate::invocation::{BodyEnd, DispatchResult, InvocationError, InvocationId, on_body_end};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// Where one call's answer goes: the guest's response (or the error code it
/// answered with), or the lane's own failure, whichever comes first. The
/// guest's response callback and the lane hold it together.
#[derive(Clone)]
pub(super) struct Answer(Arc<Shared>);

/// What the lane and the guest's response callback share.
struct Shared {
    sender: Mutex<Option<oneshot::Sender<DispatchResult>>>,
    /// Set when the response body was dropped before it ended.
    abandoned: AtomicBool,
}

impl Answer {
    /// An answer and where it arrives.
    pub(super) fn new() -> (Self, oneshot::Receiver<DispatchResult>) {
        let (sender, receiver) = oneshot::channel();
        (Self::from_sender(sender), receiver)
    }

    /// An answer sent to `sender`.
    pub(super) fn from_sender(sender: oneshot::Sender<DispatchResult>) -> Self {
        Self(Arc::new(Shared {
            sender: Mutex::new(Some(sender)),
            abandoned: AtomicBool::new(false),
        }))
    }

    /// Sends `result` unless the call was answered already; says whether it
    /// did. A response's body is watched for the client going away.
    pub(super) fn send(&self, result: DispatchResult) -> bool {
        match self
            .0
            .sender
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            Some(sender) => {
                let watched = result.map(|response| {
                    let shared = self.0.clone();
                    on_body_end(response, move |end| {
                        if end == BodyEnd::Dropped {
                            shared.abandoned.store(true, Ordering::Relaxed);
                        }
                    })
                });
                let _ = sender.send(watched);
                true
            }
            None => false,
        }
    }

    /// Whether the call has been answered.
    pub(super) fn is_answered(&self) -> bool {
        self.0
            .sender
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
    }

    /// Whether the response was dropped before its body ended: the client
    /// (or the connection) went away while the guest was still answering.
    pub(super) fn abandoned(&self) -> bool {
        self.0.abandoned.load(Ordering::Relaxed)
    }

    /// Answers the caller with `failure`, or, when the response had
    /// already started, logs it: as a failed invocation, or at debug level
    /// when the client had gone (the guest's failure was writing to it).
    pub(super) fn report(&self, id: InvocationId, failure: InvocationError) {
        let (kind, detail) = (failure.kind, failure.detail.clone());
        if self.send(Err(failure)) {
            return;
        }
        if self.abandoned() {
            tracing::debug!("[{id}] the client went away mid-response: {kind}: {detail}");
        } else {
            tracing::warn!("[{id}] invocation failed after its response started: {kind}: {detail}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invocation::{Body, BodyError};
    use bytes::Bytes;
    use http_body_util::BodyExt;
    use http_body_util::{Full, StreamBody};

    fn answer_with(body: Body) -> (Answer, oneshot::Receiver<DispatchResult>) {
        let (answer, receiver) = Answer::new();
        assert!(answer.send(Ok(http::Response::new(body))));
        (answer, receiver)
    }

    #[tokio::test]
    async fn a_body_read_to_its_end_is_not_abandoned() {
        let body = Full::new(Bytes::from_static(b"hello"))
            .map_err(|never| match never {})
            .boxed_unsync();
        let (answer, receiver) = answer_with(body);
        let response = receiver.await.unwrap().unwrap();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"hello");
        assert!(!answer.abandoned());
    }

    #[tokio::test]
    async fn a_body_dropped_mid_stream_is_abandoned() {
        let (sender, frames) =
            tokio::sync::mpsc::channel::<Result<hyper::body::Frame<Bytes>, BodyError>>(1);
        let stream = tokio_stream_from(frames);
        let (answer, receiver) = answer_with(StreamBody::new(stream).boxed_unsync());
        sender
            .send(Ok(hyper::body::Frame::data(Bytes::from_static(b"he"))))
            .await
            .unwrap();
        let mut response = receiver.await.unwrap().unwrap();
        let first = response.body_mut().frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), Bytes::from_static(b"he"));
        drop(response);
        assert!(answer.abandoned());
        assert!(
            sender.is_closed(),
            "the guest's side sees the stream closed"
        );
    }

    /// A stream of what arrives on `receiver`.
    fn tokio_stream_from<T: Send + 'static>(
        mut receiver: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> + Send + 'static {
        futures_util::stream::poll_fn(move |cx| receiver.poll_recv(cx))
    }
}
