//! Instance reuse for WASIp2 components, in both lanes, made safe.
//!
//! - How many calls an instance serves: `--instance-reuse`, else decided
//!   from the component's initial memory ([`configured_reuse`]).
//! - [`ReusePolicy`] turns reuse off, once and for the rest of the
//!   process, for a component whose instances break when they serve a
//!   second call (componentize-js's fetch handler answers only once per
//!   instance), and says so in the log.
//! - [`Replay`] keeps what is needed to run a request again, so that a call
//!   that failed on a reused instance before it could have had any effect
//!   runs once more on a fresh instance, and its client never sees the
//!   failure.
//!
//! An instance that failed a call is never used again, in any lane.

use crate::component::ComponentNeeds;
use crate::invocation::{Body, BodyError, FailureKind, InvocationError, InvocationId};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, SizeHint};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

/// Initial linear memory from which a component's instances are reused
/// (unless `--instance-reuse` says otherwise). A fresh instance per call
/// faults in, and then resets, what its memory holds at start: about 1 MiB
/// for a Rust guest, 12-14 MiB for CPython's pre-initialised heap (which
/// made a fresh interpreter per call cost about 6 ms of CPU). The line sits
/// far from both, and it is a property of the file, not a measurement, so
/// every worker decides the same way whatever the machine's load.
pub const REUSE_FROM_INITIAL_MEMORY: u64 = 8 << 20;
/// Calls one instance serves by default when its initial memory is large.
pub const LARGE_INSTANCE_REUSE: u32 = 1000;
/// Failures in a row on reused instances, with no failure on a fresh one in
/// between, after which reuse is turned off for the component.
pub const REUSE_STRIKES: u32 = 3;

/// Whether a component's instances are expensive to make: a large initial
/// memory to fault in (CPython's pre-initialised heap, say).
pub fn large_instances(needs: &ComponentNeeds) -> bool {
    needs.largest_initial_memory >= REUSE_FROM_INITIAL_MEMORY
}

/// The calls one instance serves: `--instance-reuse`, else decided from
/// the component's initial memory: [`LARGE_INSTANCE_REUSE`] when it is
/// large, `small` (the lane's own default) otherwise.
pub fn configured_reuse(explicit: Option<u32>, needs: &ComponentNeeds, small: u32) -> u32 {
    explicit.unwrap_or_else(|| {
        if large_instances(needs) {
            tracing::info!(
                "a fresh instance would fault in {} MiB of initial memory per call: each instance serves up to {LARGE_INSTANCE_REUSE} calls (--instance-reuse 1 for a fresh one per call)",
                needs.largest_initial_memory >> 20
            );
            LARGE_INSTANCE_REUSE
        } else {
            small
        }
    })
}

/// How many calls an instance of one component may serve, and the rule that
/// stops reuse when it breaks the component.
///
/// Evidence that reuse breaks a component is either of:
/// - a call failed on a reused instance and then succeeded when it ran again
///   on a fresh one ([`ReusePolicy::confirmed_by_retry`]);
/// - [`REUSE_STRIKES`] calls in a row failed on reused instances while no
///   call on a fresh instance failed (a request that fails wherever it runs
///   resets the count, so a handler that rejects bad input keeps its reuse).
pub struct ReusePolicy {
    configured: u32,
    off: AtomicBool,
    strikes: AtomicU32,
}

impl ReusePolicy {
    /// A policy allowing `configured` calls per instance.
    pub fn new(configured: u32) -> Self {
        Self {
            configured: configured.max(1),
            off: AtomicBool::new(false),
            strikes: AtomicU32::new(0),
        }
    }

    /// Calls an instance may serve now.
    pub fn limit(&self) -> u32 {
        if self.off.load(Ordering::Relaxed) {
            1
        } else {
            self.configured
        }
    }

    /// Records how a call ended (`failure`: how it failed, if it did);
    /// `reused` is whether its instance had served a call before. Only traps
    /// and calls left unanswered count: a timeout, a memory refusal or a
    /// full pool says nothing about reuse.
    pub fn record(&self, reused: bool, failure: Option<FailureKind>) {
        let succeeded = match failure {
            None => true,
            Some(FailureKind::Trap) => false,
            Some(_) => return,
        };
        match (reused, succeeded) {
            (true, true) | (false, false) => self.strikes.store(0, Ordering::Relaxed),
            (true, false) => {
                let strikes = self.strikes.fetch_add(1, Ordering::Relaxed) + 1;
                if strikes >= REUSE_STRIKES {
                    self.turn_off(&format!(
                        "{strikes} calls in a row failed on reused instances while calls on fresh ones succeeded"
                    ));
                }
            }
            (false, true) => {}
        }
    }

    /// A call that failed on a reused instance (`failure`) succeeded on a
    /// fresh one: reuse is what broke it.
    pub fn confirmed_by_retry(&self, failure: &InvocationError) {
        self.turn_off(&format!(
            "a call failed on a reused instance ({}: {}) and succeeded on a fresh one",
            failure.kind, failure.detail
        ));
    }

    fn turn_off(&self, why: &str) {
        if self.configured > 1 && !self.off.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "this component's instances fail when reused ({why}): every call gets a fresh instance from now on (--instance-reuse 1 says so from the start)"
            );
        }
    }
}

/// How one call on one instance ended, in either lane (`W` is the lane's
/// instance).
pub struct Ended<W> {
    /// The call's outcome.
    pub result: Result<(), InvocationError>,
    /// The instance, when it may serve another call.
    pub instance: Option<W>,
    /// Outbound requests the guest sent during the call.
    pub outbound: u32,
}

impl<W> Ended<W> {
    /// A call that failed before the guest ran.
    pub fn failed(error: InvocationError) -> Self {
        Self {
            result: Err(error),
            instance: None,
            outbound: 0,
        }
    }
}

impl ReusePolicy {
    /// After a call failed with `failure`: the request to run again on a
    /// fresh instance, when its instance had served calls before (`replay`
    /// is kept only then) and running it again cannot repeat an effect
    /// ([`may_run_again`], and the guest never read the body). Otherwise
    /// `None`, and the failure counts toward turning reuse off.
    #[allow(clippy::too_many_arguments)]
    pub fn run_again(
        &self,
        id: InvocationId,
        reused: bool,
        replay: Option<Replay>,
        failure: &InvocationError,
        answered: bool,
        outbound: u32,
        dirs: bool,
    ) -> Option<http::Request<Body>> {
        let again = replay
            .filter(|_| may_run_again(failure, answered, outbound, dirs))
            .and_then(Replay::take);
        match &again {
            Some(_) => tracing::info!(
                "[{id}] failed on a reused instance ({}: {}); running it again on a fresh one",
                failure.kind,
                failure.detail
            ),
            None => self.record(reused, Some(failure.kind)),
        }
        again
    }
}

/// Whether a call that failed with `failure` on a reused instance may run
/// again on a fresh one: the guest trapped or returned without answering
/// (not a timeout, a memory or capacity refusal, or an error it chose to
/// answer), no response was sent, it sent no outbound request, and it was
/// granted no directory it could have written to. [`Replay::take`] adds the
/// last condition: the guest never started reading the request body.
pub fn may_run_again(failure: &InvocationError, answered: bool, outbound: u32, dirs: bool) -> bool {
    failure.kind == FailureKind::Trap && !answered && outbound == 0 && !dirs
}

/// What is kept of a request so that it can be given to a guest again.
pub struct Replay {
    method: http::Method,
    uri: http::Uri,
    version: http::Version,
    headers: http::HeaderMap,
    body: KeptBody,
}

enum KeptBody {
    /// The request had no body: a new empty one does.
    Empty,
    /// The body, until the guest first polls it.
    Untouched(Arc<Mutex<Option<Body>>>),
}

impl Replay {
    /// The request to give the guest, and, when its instance is `reused`,
    /// what is needed to give it again (a fresh instance's call never runs
    /// again, so it keeps nothing).
    pub fn keep_if(
        reused: bool,
        request: http::Request<Body>,
    ) -> (http::Request<Body>, Option<Self>) {
        if !reused {
            return (request, None);
        }
        let (request, replay) = Self::keep(request);
        (request, Some(replay))
    }

    /// Splits `request` into the request to give the guest and what is
    /// needed to give it again.
    pub fn keep(request: http::Request<Body>) -> (http::Request<Body>, Self) {
        let (parts, body) = request.into_parts();
        let (body, kept) = if hyper::body::Body::is_end_stream(&body) {
            (body, KeptBody::Empty)
        } else {
            let slot = Arc::new(Mutex::new(Some(body)));
            let guest_body = TakenOnFirstPoll {
                slot: slot.clone(),
                taken: None,
            };
            (guest_body.boxed_unsync(), KeptBody::Untouched(slot))
        };
        let replay = Self {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: parts.headers.clone(),
            body: kept,
        };
        (http::Request::from_parts(parts, body), replay)
    }

    /// The request again, unless the guest has started reading its body.
    pub fn take(self) -> Option<http::Request<Body>> {
        let body = match self.body {
            KeptBody::Empty => http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed_unsync(),
            KeptBody::Untouched(slot) => slot.lock().unwrap_or_else(|e| e.into_inner()).take()?,
        };
        let mut request = http::Request::new(body);
        *request.method_mut() = self.method;
        *request.uri_mut() = self.uri;
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers;
        Some(request)
    }
}

/// A body that stays in its shared slot until it is first polled.
struct TakenOnFirstPoll {
    slot: Arc<Mutex<Option<Body>>>,
    taken: Option<Body>,
}

impl hyper::body::Body for TakenOnFirstPoll {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if this.taken.is_none() {
            this.taken = this.slot.lock().unwrap_or_else(|e| e.into_inner()).take();
        }
        match this.taken.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.taken {
            Some(body) => body.is_end_stream(),
            None => self
                .slot
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .is_none_or(|body| body.is_end_stream()),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.taken {
            Some(body) => body.size_hint(),
            None => self
                .slot
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .map_or_else(|| SizeHint::with_exact(0), |body| body.size_hint()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(bytes: &'static [u8]) -> Body {
        http_body_util::Full::new(Bytes::from_static(bytes))
            .map_err(|never| match never {})
            .boxed_unsync()
    }

    fn request(bytes: &'static [u8]) -> http::Request<Body> {
        http::Request::builder()
            .method("POST")
            .uri("/orders?x=1")
            .header("x-test", "1")
            .body(body(bytes))
            .unwrap()
    }

    #[tokio::test]
    async fn a_request_whose_body_was_not_read_can_be_given_again() {
        let (given, replay) = Replay::keep(request(b"payload"));
        drop(given);
        let again = replay.take().expect("the body was never read");
        assert_eq!(again.method(), "POST");
        assert_eq!(again.uri(), "/orders?x=1");
        assert_eq!(again.headers()["x-test"], "1");
        let bytes = again.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"payload");
    }

    #[tokio::test]
    async fn a_request_whose_body_was_read_cannot() {
        let (given, replay) = Replay::keep(request(b"payload"));
        let bytes = given.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"payload");
        assert!(replay.take().is_none());
    }

    #[tokio::test]
    async fn a_request_without_a_body_can_always_be_given_again() {
        let (given, replay) = Replay::keep(request(b""));
        let _ = given.into_body().collect().await.unwrap();
        let again = replay.take().expect("an empty body is no state");
        assert!(hyper::body::Body::is_end_stream(again.body()));
    }

    #[test]
    fn reuse_stops_after_strikes_on_reused_instances_only() {
        let policy = ReusePolicy::new(1000);
        for _ in 0..REUSE_STRIKES - 1 {
            policy.record(true, Some(FailureKind::Trap));
        }
        // A fresh instance failing too: the requests are at fault, not reuse.
        policy.record(false, Some(FailureKind::Trap));
        for _ in 0..REUSE_STRIKES - 1 {
            policy.record(true, Some(FailureKind::Trap));
        }
        assert_eq!(policy.limit(), 1000);
        // A timeout is no evidence either way.
        policy.record(true, Some(FailureKind::Timeout));
        assert_eq!(policy.limit(), 1000);
        policy.record(true, Some(FailureKind::Trap));
        assert_eq!(policy.limit(), 1);
    }

    #[test]
    fn a_success_on_a_fresh_instance_after_a_reused_failure_stops_reuse() {
        let policy = ReusePolicy::new(16);
        policy.confirmed_by_retry(&InvocationError::new(FailureKind::Trap, "no response"));
        assert_eq!(policy.limit(), 1);
    }

    #[test]
    fn only_effect_free_traps_run_again() {
        let trap = InvocationError::new(FailureKind::Trap, "x");
        let timeout = InvocationError::new(FailureKind::Timeout, "x");
        assert!(may_run_again(&trap, false, 0, false));
        assert!(!may_run_again(&trap, true, 0, false));
        assert!(!may_run_again(&trap, false, 1, false));
        assert!(!may_run_again(&trap, false, 0, true));
        assert!(!may_run_again(&timeout, false, 0, false));
    }
}
