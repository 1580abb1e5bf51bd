//! The sync lane: a bounded pool of OS threads calling guests with
//! wasmtime's synchronous API, like Python's `ThreadPoolExecutor` for sync
//! functions in Azure Functions.
//!
//! - `--threads` threads, each keeping one warm, pre-created instance, so a
//!   call starts without instantiation on its path. With `--threads auto`
//!   (the default) a controller changes the count while serving
//!   (`crew.rs`, `exec/thread_control.rs`).
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

mod crew;
mod deadline;
mod thread;

pub(in crate::exec) use deadline::ticks;

use super::ExecSettings;
use super::state::StoreState;
use super::thread_control::ThreadController;
use crate::config::{AUTO_MAX_THREADS, ThreadCount, cores, default_queue_timeout};
use crate::invocation::{
    Body, Dispatch, DispatchResult, FailureKind, HttpInvocation, InvocationError, InvocationId,
};
use crew::Crew;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};
use thread::Runner;
use tokio::sync::oneshot;
use wasmtime_wasi_http::p2::bindings::sync::ProxyPre;

/// How long past the deadline the caller waits for a sync-lane thread to
/// report before answering 504 itself (the guest traps within one epoch tick
/// unless it is blocked in a host call).
const DEADLINE_SLACK: Duration = Duration::from_millis(100);

/// What the lane's queue carries to its threads.
// Calls are nearly all of it: boxing them to shrink the rare retire note
// would cost an allocation per call.
#[allow(clippy::large_enum_variant)]
enum Work {
    /// A call.
    Call(Job),
    /// A note for an idle thread to leave if the crew is over its target.
    Retire,
}

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
    queue: Arc<SyncSender<Work>>,
    crew: Arc<Crew>,
    depth: usize,
    timeout: Duration,
    queue_timeout: Duration,
}

impl SyncLane {
    /// Starts the lane's threads serving `pre`, each instance for up to
    /// `reuse` calls (see `reuse.rs`), and with `--threads auto` their
    /// controller. Their host calls that need async I/O (body streams,
    /// timers, outbound HTTP) run on `runtime`.
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
        let threads = settings.execution.threads;
        let (queue, jobs) = sync_channel(depth);
        let queue = Arc::new(queue);
        let crew = Crew::new(Runner::new(pre, settings, reuse), jobs, runtime);
        crew.grow_to(threads.initial());
        if threads == ThreadCount::Auto {
            let controller = ThreadController::new(threads.initial(), AUTO_MAX_THREADS, cores());
            crew.control(controller, Arc::downgrade(&queue));
        }
        Self {
            queue,
            crew,
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
        let waiting = &self.crew.load.waiting;
        waiting.fetch_add(1, Ordering::Relaxed);
        let sent = self.queue.try_send(Work::Call(job));
        if sent.is_err() {
            waiting.fetch_sub(1, Ordering::Relaxed);
        }
        let refused = match sent {
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
