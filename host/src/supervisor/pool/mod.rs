//! The workers as one dispatch target: each invocation goes to the ready worker
//! with the fewest in flight (ties to the one sent the fewest), over that
//! worker's channel; its response streams back the same way.
//!
//! A [`WorkerLink`] is one live worker process's side of the channel: the
//! invocations pending on it, its counters, and the reader that turns the
//! worker's messages into responses. When the worker goes away, every
//! invocation pending on it fails at once with `worker-lost`.

mod dispatch;

pub use dispatch::{FunctionPool, WorkerPool};

use crate::config::Lane;
use crate::invocation::{Body, BodyError, FailureKind, InvocationError, QueueResult};
use crate::ipc::{self, ChannelBody, ToSupervisor, ToWorker};
use crate::metrics::Metrics;
use bytes::Bytes;
use http_body_util::BodyExt;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncRead;
use tokio::sync::{Notify, mpsc, oneshot};

/// How long past `--timeout` the supervisor waits for a worker's answer
/// before it gives the client 504 and recycles the worker. The worker
/// enforces the timeout itself; overrunning it this far means the worker is
/// stuck (stopped, deadlocked, or blocked in a host call).
pub const OVERRUN_GRACE: Duration = Duration::from_secs(2);
/// How long the admin endpoint waits for a worker's reports before it
/// answers with what it has (a stopped worker must not stall it).
const FLUSH_WAIT: Duration = Duration::from_millis(200);
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
    /// Their wall time from dispatch to the end of the response, summed,
    /// in nanoseconds.
    pub wall_ns: AtomicU64,
    /// Calls running now.
    pub in_flight: AtomicUsize,
    /// The most that ran at once.
    pub peak_in_flight: AtomicUsize,
    /// What the workers measured: calls, CPU and time queued, summed.
    pub profile: Mutex<crate::exec::profile::ProfileSnapshot>,
}

impl FunctionLive {
    /// Zeroed counts for function `name`, running in `lane`.
    pub fn new(name: &str, lane: Lane) -> Self {
        Self {
            name: name.into(),
            lane,
            completed: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            wall_ns: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            peak_in_flight: AtomicUsize::new(0),
            profile: Mutex::default(),
        }
    }

    fn started(&self) {
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak_in_flight.fetch_max(now, Ordering::Relaxed);
    }

    /// Adds a worker's new measurements.
    fn add(&self, new: crate::exec::profile::ProfileSnapshot) {
        let mut profile = self.profile.lock().expect("profile");
        profile.calls += new.calls;
        profile.cpu_ns += new.cpu_ns;
        profile.queued_ns += new.queued_ns;
        profile.descheduled_ns += new.descheduled_ns;
        profile.thread_changes += new.thread_changes;
    }

    /// A worker that reported `before` sync-lane threads now reports
    /// `now`; returns the function's threads over all workers.
    fn move_threads(&self, before: u64, now: u64) -> u64 {
        let mut profile = self.profile.lock().expect("profile");
        profile.sync_threads = (profile.sync_threads + now).saturating_sub(before);
        profile.sync_threads
    }
}

/// Finds a function of an app version by its number and index.
pub type FunctionLookup = Arc<dyn Fn(u64, u32) -> Option<Arc<FunctionLive>> + Send + Sync>;

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
    /// The worker's last profile report, per version and function.
    profiled: Mutex<HashMap<(u64, u32), crate::exec::profile::ProfileSnapshot>>,
    lookup: FunctionLookup,
    lost: AtomicBool,
    gone: tokio::sync::watch::Sender<bool>,
    overran: AtomicBool,
    recycle: Notify,
    /// The client connections handed to this worker.
    pub handed: super::handoff::Handed,
    /// Where connections the worker gives back go (with its slot).
    released: mpsc::UnboundedSender<(usize, Vec<std::net::TcpStream>)>,
    /// Who waits for the worker's answer to a flush.
    flush_waiters: Mutex<HashMap<u64, oneshot::Sender<()>>>,
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
        lookup: FunctionLookup,
        handed: super::handoff::Handed,
        released: mpsc::UnboundedSender<(usize, Vec<std::net::TcpStream>)>,
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
            profiled: Mutex::new(HashMap::new()),
            lookup,
            lost: AtomicBool::new(false),
            gone: tokio::sync::watch::channel(false).0,
            overran: AtomicBool::new(false),
            recycle: Notify::new(),
            handed,
            released,
            flush_waiters: Mutex::new(HashMap::new()),
        }
    }

    /// Invocations running on this worker: those sent to it, and the
    /// requests it is serving on connections handed to it.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed) + self.handed.in_flight()
    }

    /// Tells the worker its handed connections serve app version
    /// `generation` from their next request on.
    pub fn serve_version(&self, generation: u64) {
        let _ = self.to_worker.send(ToWorker::ServeVersion { generation });
    }

    /// Asks the worker to give its connections back once their requests
    /// in progress are answered.
    pub fn release_connections(&self) {
        let _ = self.to_worker.send(ToWorker::ReleaseConnections);
    }

    /// Resolves once the worker has sent everything it counted before
    /// now (or after 200 ms, or at once if it is lost).
    pub async fn flush(&self) {
        static NEXT_TOKEN: AtomicU64 = AtomicU64::new(0);
        let token = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = oneshot::channel();
        {
            let mut waiters = self.flush_waiters.lock().expect("flush waiters");
            if self.is_lost() {
                return;
            }
            waiters.insert(token, sender);
        }
        if self.to_worker.send(ToWorker::Flush { token }).is_err() {
            self.flush_waiters
                .lock()
                .expect("flush waiters")
                .remove(&token);
            return;
        }
        let _ = tokio::time::timeout(FLUSH_WAIT, receiver).await;
        self.flush_waiters
            .lock()
            .expect("flush waiters")
            .remove(&token);
    }

    /// Counts the calls a lost worker left unanswered on its handed
    /// connections: each function (index into app version `generation`,
    /// if the worker had routed it), failure class and time it had run.
    pub(super) fn count_lost_connections(
        &self,
        generation: u64,
        lost: &[(Option<u32>, FailureKind, Duration)],
    ) {
        let mut names = Vec::new();
        for (function, kind, elapsed) in lost {
            let function = function.and_then(|index| (self.lookup)(generation, index));
            match function {
                Some(function) => {
                    names.push(function.name.clone());
                    self.record(kind.as_str(), *elapsed, &function);
                }
                None => names.push("(not yet routed)".into()),
            }
        }
        tracing::warn!(
            "worker {} (pid {}) lost calls of {}",
            self.slot,
            self.pid,
            tally(names)
        );
    }

    /// A handed request overran: have the slot kill and replace the worker
    /// (its connections are answered from the table then).
    pub(super) fn overrun_connections(&self) {
        self.overran.store(true, Ordering::Relaxed);
        self.recycle.notify_one();
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

    /// Adds what is new in a worker's cumulative profile report to each
    /// function's totals.
    fn take_profiles(&self, reports: Vec<ipc::FunctionProfile>) {
        let mut seen = self.profiled.lock().expect("profiled");
        if self.is_lost() {
            return;
        }
        for report in reports {
            let key = (report.generation, report.function);
            let before = seen.insert(key, report.profile).unwrap_or_default();
            let now = report.profile;
            let Some(function) = (self.lookup)(report.generation, report.function) else {
                continue;
            };
            let threads = function.move_threads(before.sync_threads, now.sync_threads);
            if function.lane == Lane::Sync {
                self.metrics.set_sync_threads(&function.name, threads);
            }
            let new = crate::exec::profile::ProfileSnapshot {
                calls: now.calls.saturating_sub(before.calls),
                cpu_ns: now.cpu_ns.saturating_sub(before.cpu_ns),
                queued_ns: now.queued_ns.saturating_sub(before.queued_ns),
                descheduled_ns: now.descheduled_ns.saturating_sub(before.descheduled_ns),
                sync_threads: 0,
                thread_changes: now.thread_changes.saturating_sub(before.thread_changes),
            };
            function.add(new);
            if new.calls > 0 {
                self.metrics.record_profile(
                    &function.name,
                    function.lane,
                    Duration::from_nanos(new.cpu_ns),
                    Duration::from_nanos(new.queued_ns),
                );
            }
        }
    }

    /// Takes this worker's sync-lane threads out of its functions' counts,
    /// once: a lost worker runs none, whoever still holds its link.
    fn forget_threads(&self) {
        let seen = std::mem::take(&mut *self.profiled.lock().expect("profiled"));
        for ((generation, function), last) in seen {
            if let Some(function) = (self.lookup)(generation, function) {
                let threads = function.move_threads(last.sync_threads, 0);
                if function.lane == Lane::Sync {
                    self.metrics.set_sync_threads(&function.name, threads);
                }
            }
        }
    }

    /// Asks the worker's slot to kill and replace it.
    pub fn recycle(&self) {
        self.recycle.notify_one();
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
        {
            // Checked under the lock `lose` clears: a lost worker's waiter
            // is dropped at once, so the caller hears it will not load.
            let mut waiters = self.load_waiters.lock().expect("load waiters");
            // Lost, or asked already (a redeploy and a worker's catch-up
            // can both ask): the receiver closes, and the one asking first
            // hears the answer. A second Load would make a second Loaded
            // that nobody waits for, and so a Release of a version in use.
            if self.is_lost() || waiters.contains_key(&generation) || self.has_loaded(generation) {
                return receiver;
            }
            waiters.insert(generation, sender);
        }
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
        self.load_waiters
            .lock()
            .expect("load waiters")
            .remove(&generation);
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
                profiles,
            } => {
                self.take_profiles(profiles);
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
                let waiter = self
                    .load_waiters
                    .lock()
                    .expect("load waiters")
                    .remove(&generation);
                match waiter {
                    Some(waiter) => {
                        if failure.is_none() {
                            self.loaded.lock().expect("loaded").insert(generation);
                        }
                        let _ = waiter.send(failure.map_or(Ok(()), Err));
                    }
                    // Nobody waits any more (the redeploy gave up on it):
                    // the worker must not keep it.
                    None if failure.is_none() && !self.has_loaded(generation) => {
                        let _ = self.to_worker.send(ToWorker::Release { generation });
                    }
                    None => {}
                }
            }
            ToSupervisor::Served {
                completions,
                closed,
                released,
            } => {
                self.record_completions(completions);
                self.handed.closed(&closed);
                if !released.is_empty() {
                    let streams = self.handed.released(&released);
                    let _ = self.released.send((self.slot, streams));
                }
            }
            ToSupervisor::Flushed { token } => {
                let waiter = self
                    .flush_waiters
                    .lock()
                    .expect("flush waiters")
                    .remove(&token);
                if let Some(waiter) = waiter {
                    let _ = waiter.send(());
                }
            }
            ToSupervisor::Ready(_) | ToSupervisor::StartFailed { .. } => {
                return Err("a start-up message from a running worker".to_string());
            }
        }
        Ok(())
    }

    /// Counts an invocation of `function` as running on this worker.
    fn begin(&self, function: &FunctionLive) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.metrics.in_flight.inc();
        function.started();
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
        self.begin(&function);
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
        self.begin(&function);
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
        function.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.record(outcome, started.elapsed(), function);
    }

    /// Counts the calls a worker finished on its handed connections, a
    /// group of one function and outcome at a time.
    fn record_completions(&self, completions: Vec<ipc::Completion>) {
        let mut groups: HashMap<(u64, u32, ipc::Outcome), Vec<Duration>> = HashMap::new();
        for completion in completions {
            groups
                .entry((
                    completion.generation,
                    completion.function,
                    completion.outcome,
                ))
                .or_default()
                .push(Duration::from_nanos(completion.wall_ns));
        }
        for ((generation, function, outcome), durations) in groups {
            let Some(function) = (self.lookup)(generation, function) else {
                continue;
            };
            let calls = durations.len() as u64;
            let failed = !matches!(outcome, ipc::Outcome::Ok | ipc::Outcome::Cancelled);
            let wall: Duration = durations.iter().sum();
            self.counters.completed.fetch_add(calls, Ordering::Relaxed);
            function.completed.fetch_add(calls, Ordering::Relaxed);
            function.wall_ns.fetch_add(
                u64::try_from(wall.as_nanos()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
            if failed {
                self.counters.failures.fetch_add(calls, Ordering::Relaxed);
                function.failures.fetch_add(calls, Ordering::Relaxed);
            }
            self.metrics
                .record_batch(&function.name, function.lane, outcome.as_str(), &durations);
        }
    }

    /// Counts a finished call of `function` that took `elapsed`.
    fn record(&self, outcome: &str, elapsed: Duration, function: &FunctionLive) {
        let failed = outcome != "ok" && outcome != "cancelled";
        self.counters.completed.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.counters.failures.fetch_add(1, Ordering::Relaxed);
        }
        function.completed.fetch_add(1, Ordering::Relaxed);
        function.wall_ns.fetch_add(
            u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        if failed {
            function.failures.fetch_add(1, Ordering::Relaxed);
        }
        self.metrics
            .record(&function.name, function.lane, outcome, elapsed);
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
        // First, so no statistics report counts threads again after this.
        self.lost.store(true, Ordering::Relaxed);
        self.forget_threads();
        let mut lost_calls = self.lose_queue();
        // Whoever waits for a version to load hears that it will not.
        self.load_waiters.lock().expect("load waiters").clear();
        self.flush_waiters.lock().expect("flush waiters").clear();
        let drained: Vec<(u64, Pending)> = {
            let mut pending = self.pending.lock().expect("pending map");
            self.lost.store(true, Ordering::Relaxed);
            pending.drain().collect()
        };
        lost_calls.extend(drained.iter().map(|(_, entry)| entry.function.name.clone()));
        if !lost_calls.is_empty() {
            tracing::warn!(
                "worker {} (pid {}) lost calls of {}",
                self.slot,
                self.pid,
                tally(lost_calls)
            );
        }
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

    /// Fails the pending queue invocations; returns their functions' names.
    fn lose_queue(&self) -> Vec<Arc<str>> {
        let drained: Vec<(u64, PendingQueue)> = {
            let mut pending = self.queue_pending.lock().expect("queue pending map");
            self.lost.store(true, Ordering::Relaxed);
            pending.drain().collect()
        };
        let names = drained
            .iter()
            .map(|(_, entry)| entry.function.name.clone())
            .collect();
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
        names
    }

    /// The failure of an invocation that could not be sent to this worker.
    fn gone_error(&self) -> InvocationError {
        InvocationError::new(
            FailureKind::WorkerLost,
            format!("worker {} (pid {}) is gone", self.slot, self.pid),
        )
    }

    /// Whether the worker is gone (nothing sent to it will be answered).
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed)
    }
}

/// `hello ×2, jobs ×1`: how many of `names` each function had, by name.
fn tally(mut names: Vec<Arc<str>>) -> String {
    names.sort();
    let mut parts: Vec<String> = Vec::new();
    for group in names.chunk_by(|a, b| a == b) {
        parts.push(format!("function {} ×{}", group[0], group.len()));
    }
    parts.join(", ")
}
