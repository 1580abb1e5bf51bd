//! The supervisor: `fnhost serve` with worker processes.
//!
//! It runs no guest code. It owns the HTTP trigger and the admin endpoint,
//! starts `--workers N` worker processes ([`process`]), feeds them through a
//! [`WorkerPool`] (a [`crate::Dispatch`]), and watches each slot: a worker
//! that exits is replaced (at once the first time, then with a [`Backoff`](breaker::Backoff)),
//! its in-flight invocations fail with `worker-lost`, and more than 3 × N
//! failures within 30 minutes ([`CrashBreaker`]) mark the host unhealthy and
//! stop it with exit code 1. On SIGTERM/SIGINT or `POST /drain` it stops
//! accepting, lets in-flight work finish within `--grace`, then stops the
//! workers and exits 0.

pub mod admin;
pub mod app;
pub mod breaker;
mod handoff;
pub mod pool;
pub mod process;
pub mod redeploy;
pub mod scale;
mod slot;

use crate::app::FunctionSpec;
use crate::config::HostConfig;
use crate::metrics::Metrics;
use crate::queue::{Queue, QueueSpec};
use crate::triggers::http::HttpTrigger;
use crate::triggers::queue::{QueueSettings, QueueTrigger};
use anyhow::Context;
use app::{Current, CurrentDispatch, Generation};
pub use app::{FunctionStatus, describe_functions};
use breaker::CrashBreaker;
use pool::WorkerPool;
use process::WorkerLimits;
use scale::{ScaleInputs, ScalePolicy};
use serde::Serialize;
use slot::Slot;
pub use slot::SlotPhase;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, watch};

/// Most worker processes a host may run.
pub const MAX_WORKERS: usize = 64;
/// Time a worker has to load the component and report ready.
pub const WORKER_START_TIMEOUT: Duration = Duration::from_secs(120);
/// Time workers get to exit after the drain before they are killed.
const WORKER_STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Time to wait for a worker's exit status after its channel closed.
const EXIT_STATUS_WAIT: Duration = Duration::from_millis(500);
/// Replaced app versions whose counts are kept for calls still ending.
const RETIRED_COUNTS: usize = 8;
/// A replaced version's number and its functions' counts.
type RetiredCounts = (u64, Vec<Arc<pool::FunctionLive>>);
/// Exit code of a host stopped by the crash-loop breaker.
pub const EXIT_CRASH_LOOP: u8 = 1;

/// What a supervisor runs.
#[derive(Clone, Debug)]
pub struct SupervisorConfig {
    /// The app's functions; every worker loads all of them.
    pub functions: Vec<FunctionSpec>,
    /// The host-wide settings (listen address, HTTP limits, grace).
    pub host: HostConfig,
    /// Worker processes to keep running: fixed (`min == max`) or scaled
    /// between the two.
    pub workers: WorkerCount,
    /// How long the scale target must stay lower before workers stop.
    pub scale_cooldown: Duration,
    /// The queue that feeds the app's queue function, if any.
    pub queue: Option<QueueBinding>,
    /// OS limits of every worker.
    pub limits: WorkerLimits,
    /// The log filter workers use.
    pub log_filter: String,
    /// How to read the app again for a redeploy (`POST /reload`, SIGHUP);
    /// `None`: the host cannot reload.
    pub reload: Option<redeploy::ReloadSource>,
    /// Whether to redeploy when the manifest or a component file changes.
    pub watch: bool,
    /// Whether client connections are handed to the workers (the
    /// supervisor is then off the request path) rather than each request
    /// forwarded over the worker's channel.
    pub handoff: bool,
}

/// `--workers N` or `--workers MIN..MAX`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerCount {
    /// Fewest workers (started first, never stopped by scaling).
    pub min: usize,
    /// Most workers.
    pub max: usize,
}

impl WorkerCount {
    /// Parses `N` or `MIN..MAX`, each from 1 to [`MAX_WORKERS`].
    pub fn parse(text: &str) -> Result<Self, String> {
        let number = |part: &str| match part.trim().parse::<usize>() {
            Ok(n) if (1..=MAX_WORKERS).contains(&n) => Ok(n),
            _ => Err(format!(
                "`{text}` is not a worker count (N or MIN..MAX, each from 1 to {MAX_WORKERS})"
            )),
        };
        let (min, max) = match text.split_once("..") {
            Some((min, max)) => (number(min)?, number(max)?),
            None => {
                let n = number(text)?;
                (n, n)
            }
        };
        if min > max {
            return Err(format!("`{text}`: MIN is larger than MAX"));
        }
        Ok(Self { min, max })
    }
}

/// `--queue` and its settings.
#[derive(Clone, Debug)]
pub struct QueueBinding {
    /// Which queue.
    pub spec: QueueSpec,
    /// Folder of the embedded queue store.
    pub data_dir: PathBuf,
    /// Fetch, visibility and retry settings.
    pub settings: QueueSettings,
}

/// A row of `GET /workers`.
#[derive(Debug, Serialize)]
pub struct WorkerStatus {
    /// The slot number, 0-based.
    pub slot: usize,
    /// The process in the slot, if any.
    pub pid: Option<u32>,
    /// What the slot is doing.
    pub phase: SlotPhase,
    /// Seconds since the current process started.
    pub uptime_seconds: f64,
    /// Invocations running on it.
    pub in_flight: usize,
    /// Invocations finished in this slot, any outcome, across restarts.
    pub completed: u64,
    /// Of those, the ones that failed (trap, timeout, memory, worker-lost…).
    pub failures: u64,
    /// Processes started in this slot to replace one that exited.
    pub restarts: u64,
    /// Guest instances alive in the worker (warm or running).
    pub instances: u64,
}

/// Something the start-up phase waits for.
enum StartupEvent {
    Ready(usize),
    StartFailed(String),
}

/// The supervisor of one host's worker processes.
pub struct Supervisor {
    config: SupervisorConfig,
    /// The first worker, started before anything else so that its `exec`
    /// and load overlap the supervisor's own start-up (docs/performance.md,
    /// "Start-up"); the first slot takes it.
    prespawned: Mutex<Option<process::WorkerProcess>>,
    pool: Arc<WorkerPool>,
    slots: Mutex<Vec<Arc<Slot>>>,
    next_slot: AtomicUsize,
    slot_tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    queue: Option<Queue>,
    queue_trigger: Mutex<Option<Arc<QueueTrigger>>>,
    breaker: Mutex<CrashBreaker>,
    metrics: Arc<Metrics>,
    /// The app version new invocations go to.
    current: Arc<Current>,
    /// Routes every invocation to the current version.
    dispatch: Arc<CurrentDispatch>,
    /// One redeploy at a time.
    reloading: tokio::sync::Mutex<()>,
    /// The number the next redeploy's version gets.
    next_generation: std::sync::atomic::AtomicU64,
    /// Every version made current, to know when one is no longer used.
    versions: Arc<Mutex<std::collections::HashMap<u64, std::sync::Weak<Generation>>>>,
    /// The counts of the last [`RETIRED_COUNTS`] versions replaced, by
    /// number: calls on handed connections hold no version, and one in
    /// flight across a redeploy is counted when it ends.
    retired: Arc<Mutex<std::collections::VecDeque<RetiredCounts>>>,
    serving: AtomicBool,
    stopping: AtomicBool,
    stop: watch::Sender<bool>,
    draining: AtomicBool,
    drain: Notify,
    unhealthy: watch::Sender<Option<String>>,
    first_ready: watch::Sender<bool>,
    startup: mpsc::UnboundedSender<StartupEvent>,
    /// Connections workers gave back, with the slot that gave them.
    released: mpsc::UnboundedSender<(usize, Vec<std::net::TcpStream>)>,
}

impl Supervisor {
    /// Starts `config.workers` workers, then binds `listen` (and the admin
    /// endpoint on `admin`, if given) and serves until `shutdown` resolves,
    /// `POST /drain` arrives, or the crash-loop breaker trips. The ports
    /// open only once the first workers have loaded the component, so a
    /// component that cannot be served never has a port accepting
    /// connections. Errors are start-up failures (exit 2); a tripped
    /// breaker returns [`EXIT_CRASH_LOOP`].
    pub async fn run(
        config: SupervisorConfig,
        listen: SocketAddr,
        admin: Option<SocketAddr>,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<ExitCode> {
        // A failure here is the first slot's to report, when it tries again.
        let prespawned = process::spawn().ok();
        let workers = config.workers;
        let pool = Arc::new(WorkerPool::new());
        let current = Arc::new(Current::new(Arc::new(Generation::new(
            1,
            config.functions.clone(),
            &pool,
        )?)));
        let first_version = Arc::downgrade(&current.get());
        let queue = match &config.queue {
            Some(binding) => Some(
                Queue::open(&binding.spec, &binding.data_dir)
                    .await
                    .map_err(|e| anyhow::anyhow!("--queue {}: {e}", binding.spec.name()))?,
            ),
            None => None,
        };
        let (startup_sender, mut startup) = mpsc::unbounded_channel();
        let (released, mut given_back) = mpsc::unbounded_channel();
        let supervisor = Arc::new(Supervisor {
            prespawned: Mutex::new(prespawned),
            pool,
            slots: Mutex::new(Vec::new()),
            next_slot: AtomicUsize::new(0),
            slot_tasks: Mutex::new(Vec::new()),
            queue,
            queue_trigger: Mutex::new(None),
            breaker: Mutex::new(CrashBreaker::new(workers.max)),
            metrics: Arc::new(Metrics::default()),
            dispatch: Arc::new(current.dispatch()),
            current,
            reloading: tokio::sync::Mutex::new(()),
            next_generation: std::sync::atomic::AtomicU64::new(2),
            versions: Arc::new(Mutex::new([(1, first_version)].into())),
            retired: Arc::default(),
            serving: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            stop: watch::channel(false).0,
            draining: AtomicBool::new(false),
            drain: Notify::new(),
            unhealthy: watch::channel(None).0,
            first_ready: watch::channel(false).0,
            startup: startup_sender,
            released,
            config,
        });
        {
            let supervisor = supervisor.clone();
            tokio::spawn(async move {
                while let Some((_slot, streams)) = given_back.recv().await {
                    supervisor.rehome(streams);
                }
            });
        }
        for _ in 0..workers.min {
            supervisor.add_slot();
        }

        // Start-up: the first MIN workers ready, or a load error, or the breaker.
        let mut unhealthy = supervisor.unhealthy.subscribe();
        let mut ready = std::collections::HashSet::new();
        while ready.len() < workers.min {
            tokio::select! {
                event = startup.recv() => match event {
                    Some(StartupEvent::Ready(slot)) => {
                        ready.insert(slot);
                    }
                    Some(StartupEvent::StartFailed(message)) => {
                        supervisor.stop_workers().await;
                        anyhow::bail!("{message}");
                    }
                    None => unreachable!("the supervisor holds a sender"),
                },
                _ = unhealthy.changed() => {
                    supervisor.stop_workers().await;
                    return Ok(ExitCode::from(EXIT_CRASH_LOOP));
                }
            }
        }
        let (listener, admin) = match bind(listen, admin).await {
            Ok(bound) => bound,
            Err(error) => {
                supervisor.stop_workers().await;
                return Err(error);
            }
        };
        supervisor.serving.store(true, Ordering::Relaxed);
        tracing::info!(
            "serving {} on http://{} with {}",
            describe_functions(&supervisor.config.functions),
            listener.local_addr()?,
            if workers.min == workers.max {
                format!(
                    "{} worker process{}",
                    workers.min,
                    if workers.min == 1 { "" } else { "es" }
                )
            } else {
                format!("{} to {} worker processes", workers.min, workers.max)
            },
        );
        if let Some(admin) = admin {
            tracing::info!("admin endpoint at http://{}", admin.local_addr()?);
            tokio::spawn(admin::serve(supervisor.clone(), admin));
        }

        // One stop signal for every trigger: SIGTERM/SIGINT, POST /drain,
        // or the crash-loop breaker.
        let (stop_sender, stop_receiver) = watch::channel(false);
        let stop_triggers = {
            let supervisor = supervisor.clone();
            let mut unhealthy = supervisor.unhealthy.subscribe();
            async move {
                let drain_requested = supervisor.drain.notified();
                tokio::select! {
                    () = shutdown => {}
                    () = drain_requested => tracing::info!("drain requested on the admin endpoint"),
                    _ = unhealthy.wait_for(|reason| reason.is_some()) => {}
                }
                supervisor.draining.store(true, Ordering::Relaxed);
                let _ = stop_sender.send(true);
            }
        };
        let stopped = |mut receiver: watch::Receiver<bool>| async move {
            let _ = receiver.wait_for(|stopped| *stopped).await;
        };
        let queue_task = supervisor.queue.clone().map(|queue| {
            let binding = supervisor
                .config
                .queue
                .clone()
                .expect("a queue has a binding");
            let pool = supervisor.pool.clone();
            let trigger = Arc::new(QueueTrigger::new(
                queue,
                supervisor.dispatch.clone(),
                binding.settings,
                Arc::new(move || pool.links().len()),
            ));
            *supervisor.queue_trigger.lock().expect("queue trigger") = Some(trigger.clone());
            tracing::info!("queue trigger on {}", binding.spec.name());
            let grace = supervisor.config.host.grace;
            let stop = stopped(stop_receiver.clone());
            tokio::spawn(async move { trigger.run(stop, grace).await })
        });
        tokio::spawn(supervisor.clone().control(stopped(stop_receiver.clone())));
        if supervisor.config.reload.is_some() {
            tokio::spawn(supervisor.clone().reload_on_hangup());
            if supervisor.config.watch {
                tokio::spawn(supervisor.clone().watch_files());
            }
        }
        let grace = supervisor.config.host.grace;
        let http_served = async {
            if supervisor.config.handoff {
                tokio::spawn(supervisor.clone().watch_handed());
                supervisor
                    .serve_handoff(listener, stopped(stop_receiver), grace)
                    .await
            } else {
                HttpTrigger::new(
                    supervisor.dispatch.clone(),
                    supervisor.config.host.http.clone(),
                )
                .serve(listener, stopped(stop_receiver), grace)
                .await
            }
        };
        let (http_drained, ()) = tokio::join!(http_served, stop_triggers);
        let queue_drained = match queue_task {
            Some(task) => task.await.unwrap_or(false),
            None => true,
        };
        let crashed = supervisor.unhealthy.borrow().is_some();
        supervisor.stop_workers().await;
        if crashed {
            return Ok(ExitCode::from(EXIT_CRASH_LOOP));
        }
        if http_drained && queue_drained {
            tracing::info!("drained; exiting");
        } else {
            tracing::warn!("grace period over with work still in flight; exiting");
        }
        Ok(ExitCode::SUCCESS)
    }

    /// Starts a new slot and the task that keeps it filled.
    fn add_slot(self: &Arc<Self>) {
        let slot = Arc::new(Slot::new(self.next_slot.fetch_add(1, Ordering::Relaxed)));
        self.slots.lock().expect("slots").push(slot.clone());
        let task = tokio::spawn(self.clone().watch_slot(slot));
        let mut tasks = self.slot_tasks.lock().expect("slot tasks");
        tasks.retain(|task| !task.is_finished());
        tasks.push(task);
    }

    /// Slots not retiring or stopped.
    fn active_slots(&self) -> Vec<Arc<Slot>> {
        self.slots
            .lock()
            .expect("slots")
            .iter()
            .filter(|slot| !slot.retiring.load(Ordering::Relaxed))
            .cloned()
            .collect()
    }

    /// Grows or shrinks to `target` workers.
    fn scale_to(self: &Arc<Self>, target: usize) {
        let active = self.active_slots();
        if target > active.len() {
            for _ in active.len()..target {
                self.add_slot();
            }
        } else {
            // Retire the newest first.
            for slot in active.iter().rev().take(active.len() - target) {
                slot.retiring.store(true, Ordering::Relaxed);
                slot.retire.notify_one();
            }
        }
    }

    /// The scale controller and the queue gauges: every second, read the
    /// signals, export them, and (with `--workers MIN..MAX`) resize.
    async fn control(self: Arc<Self>, stop: impl Future<Output = ()>) {
        let workers = self.config.workers;
        let settings = self.config.queue.as_ref().map(|b| b.settings.clone());
        let policy = ScalePolicy {
            min: workers.min,
            max: workers.max,
            cooldown: self.config.scale_cooldown,
            batch_size: settings.as_ref().map_or(0, |s| s.batch_size),
            new_batch_threshold: settings.as_ref().map_or(0, |s| s.new_batch_threshold),
        };
        let mut lower_since: Option<Instant> = None;
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => return,
                _ = ticker.tick() => {}
            }
            let stats = match &self.queue {
                Some(queue) => match queue.stats().await {
                    Ok(stats) => {
                        self.metrics.set_queue(queue.name(), &stats);
                        Some(stats)
                    }
                    Err(error) => {
                        tracing::warn!("queue {}: cannot read its stats: {error}", queue.name());
                        None
                    }
                },
                None => None,
            };
            let queue_in_flight = self
                .queue_trigger
                .lock()
                .expect("queue trigger")
                .as_ref()
                .map_or(0, |trigger| trigger.in_flight());
            let current = self.active_slots().len();
            let inputs = ScaleInputs {
                workers: current,
                queue_length: stats.as_ref().map_or(0, |s| s.length),
                oldest_age: stats.as_ref().and_then(|s| s.oldest_age),
                http_in_flight: self.pool.in_flight().saturating_sub(queue_in_flight),
            };
            let (target, reason) = policy.target(&inputs);
            self.metrics.scale_target.set(target as i64);
            if workers.min == workers.max || self.stopping.load(Ordering::Relaxed) {
                continue;
            }
            if target > current {
                lower_since = None;
                tracing::info!("scale: {current} → {target} workers ({reason}; {inputs})");
                self.scale_to(target);
            } else if target < current {
                let since = *lower_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= policy.cooldown {
                    tracing::info!(
                        "scale: {current} → {target} workers ({reason}, lower for {} s; {inputs})",
                        since.elapsed().as_secs()
                    );
                    self.scale_to(target);
                    lower_since = None;
                }
            } else {
                lower_since = None;
            }
        }
    }

    /// Asks every worker to stop and waits for the slots to finish, up to
    /// [`WORKER_STOP_TIMEOUT`]; then kills what is left.
    async fn stop_workers(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        self.stop.send_replace(true);
        for link in self.pool.links() {
            link.shutdown();
        }
        let tasks = std::mem::take(&mut *self.slot_tasks.lock().expect("slot tasks"));
        let aborts: Vec<_> = tasks.iter().map(|task| task.abort_handle()).collect();
        let all = futures_util::future::join_all(tasks);
        if tokio::time::timeout(WORKER_STOP_TIMEOUT, all)
            .await
            .is_err()
        {
            tracing::warn!("workers did not stop within {WORKER_STOP_TIMEOUT:?}; killing them");
            // Aborting a slot task drops its child handle, which kills the
            // process (kill_on_drop).
            for abort in aborts {
                abort.abort();
            }
        }
    }

    /// Resolves once the host is stopping (never missed: a watch, not a
    /// notification).
    async fn stopped(&self) {
        let mut stop = self.stop.subscribe();
        let _ = stop.wait_for(|stopping| *stopping).await;
    }

    /// The queue the trigger is bound to, if any.
    pub fn queue(&self) -> Option<&Queue> {
        self.queue.as_ref()
    }

    /// Starts the drain (as `POST /drain` does).
    pub fn request_drain(&self) {
        // Not ready from this moment, not once the trigger task has woken:
        // a `GET /ready` right after the 202 must see it.
        self.draining.store(true, Ordering::Relaxed);
        self.drain.notify_one();
    }

    /// Whether the crash-loop breaker has tripped.
    pub fn unhealthy_reason(&self) -> Option<String> {
        self.unhealthy.borrow().clone()
    }

    /// Whether the host takes new work: serving, not draining, a worker ready.
    pub fn is_ready(&self) -> bool {
        self.serving.load(Ordering::Relaxed)
            && !self.draining.load(Ordering::Relaxed)
            && !self.pool.links().is_empty()
    }

    /// Waits until every worker has reported what it counted so far on
    /// its handed connections.
    pub async fn flush_reports(&self) {
        if self.config.handoff {
            futures_util::future::join_all(self.pool.links().iter().map(|link| link.flush())).await;
        }
    }

    /// The host's metrics, with the gauges read from the workers now.
    pub fn metrics_text(&self) -> String {
        let links = self.pool.links();
        let instances: u64 = links.iter().map(|l| l.instances()).sum();
        self.metrics.instances.set(instances as i64);
        if self.config.handoff {
            self.metrics.in_flight.set(self.pool.in_flight() as i64);
        }
        self.metrics.encode()
    }

    /// Finds a function of any version still alive, or recently replaced,
    /// for workers' reports.
    fn function_lookup(&self) -> pool::FunctionLookup {
        let (versions, retired) = (self.versions.clone(), self.retired.clone());
        Arc::new(move |generation, index| {
            let alive = versions
                .lock()
                .expect("versions")
                .get(&generation)
                .and_then(std::sync::Weak::upgrade);
            match alive {
                Some(version) => version.live.get(index as usize).cloned(),
                None => retired
                    .lock()
                    .expect("retired versions")
                    .iter()
                    .find(|(id, _)| *id == generation)?
                    .1
                    .get(index as usize)
                    .cloned(),
            }
        })
    }

    /// Keeps the counts of `version`, just replaced, for calls that end later.
    fn keep_counts(&self, version: &Generation) {
        let mut retired = self.retired.lock().expect("retired versions");
        if retired.len() == RETIRED_COUNTS {
            retired.pop_front();
        }
        retired.push_back((version.id, version.live.clone()));
    }

    /// One row per function of the current app version.
    pub fn function_status(&self) -> Vec<FunctionStatus> {
        self.current.get().status()
    }

    /// One row per worker slot.
    pub fn worker_status(&self) -> Vec<WorkerStatus> {
        let slots = self.slots.lock().expect("slots").clone();
        slots
            .iter()
            .map(|slot| {
                let current = *slot.state.lock().expect("slot state");
                let link = self.pool.link(slot.id);
                WorkerStatus {
                    slot: slot.id,
                    pid: current.pid,
                    phase: current.phase,
                    uptime_seconds: if current.pid.is_some() {
                        current.since.elapsed().as_secs_f64()
                    } else {
                        0.0
                    },
                    in_flight: link.as_ref().map_or(0, |l| l.in_flight()),
                    completed: slot.counters.completed.load(Ordering::Relaxed),
                    failures: slot.counters.failures.load(Ordering::Relaxed),
                    restarts: slot.counters.restarts.load(Ordering::Relaxed),
                    instances: link.as_ref().map_or(0, |l| l.instances()),
                }
            })
            .collect()
    }
}

/// Binds the HTTP listener and the admin endpoint, if any.
async fn bind(
    listen: SocketAddr,
    admin: Option<SocketAddr>,
) -> anyhow::Result<(TcpListener, Option<TcpListener>)> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("--listen {listen}: cannot bind"))?;
    let admin = match admin {
        Some(address) => Some(
            TcpListener::bind(address)
                .await
                .with_context(|| format!("--admin {address}: cannot bind"))?,
        ),
        None => None,
    };
    Ok((listener, admin))
}
