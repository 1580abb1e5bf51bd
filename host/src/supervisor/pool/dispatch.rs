//! The workers as dispatch targets: [`WorkerPool`] holds the ready
//! workers and picks one per invocation, [`FunctionPool`] sends one
//! function's invocations to it and waits for the answer.

use super::{FunctionLive, KILL_WAIT, OVERRUN_GRACE, WorkerLink};
use crate::invocation::{
    Body, BodyError, Dispatch, DispatchResult, FailureKind, HttpInvocation, InvocationError,
    QueueInvocation, QueueResult,
};
use crate::ipc::{self, InvokeHead, ToWorker};
use http_body_util::BodyExt;
use hyper::body::Body as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::oneshot;

/// Removes a pending invocation if the dispatch future is dropped before
/// its response head arrives (the client disconnected).
struct CancelOnDrop {
    link: Arc<WorkerLink>,
    id: u64,
    armed: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if self.armed {
            self.link.cancel(self.id);
        }
    }
}

/// The ready workers; [`FunctionPool`] sends one function's invocations to them.
#[derive(Default)]
pub struct WorkerPool {
    links: RwLock<Vec<Arc<WorkerLink>>>,
}

impl WorkerPool {
    /// An empty pool.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a ready worker. Its dispatch count starts at the lowest of the
    /// others, so a new or replacement worker shares ties fairly instead
    /// of taking every request until it has caught up.
    pub fn install(&self, link: Arc<WorkerLink>) {
        let mut links = self.links.write().expect("pool");
        links.retain(|existing| existing.slot != link.slot);
        let floor = links
            .iter()
            .map(|l| l.dispatched.load(Ordering::Relaxed))
            .min()
            .unwrap_or(0);
        link.dispatched.store(floor, Ordering::Relaxed);
        links.push(link);
    }

    /// Takes slot `slot`'s worker out (it exited or is being retired).
    pub fn remove(&self, slot: usize) {
        self.links
            .write()
            .expect("pool")
            .retain(|link| link.slot != slot);
    }

    /// The ready workers.
    pub fn links(&self) -> Vec<Arc<WorkerLink>> {
        self.links.read().expect("pool").clone()
    }

    /// The ready worker of `slot`, if any.
    pub fn link(&self, slot: usize) -> Option<Arc<WorkerLink>> {
        self.links
            .read()
            .expect("pool")
            .iter()
            .find(|link| link.slot == slot)
            .cloned()
    }

    /// Invocations in flight on all workers.
    pub fn in_flight(&self) -> usize {
        self.links
            .read()
            .expect("pool")
            .iter()
            .map(|l| l.in_flight())
            .sum()
    }

    /// The ready worker with app version `generation` loaded and the
    /// fewest invocations in flight; among
    /// equals, the one sent the fewest so far, so uniform load spreads
    /// evenly even when one worker answers a little faster.
    fn pick(&self, generation: u64) -> Option<Arc<WorkerLink>> {
        let links = self.links.read().expect("pool");
        let load =
            |link: &&Arc<WorkerLink>| (link.in_flight(), link.dispatched.load(Ordering::Relaxed));
        // The least loaded worker nearly always has the version (all do,
        // outside a redeploy): ask only it, and scan only if it does not.
        let best = links
            .iter()
            .filter(|link| !link.is_lost())
            .min_by_key(load)
            .filter(|link| link.has_loaded(generation))
            .or_else(|| {
                links
                    .iter()
                    .filter(|link| !link.is_lost() && link.has_loaded(generation))
                    .min_by_key(load)
            })?;
        best.dispatched.fetch_add(1, Ordering::Relaxed);
        Some(best.clone())
    }
}

impl WorkerPool {
    /// The ready worker with app version `generation` loaded holding the
    /// fewest handed connections; among equals, the one serving the fewest
    /// requests on them now (read from its table), then the one given the
    /// fewest so far.
    pub fn pick_for_connection(&self, generation: u64) -> Option<Arc<WorkerLink>> {
        let links = self.links.read().expect("pool");
        let best = links
            .iter()
            .filter(|link| !link.is_lost() && link.has_loaded(generation))
            .min_by_key(|link| {
                (
                    link.handed.open_count(),
                    link.handed.in_flight(),
                    link.dispatched.load(Ordering::Relaxed),
                )
            })?;
        best.dispatched.fetch_add(1, Ordering::Relaxed);
        Some(best.clone())
    }
}

/// Runs one invocation on `link` (none: no worker is ready).
async fn run(
    link: Option<Arc<WorkerLink>>,
    target: Target,
    deadline: Duration,
    invocation: HttpInvocation,
) -> DispatchResult {
    let Some(link) = link else {
        return Err(InvocationError::new(
            FailureKind::Capacity,
            "no worker is ready",
        ));
    };
    let id = invocation.id.to_u64();
    let (parts, body) = invocation.request.into_parts();
    let body_empty = body.is_end_stream();
    let body_length = body.size_hint().exact();
    let Some(head) = link.register(id, target.live) else {
        return Err(link.gone_error());
    };
    let mut guard = CancelOnDrop {
        link: link.clone(),
        id,
        armed: true,
    };
    let sent = link.to_worker.send(ToWorker::Invoke(Box::new(InvokeHead {
        id,
        generation: target.generation,
        function: target.function,
        method: parts.method.as_str().to_string(),
        uri: parts.uri.to_string(),
        headers: ipc::headers_to_wire(&parts.headers),
        body_empty,
        body_length,
    })));
    if sent.is_err() {
        guard.armed = false;
        link.take(id);
        return Err(link.gone_error());
    }
    if !body_empty {
        tokio::spawn(send_request_body(link.clone(), id, body));
    }
    let outcome = await_answer(&link, id, deadline, head).await;
    guard.armed = false;
    outcome
}

/// Waits for the worker's answer to invocation `id`. No answer by
/// `deadline` recycles the worker; the timeout is reported only once it is
/// dead, so a retry (a queue message's redelivery) never runs beside it.
async fn await_answer<T>(
    link: &WorkerLink,
    id: u64,
    deadline: Duration,
    answer: oneshot::Receiver<Result<T, InvocationError>>,
) -> Result<T, InvocationError> {
    match tokio::time::timeout(deadline, answer).await {
        Ok(Ok(result)) => result,
        // The reader dropped the sender without an answer: the link is gone.
        Ok(Err(_)) => Err(InvocationError::new(
            FailureKind::WorkerLost,
            format!("worker {} (pid {}) exited", link.slot, link.pid),
        )),
        Err(_) => {
            tracing::error!(
                "[{id:016x}] worker {} (pid {}) gave no answer within --timeout + {} s; recycling it",
                link.slot,
                link.pid,
                OVERRUN_GRACE.as_secs()
            );
            link.overrun(id);
            link.wait_gone(KILL_WAIT).await;
            Err(InvocationError::new(
                FailureKind::Timeout,
                "the worker overran the deadline and was recycled",
            ))
        }
    }
}

/// Streams a request body to the worker in bounded chunks.
async fn send_request_body(link: Arc<WorkerLink>, id: u64, mut body: Body) {
    loop {
        let message = match body.frame().await {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    for chunk in ipc::chunks(data) {
                        if link
                            .to_worker
                            .send(ToWorker::RequestBody { id, chunk })
                            .is_err()
                        {
                            return;
                        }
                    }
                    continue;
                }
                Err(_trailers) => continue,
            },
            Some(Err(error)) => ToWorker::RequestAbort {
                id,
                too_large: match error {
                    BodyError::TooLarge { limit } => Some(limit),
                    BodyError::Transport(_) => None,
                },
                reason: error.to_string(),
            },
            None => ToWorker::RequestEnd { id },
        };
        let _ = link.to_worker.send(message);
        return;
    }
}

/// One function of one app version: where its invocations go.
#[derive(Clone)]
struct Target {
    generation: u64,
    function: u32,
    live: Arc<FunctionLive>,
}

/// One function's invocations, sent to the pool's workers that have its
/// app version loaded, with the version and the function's index.
pub struct FunctionPool {
    pool: Arc<WorkerPool>,
    target: Target,
    deadline: Duration,
}

impl FunctionPool {
    /// The invocations of function `function` (its index in app version
    /// `generation`), counted in `live`, whose `timeout` is `timeout`:
    /// running longer than that plus [`OVERRUN_GRACE`] recycles their
    /// worker.
    pub fn new(
        pool: Arc<WorkerPool>,
        generation: u64,
        function: u32,
        live: Arc<FunctionLive>,
        timeout: Duration,
    ) -> Self {
        Self {
            pool,
            target: Target {
                generation,
                function,
                live,
            },
            deadline: timeout + OVERRUN_GRACE,
        }
    }
}

impl Dispatch for FunctionPool {
    fn dispatch_http(
        &self,
        invocation: HttpInvocation,
    ) -> Pin<Box<dyn Future<Output = DispatchResult> + Send + 'static>> {
        let link = self.pool.pick(self.target.generation);
        Box::pin(run(link, self.target.clone(), self.deadline, invocation))
    }

    fn dispatch_queue(
        &self,
        invocation: QueueInvocation,
    ) -> Pin<Box<dyn Future<Output = QueueResult> + Send + 'static>> {
        let link = self.pool.pick(self.target.generation);
        Box::pin(run_queue(
            link,
            self.target.clone(),
            self.deadline,
            invocation,
        ))
    }
}

/// Runs one queue message on `link` (none: no worker is ready).
async fn run_queue(
    link: Option<Arc<WorkerLink>>,
    target: Target,
    deadline: Duration,
    invocation: QueueInvocation,
) -> QueueResult {
    let Some(link) = link else {
        return Err(InvocationError::new(
            FailureKind::Capacity,
            "no worker is ready",
        ));
    };
    let id = invocation.id.to_u64();
    let Some(reply) = link.register_queue(id, target.live) else {
        return Err(link.gone_error());
    };
    let sent = link.to_worker.send(ToWorker::InvokeQueue {
        id,
        generation: target.generation,
        function: target.function,
        message: invocation.message,
    });
    if sent.is_err() {
        link.take_queue(id);
        return Err(link.gone_error());
    }
    await_answer(&link, id, deadline, reply).await
}
