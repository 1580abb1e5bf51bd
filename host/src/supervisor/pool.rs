//! The workers as one [`Dispatch`]: each invocation goes to the ready worker
//! with the fewest in flight (ties to the one sent the fewest), over that
//! worker's channel; its response streams back the same way.
//!
//! A [`WorkerLink`] is one live worker process's side of the channel: the
//! invocations pending on it, its counters, and the reader that turns the
//! worker's messages into responses. When the worker goes away, every
//! invocation pending on it fails at once with `worker-lost`.

use crate::config::Lane;
use crate::invocation::{
    Body, BodyError, Dispatch, DispatchResult, FailureKind, HttpInvocation, InvocationError,
    QueueInvocation, QueueResult,
};
use crate::ipc::{self, ChannelBody, InvokeHead, ToSupervisor, ToWorker};
use crate::metrics::Metrics;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Body as _;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::io::AsyncRead;
use tokio::sync::{Notify, mpsc, oneshot};

/// How long past `--timeout` the supervisor waits for a worker's answer
/// before it gives the client 504 and recycles the worker. The worker
/// enforces the timeout itself; overrunning it this far means the worker is
/// stuck (stopped, deadlocked, or blocked in a host call).
pub const OVERRUN_GRACE: Duration = Duration::from_secs(2);
/// How long an overrun waits for the stuck worker to be killed.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// Counters of one worker slot, kept across its restarts.
#[derive(Debug, Default)]
pub struct SlotCounters {
    /// Invocations finished, any outcome.
    pub completed: AtomicU64,
    /// Invocations that failed (a failure class or a lost worker).
    pub failures: AtomicU64,
    /// Times a new process took the slot after one exited.
    pub restarts: AtomicU64,
}

/// One function of one app version: its name and lane (the metrics'
/// labels) and its counts, shared by every worker's link.
#[derive(Debug)]
pub struct FunctionLive {
    /// The function's name.
    pub name: Arc<str>,
    /// The lane it runs in.
    pub lane: Lane,
    /// Invocations finished, any outcome.
    pub completed: AtomicU64,
    /// Of those, the ones that failed.
    pub failures: AtomicU64,
}

impl FunctionLive {
    /// Zeroed counts for function `name`, running in `lane`.
    pub fn new(name: &str, lane: Lane) -> Self {
        Self {
            name: name.into(),
            lane,
            completed: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }
}

/// What a worker answered to loading an app version.
pub type LoadResult = Result<(), String>;

/// A response head on its way from the reader to the waiting dispatch.
type HeadResult = Result<http::Response<Body>, InvocationError>;

struct PendingQueue {
    reply: oneshot::Sender<QueueResult>,
    started: Instant,
    function: Arc<FunctionLive>,
}

struct Pending {
    head: Option<oneshot::Sender<HeadResult>>,
    body: Option<mpsc::UnboundedSender<Result<Bytes, BodyError>>>,
    started: Instant,
    function: Arc<FunctionLive>,
}

/// The supervisor's side of one live worker process.
pub struct WorkerLink {
    /// The worker's slot.
    pub slot: usize,
    /// The worker's process id.
    pub pid: u32,
    /// When the process started.
    pub started: Instant,
    to_worker: mpsc::UnboundedSender<ToWorker>,
    pending: Mutex<HashMap<u64, Pending>>,
    queue_pending: Mutex<HashMap<u64, PendingQueue>>,
    in_flight: AtomicUsize,
    dispatched: AtomicU64,
    instances: AtomicU64,
    async_stalls: AtomicU64,
    guest_output_dropped: AtomicU64,
    counters: Arc<SlotCounters>,
    metrics: Arc<Metrics>,
    /// The app versions the worker has loaded.
    loaded: Mutex<std::collections::HashSet<u64>>,
    /// Who waits for the worker's answer to loading a version.
    load_waiters: Mutex<HashMap<u64, oneshot::Sender<LoadResult>>>,
    lost: AtomicBool,
    gone: tokio::sync::watch::Sender<bool>,
    overran: AtomicBool,
    recycle: Notify,
}

impl WorkerLink {
    /// A link for a worker that has reported ready.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        slot: usize,
        pid: u32,
        started: Instant,
        generation: u64,
        to_worker: mpsc::UnboundedSender<ToWorker>,
        counters: Arc<SlotCounters>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            slot,
            pid,
            started,
            to_worker,
            pending: Mutex::new(HashMap::new()),
            queue_pending: Mutex::new(HashMap::new()),
            in_flight: AtomicUsize::new(0),
            dispatched: AtomicU64::new(0),
            instances: AtomicU64::new(0),
            async_stalls: AtomicU64::new(0),
            guest_output_dropped: AtomicU64::new(0),
            counters,
            metrics,
            loaded: Mutex::new([generation].into()),
            load_waiters: Mutex::new(HashMap::new()),
            lost: AtomicBool::new(false),
            gone: tokio::sync::watch::channel(false).0,
            overran: AtomicBool::new(false),
            recycle: Notify::new(),
        }
    }

    /// Invocations sent to this worker and not finished.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Instances alive in the worker, as it last reported.
    pub fn instances(&self) -> u64 {
        self.instances.load(Ordering::Relaxed)
    }

    /// Whether the supervisor asked for this worker to be recycled because
    /// an invocation overran its deadline.
    pub fn overran(&self) -> bool {
        self.overran.load(Ordering::Relaxed)
    }

    /// Resolves when the link asks its slot to kill the process.
    pub async fn recycle_requested(&self) {
        self.recycle.notified().await;
    }

    /// Asks the worker to load app version `generation` next to what it
    /// runs; resolves with its answer (an error if it is lost first).
    pub fn load(
        &self,
        generation: u64,
        functions: Vec<ipc::FunctionInit>,
    ) -> oneshot::Receiver<LoadResult> {
        let (sender, receiver) = oneshot::channel();
        self.load_waiters
            .lock()
            .expect("load waiters")
            .insert(generation, sender);
        let _ = self.to_worker.send(ToWorker::Load {
            generation,
            functions,
        });
        receiver
    }

    /// Whether the worker has app version `generation` loaded.
    pub fn has_loaded(&self, generation: u64) -> bool {
        self.loaded.lock().expect("loaded").contains(&generation)
    }

    /// Tells the worker no new invocation of version `generation` will
    /// come: it drops that version once its in-flight invocations finish.
    pub fn release(&self, generation: u64) {
        self.loaded.lock().expect("loaded").remove(&generation);
        let _ = self.to_worker.send(ToWorker::Release { generation });
    }

    /// Asks the worker to finish and exit.
    pub fn shutdown(&self) {
        let _ = self.to_worker.send(ToWorker::Shutdown);
    }

    /// Reads the worker's messages until the channel closes or carries
    /// garbage; returns why it stopped.
    pub async fn read_loop<R: AsyncRead + Unpin>(
        self: &Arc<Self>,
        mut reader: ipc::MessageReader<R, ToSupervisor>,
    ) -> String {
        loop {
            match ipc::next_message(&mut reader).await {
                Ok(Some(message)) => {
                    if let Err(problem) = self.handle(message) {
                        return format!("protocol error: {problem}");
                    }
                }
                Ok(None) => return "channel closed".to_string(),
                Err(error) => return format!("protocol error: {error}"),
            }
        }
    }

    fn handle(self: &Arc<Self>, message: ToSupervisor) -> Result<(), String> {
        match message {
            ToSupervisor::ResponseHead {
                id,
                status,
                headers,
                body_length,
                body_start,
                body_complete,
            } => {
                let status = http::StatusCode::from_u16(status)
                    .map_err(|_| format!("invalid status {status}"))?;
                let headers = ipc::headers_from_wire(headers)?;
                let (sender, body) = ChannelBody::new();
                if !body_start.is_empty() {
                    let _ = sender.send(Ok(body_start));
                }
                let link = self.clone();
                let mut body = body.with_length(body_length).on_drop(move |finished| {
                    if !finished {
                        link.cancel(id);
                    }
                });
                // Credits pace a body still streaming; a complete one (most
                // responses) costs no message back.
                if !body_complete {
                    let credit = self.to_worker.clone();
                    body = body.on_chunk(move |bytes| {
                        let bytes = u32::try_from(bytes).unwrap_or(u32::MAX);
                        let _ = credit.send(ToWorker::ResponseCredit { id, bytes });
                    });
                }
                let mut response = http::Response::new(body.boxed_unsync());
                *response.status_mut() = status;
                *response.headers_mut() = headers;
                let head = {
                    let mut pending = self.pending.lock().expect("pending map");
                    pending.get_mut(&id).and_then(|entry| {
                        if !body_complete {
                            entry.body = Some(sender);
                        }
                        entry.head.take()
                    })
                };
                if body_complete {
                    self.finish(id, "ok", None);
                }
                if let Some(head) = head {
                    let _ = head.send(Ok(response));
                }
            }
            ToSupervisor::ResponseBody { id, chunk } => {
                let pending = self.pending.lock().expect("pending map");
                if let Some(body) = pending.get(&id).and_then(|p| p.body.as_ref()) {
                    let _ = body.send(Ok(chunk));
                }
            }
            ToSupervisor::ResponseEnd { id } => self.finish(id, "ok", None),
            ToSupervisor::ResponseAbort { id, detail } => {
                tracing::warn!(
                    "[{id:016x}] response body failed in worker {}: {detail}",
                    self.slot
                );
                self.finish(id, "trap", Some(BodyError::Transport(detail)));
            }
            ToSupervisor::Failed { id, kind, detail } => {
                let entry = self.take(id);
                if let Some(mut entry) = entry {
                    self.count(kind.as_str(), entry.started, &entry.function);
                    if let Some(head) = entry.head.take() {
                        let _ = head.send(Err(InvocationError::new(kind, detail)));
                    }
                }
            }
            ToSupervisor::QueueDone { id, failure } => {
                if let Some(entry) = self.take_queue(id) {
                    let outcome = failure.as_ref().map_or("ok", |(kind, _)| kind.as_str());
                    self.count(outcome, entry.started, &entry.function);
                    let result = match failure {
                        None => Ok(()),
                        Some((kind, detail)) => Err(InvocationError::new(kind, detail)),
                    };
                    let _ = entry.reply.send(result);
                }
            }
            ToSupervisor::Stats {
                instances,
                async_stalls,
                guest_output_dropped,
            } => {
                self.instances.store(instances, Ordering::Relaxed);
                // The worker's counts are cumulative; count what is new.
                let new = |seen: &AtomicU64, now: u64| {
                    now.saturating_sub(seen.swap(now, Ordering::Relaxed))
                };
                self.metrics
                    .async_stalls
                    .inc_by(new(&self.async_stalls, async_stalls));
                self.metrics
                    .guest_output_dropped
                    .inc_by(new(&self.guest_output_dropped, guest_output_dropped));
            }
            ToSupervisor::Loaded {
                generation,
                failure,
            } => {
                if failure.is_none() {
                    self.loaded.lock().expect("loaded").insert(generation);
                }
                let waiter = self
                    .load_waiters
                    .lock()
                    .expect("load waiters")
                    .remove(&generation);
                if let Some(waiter) = waiter {
                    let _ = waiter.send(failure.map_or(Ok(()), Err));
                }
            }
            ToSupervisor::Ready(_) | ToSupervisor::StartFailed { .. } => {
                return Err("a start-up message from a running worker".to_string());
            }
        }
        Ok(())
    }

    /// Registers an invocation before its head is sent; `None` if the
    /// worker is already lost (checked under the lock [`Self::lose`] takes,
    /// so no registration slips in after the pending map was failed).
    fn register(
        &self,
        id: u64,
        function: Arc<FunctionLive>,
    ) -> Option<oneshot::Receiver<HeadResult>> {
        let (head, receiver) = oneshot::channel();
        let mut pending = self.pending.lock().expect("pending map");
        if self.is_lost() {
            return None;
        }
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.metrics.in_flight.inc();
        pending.insert(
            id,
            Pending {
                head: Some(head),
                body: None,
                started: Instant::now(),
                function,
            },
        );
        Some(receiver)
    }

    /// Registers a queue invocation before it is sent; `None` if the worker
    /// is already lost.
    fn register_queue(
        &self,
        id: u64,
        function: Arc<FunctionLive>,
    ) -> Option<oneshot::Receiver<QueueResult>> {
        let (reply, receiver) = oneshot::channel();
        let mut pending = self.queue_pending.lock().expect("queue pending map");
        if self.is_lost() {
            return None;
        }
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.metrics.in_flight.inc();
        pending.insert(
            id,
            PendingQueue {
                reply,
                started: Instant::now(),
                function,
            },
        );
        Some(receiver)
    }

    /// Resolves once the worker is gone (its link lost), or after `limit`.
    pub async fn wait_gone(&self, limit: Duration) {
        let mut gone = self.gone.subscribe();
        let _ = tokio::time::timeout(limit, gone.wait_for(|gone| *gone)).await;
    }

    /// Removes a pending queue invocation, keeping the in-flight counts right.
    fn take_queue(&self, id: u64) -> Option<PendingQueue> {
        let entry = self
            .queue_pending
            .lock()
            .expect("queue pending map")
            .remove(&id);
        if entry.is_some() {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            self.metrics.in_flight.dec();
        }
        entry
    }

    /// Removes a pending invocation, keeping the in-flight counts right.
    fn take(&self, id: u64) -> Option<Pending> {
        let entry = self.pending.lock().expect("pending map").remove(&id);
        if entry.is_some() {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            self.metrics.in_flight.dec();
        }
        entry
    }

    fn count(&self, outcome: &str, started: Instant, function: &FunctionLive) {
        let failed = outcome != "ok" && outcome != "cancelled";
        self.counters.completed.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.counters.failures.fetch_add(1, Ordering::Relaxed);
        }
        function.completed.fetch_add(1, Ordering::Relaxed);
        if failed {
            function.failures.fetch_add(1, Ordering::Relaxed);
        }
        self.metrics
            .record(&function.name, function.lane, outcome, started.elapsed());
    }

    /// Ends an invocation whose response was streaming.
    fn finish(&self, id: u64, outcome: &str, error: Option<BodyError>) {
        if let Some(entry) = self.take(id) {
            self.count(outcome, entry.started, &entry.function);
            if let (Some(body), Some(error)) = (entry.body, error) {
                let _ = body.send(Err(error));
            }
        }
    }

    /// The client went away: stop the invocation in the worker.
    fn cancel(&self, id: u64) {
        if let Some(entry) = self.take(id) {
            self.count("cancelled", entry.started, &entry.function);
            let _ = self.to_worker.send(ToWorker::Cancel { id });
        }
    }

    /// An invocation overran its deadline plus [`OVERRUN_GRACE`]: fail it
    /// as a timeout and have the slot kill the worker.
    fn overrun(&self, id: u64) {
        if let Some(entry) = self.take(id) {
            self.count(
                FailureKind::Timeout.as_str(),
                entry.started,
                &entry.function,
            );
        }
        if let Some(entry) = self.take_queue(id) {
            self.count(
                FailureKind::Timeout.as_str(),
                entry.started,
                &entry.function,
            );
        }
        self.overran.store(true, Ordering::Relaxed);
        self.recycle.notify_one();
    }

    /// The worker is gone: fail everything pending on it with `worker-lost`.
    pub fn lose(&self) {
        self.lose_queue();
        // Whoever waits for a version to load hears that it will not.
        self.load_waiters.lock().expect("load waiters").clear();
        let drained: Vec<(u64, Pending)> = {
            let mut pending = self.pending.lock().expect("pending map");
            self.lost.store(true, Ordering::Relaxed);
            pending.drain().collect()
        };
        for (id, mut entry) in drained {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            self.metrics.in_flight.dec();
            self.count(
                FailureKind::WorkerLost.as_str(),
                entry.started,
                &entry.function,
            );
            let detail = format!("worker {} (pid {}) exited", self.slot, self.pid);
            if let Some(head) = entry.head.take() {
                let _ = head.send(Err(InvocationError::new(FailureKind::WorkerLost, detail)));
            } else if let Some(body) = entry.body.take() {
                tracing::warn!("[{id:016x}] response cut short: {detail}");
                let _ = body.send(Err(BodyError::Transport(detail)));
            }
        }
        self.gone.send_replace(true);
    }

    fn lose_queue(&self) {
        let drained: Vec<(u64, PendingQueue)> = {
            let mut pending = self.queue_pending.lock().expect("queue pending map");
            self.lost.store(true, Ordering::Relaxed);
            pending.drain().collect()
        };
        for (_, entry) in drained {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            self.metrics.in_flight.dec();
            self.count(
                FailureKind::WorkerLost.as_str(),
                entry.started,
                &entry.function,
            );
            let detail = format!("worker {} (pid {}) exited", self.slot, self.pid);
            let _ = entry
                .reply
                .send(Err(InvocationError::new(FailureKind::WorkerLost, detail)));
        }
    }

    /// The failure of an invocation that could not be sent to this worker.
    fn gone_error(&self) -> InvocationError {
        InvocationError::new(
            FailureKind::WorkerLost,
            format!("worker {} (pid {}) is gone", self.slot, self.pid),
        )
    }

    fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed)
    }
}

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
        let best = links
            .iter()
            .filter(|link| !link.is_lost() && link.has_loaded(generation))
            .min_by_key(|link| (link.in_flight(), link.dispatched.load(Ordering::Relaxed)))?;
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
