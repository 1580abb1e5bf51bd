//! The sync lane: a bounded pool of OS threads calling guests with
//! wasmtime's synchronous API, like Python's `ThreadPoolExecutor` for sync
//! functions in Azure Functions.
//!
//! - `--threads` threads, each keeping one warm, pre-created instance, so a
//!   call starts without instantiation on its path.
//! - A bounded queue (`--queue-depth`) in front; when it is full the call is
//!   refused at once with 503 `capacity` and `Retry-After`.
//! - A started blocking call cannot be cancelled from outside (tokio's
//!   `spawn_blocking` has the same rule), so the deadline lives in the guest:
//!   an epoch deadline traps it within one tick of `--timeout`. A guest
//!   blocked inside a host call (a long timer) is not at a wasm instruction,
//!   so the caller also stops waiting at the deadline and answers 504; the
//!   thread comes back when the host call returns and the trap fires. The
//!   request body fails at the deadline, so a client that stops sending
//!   cannot hold a thread; a client that stops *reading* a large response
//!   holds it until `--write-timeout` cuts the connection (the guest waits
//!   to write until then), and, behind worker processes, no longer than
//!   the invocation's deadline.
//! - An instance serves as many calls as `reuse.rs` allows (`--instance-reuse`,
//!   or many for a component with a large initial memory such as CPython's);
//!   what one call leaves in memory is then seen by the next. A failed
//!   instance is always dropped, and a call that failed on a reused
//!   instance before it could have had effects runs again on a fresh one.

use super::profile;
use super::reuse::{Ended, Replay, ReusePolicy};
use super::state::StoreState;
use super::{
    Answer, ExecSettings, body_error_to_wasi, call_outcome, classify, host_response, new_state,
};
use crate::component::one_line;
use crate::config::{Origin, default_queue_timeout};
use crate::engine::EPOCH_TICK;
use crate::invocation::{
    Body, BodyError, Dispatch, DispatchResult, FailureKind, HttpInvocation, InvocationError,
    InvocationId,
};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use wasmtime::Store;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::sync::{Proxy, ProxyPre};

/// How long past the deadline the caller waits for a sync-lane thread to
/// report before answering 504 itself (the guest traps within one epoch tick
/// unless it is blocked in a host call).
const DEADLINE_SLACK: Duration = Duration::from_millis(100);

/// One call waiting for a thread.
struct Job {
    id: InvocationId,
    request: http::Request<Body>,
    deadline: Instant,
    respond: oneshot::Sender<DispatchResult>,
    /// Whether a thread took the job or its caller stopped waiting first.
    claim: Arc<Claim>,
    /// When it joined the queue.
    enqueued: Instant,
}

/// Decides, once, between a thread starting a job and its caller giving up
/// on it at `--queue-timeout`.
#[derive(Default)]
struct Claim(AtomicU8);

impl Claim {
    const QUEUED: u8 = 0;
    const STARTED: u8 = 1;
    const ABANDONED: u8 = 2;

    fn settle(&self, to: u8) -> bool {
        self.0
            .compare_exchange(Self::QUEUED, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// A thread takes the job; false if its caller gave up.
    fn start(&self) -> bool {
        self.settle(Self::STARTED)
    }

    /// The caller gives up; false if a thread has started the job.
    fn abandon(&self) -> bool {
        self.settle(Self::ABANDONED)
    }
}

/// The sync lane's entry point: a queue in front of the thread pool.
pub struct SyncLane {
    queue: SyncSender<Job>,
    depth: usize,
    timeout: Duration,
    queue_timeout: Duration,
}

impl SyncLane {
    /// Starts `--threads` threads serving `pre`, each instance for up to
    /// `reuse` calls (see `reuse.rs`). Their host calls that need
    /// async I/O (body streams, timers, outbound HTTP) run on `runtime`.
    pub fn start(
        pre: ProxyPre<StoreState>,
        settings: ExecSettings,
        reuse: u32,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        let depth = settings.execution.queue_depth;
        let timeout = settings.limits.timeout;
        let queue_timeout = settings
            .execution
            .queue_timeout
            .unwrap_or_else(|| default_queue_timeout(timeout));
        let (queue, jobs) = sync_channel(depth);
        let jobs = Arc::new(Mutex::new(jobs));
        let shared = Arc::new(Worker {
            outbound: settings.grants.outbound.clone().into(),
            pre,
            settings,
            reuse: ReusePolicy::new(reuse),
        });
        for index in 0..shared.settings.execution.threads {
            let worker = shared.clone();
            let jobs = jobs.clone();
            let runtime = runtime.clone();
            std::thread::Builder::new()
                .name(format!("fnhost-sync-{index}"))
                .spawn(move || {
                    let _entered = runtime.enter();
                    worker.settings.profile.add_this_thread();
                    worker.serve(&jobs);
                })
                .expect("spawning a sync-lane thread");
        }
        Self {
            queue,
            depth,
            timeout,
            queue_timeout,
        }
    }
}

impl Dispatch for SyncLane {
    fn dispatch_http(
        &self,
        invocation: HttpInvocation,
    ) -> Pin<Box<dyn Future<Output = DispatchResult> + Send + 'static>> {
        let (respond, mut answer) = oneshot::channel();
        let claim = Arc::new(Claim::default());
        let now = Instant::now();
        let job = Job {
            id: invocation.id,
            request: invocation.request,
            deadline: now + self.timeout,
            respond,
            claim: claim.clone(),
            enqueued: now,
        };
        let refused = match self.queue.try_send(job) {
            Ok(()) => None,
            Err(TrySendError::Full(_)) => Some(format!(
                "the sync lane's queue is full ({} calls waiting)",
                self.depth
            )),
            Err(TrySendError::Disconnected(_)) => Some("the sync lane has stopped".to_string()),
        };
        let (timeout, queue_timeout) = (self.timeout, self.queue_timeout);
        Box::pin(async move {
            if let Some(reason) = refused {
                return Err(InvocationError::new(FailureKind::Capacity, reason));
            }
            // Waiting for a thread is bounded on its own: past it the call
            // is refused like a full queue, unless a thread has started it.
            if let Ok(result) = tokio::time::timeout(queue_timeout, &mut answer).await {
                return result.unwrap_or_else(|_| Err(thread_ended()));
            }
            if claim.abandon() {
                return Err(InvocationError::new(
                    FailureKind::Capacity,
                    format!(
                        "waited {} ms for a sync-lane thread (--queue-timeout)",
                        queue_timeout.as_millis()
                    ),
                ));
            }
            let left = (timeout + DEADLINE_SLACK).saturating_sub(queue_timeout);
            match tokio::time::timeout(left, answer).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(thread_ended()),
                Err(_) => Err(InvocationError::new(
                    FailureKind::Timeout,
                    format!(
                        "ran past its {} ms timeout (blocked in a host call)",
                        timeout.as_millis()
                    ),
                )),
            }
        })
    }
}

fn thread_ended() -> InvocationError {
    InvocationError::new(
        FailureKind::Trap,
        "the sync-lane thread ended without answering",
    )
}

/// What every sync-lane thread shares.
struct Worker {
    pre: ProxyPre<StoreState>,
    settings: ExecSettings,
    outbound: Arc<[Origin]>,
    /// Calls one instance serves before it is replaced.
    reuse: ReusePolicy,
}

/// A pre-created instance and the calls it has served.
struct Warm {
    store: Store<StoreState>,
    proxy: Proxy,
    calls: u32,
}

impl Worker {
    /// The thread's loop: keep an instance warm, take a job, run it.
    fn serve(&self, jobs: &Mutex<Receiver<Job>>) {
        let mut warm: Option<Warm> = None;
        loop {
            if warm.is_none() {
                match self.prepare() {
                    Ok(instance) => warm = Some(instance),
                    Err(error) => tracing::warn!("cannot pre-create an instance: {error}"),
                }
            }
            let job = {
                let jobs = jobs.lock().unwrap_or_else(|e| e.into_inner());
                match jobs.recv() {
                    Ok(job) => job,
                    Err(_) => return,
                }
            };
            if job.respond.is_closed() || !job.claim.start() {
                continue;
            }
            if Instant::now() >= job.deadline {
                let _ = job.respond.send(Err(InvocationError::new(
                    FailureKind::Timeout,
                    "timed out waiting in the sync lane's queue",
                )));
                continue;
            }
            // Reuse may have stopped since this instance served its last call.
            let warm_usable = warm.take().filter(|w| w.calls < self.reuse.limit());
            let instance = match warm_usable.map_or_else(|| self.prepare(), Ok) {
                Ok(instance) => instance,
                Err(error) => {
                    let _ = job.respond.send(Err(error));
                    continue;
                }
            };
            let id = job.id;
            let queued = job.enqueued.elapsed();
            let cpu_before = profile::thread_cpu_time();
            // A panic in a host call must cost one call, not the thread: the
            // caller sees its answer channel close and gets a 500.
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run(instance, job)))
            {
                Ok(next) => warm = next,
                Err(_) => {
                    tracing::error!("[{id}] the host panicked while running this call");
                    warm = None;
                }
            }
            self.settings
                .profile
                .record(profile::thread_cpu_time() - cpu_before, queued);
        }
    }

    /// A new store and instance, ready for a call.
    fn prepare(&self) -> Result<Warm, InvocationError> {
        let state = new_state(&self.settings, &self.outbound)?;
        let mut store = Store::new(self.pre.engine(), state);
        store.limiter(|state| &mut state.limiter);
        // Instantiation runs guest start code: it gets a full deadline too.
        store.set_epoch_deadline(ticks(self.settings.limits.timeout));
        if let Some(budget) = self.settings.execution.max_fuel {
            store
                .set_fuel(budget)
                .map_err(|e| InvocationError::new(FailureKind::Trap, one_line(&e)))?;
        }
        let proxy = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| classify(&e, store.data().limiter.exceeded()))?;
        Ok(Warm {
            store,
            proxy,
            calls: 0,
        })
    }

    /// Runs one job on `instance`; returns the instance that may serve the
    /// next job, if any. A call that failed on a reused instance before it
    /// could have had effects runs again on a fresh one.
    fn run(&self, instance: Warm, job: Job) -> Option<Warm> {
        let Job {
            id,
            request,
            deadline,
            respond,
            claim: _,
            enqueued: _,
        } = job;
        // The response head goes to the caller as soon as the guest sets it;
        // the guest may keep writing the body on this thread afterwards.
        let answer = Answer::from_sender(respond);
        let reused = instance.calls > 0;
        let (request, replay) = Replay::keep_if(reused, request);
        let ended = self.call_on(instance, id, request, deadline, &answer);
        let failure = match ended.result {
            Ok(()) => {
                self.reuse.record(reused, None);
                return ended.instance;
            }
            Err(failure) => failure,
        };
        let dirs = !self.settings.grants.dirs.is_empty();
        // Only within the call's deadline.
        let replay = replay.filter(|_| Instant::now() < deadline);
        let answered = answer.is_answered();
        let again =
            self.reuse
                .run_again(id, reused, replay, &failure, answered, ended.outbound, dirs);
        let Some(request) = again else {
            report(id, &answer, failure);
            return None;
        };
        let ended = match self.prepare() {
            Ok(fresh) => self.call_on(fresh, id, request, deadline, &answer),
            Err(error) => {
                report(id, &answer, error);
                return None;
            }
        };
        match ended.result {
            Ok(()) => {
                self.reuse.confirmed_by_retry(&failure);
                // Kept before reuse stopped: not any more.
                ended
                    .instance
                    .filter(|fresh| fresh.calls < self.reuse.limit())
            }
            Err(error) => {
                self.reuse.record(false, Some(error.kind));
                report(id, &answer, error);
                None
            }
        }
    }

    /// Runs one call on `instance`, within `deadline`.
    fn call_on(
        &self,
        mut instance: Warm,
        id: InvocationId,
        request: http::Request<Body>,
        deadline: Instant,
        answer: &Answer,
    ) -> Ended<Warm> {
        let store = &mut instance.store;
        store.data_mut().begin(id);
        let remaining = deadline.saturating_duration_since(Instant::now());
        store.set_epoch_deadline(ticks(remaining));
        if let Some(budget) = self.settings.execution.max_fuel
            && let Err(error) = store.set_fuel(budget)
        {
            return Ended::failed(InvocationError::new(FailureKind::Trap, one_line(&error)));
        }

        // A guest blocked reading the request body is inside a host call,
        // where the epoch deadline cannot reach it; the body itself ends
        // with an error at the deadline, so a client that stops sending
        // cannot hold this thread.
        let request = request.map(|body| {
            DeadlineBody::new(body, deadline)
                .map_err(body_error_to_wasi)
                .boxed_unsync()
        });
        let resources = {
            let mut http = store.data_mut().http();
            let incoming = http.new_incoming_request(Scheme::Http, request);
            let sender = answer.clone();
            let outparam = http.new_response_outparam_from_callback(move |response| {
                sender.send(match response {
                    Ok(response) => Ok(host_response(response)),
                    // Past the deadline an error answer is what the
                    // deadline caused (the request body ends there).
                    Err(code) if Instant::now() >= deadline => Err(InvocationError::new(
                        FailureKind::Timeout,
                        format!("ran past its deadline (the guest answered {code:?})"),
                    )),
                    Err(code) => Err(InvocationError::new(
                        FailureKind::Trap,
                        format!("the guest answered with error code {code:?}"),
                    )),
                });
            });
            incoming.and_then(|incoming| Ok((incoming, outparam?)))
        };
        let (incoming, outparam) = match resources {
            Ok(resources) => resources,
            Err(error) => {
                return Ended::failed(InvocationError::new(FailureKind::Trap, one_line(&error)));
            }
        };

        let result = instance.proxy.wasi_http_incoming_handler().call_handle(
            &mut instance.store,
            incoming,
            outparam,
        );
        instance.calls += 1;
        let outbound = instance.store.data().outbound_requests();
        let exceeded = instance.store.data().limiter.exceeded();
        let result = call_outcome(result, answer.is_answered(), exceeded);
        // A failed instance is never used again, nor one refused memory:
        // it is at its cap, even if the guest coped and answered.
        let keep = result.is_ok() && !exceeded && instance.calls < self.reuse.limit();
        Ended {
            instance: keep.then_some(instance),
            result,
            outbound,
        }
    }
}

/// Answers the caller with `failure`, or logs it when the response had
/// already started.
fn report(id: InvocationId, answer: &Answer, failure: InvocationError) {
    let (kind, detail) = (failure.kind, failure.detail.clone());
    if !answer.send(Err(failure)) {
        tracing::warn!("[{id}] invocation failed after its response started: {kind}: {detail}");
    }
}

/// A request body that fails once `deadline` has passed.
struct DeadlineBody {
    inner: Body,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl DeadlineBody {
    fn new(inner: Body, deadline: Instant) -> Self {
        Self {
            inner,
            timer: Box::pin(tokio::time::sleep_until(deadline.into())),
        }
    }
}

impl hyper::body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        match this.timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(BodyError::Transport(
                "the request body did not arrive before the invocation's deadline".into(),
            )))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Epoch ticks covering `duration`, rounded up, at least one.
pub(super) fn ticks(duration: Duration) -> u64 {
    let tick = EPOCH_TICK.as_nanos();
    u64::try_from(duration.as_nanos().div_ceil(tick))
        .unwrap_or(u64::MAX)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_round_up_to_whole_ticks() {
        assert_eq!(ticks(Duration::ZERO), 1);
        assert_eq!(ticks(EPOCH_TICK), 1);
        assert_eq!(ticks(EPOCH_TICK + Duration::from_nanos(1)), 2);
        assert_eq!(ticks(Duration::from_secs(30)), 3000);
    }
}
