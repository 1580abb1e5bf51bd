//! The supervisor: `fnhost serve` with worker processes.
//!
//! It runs no guest code. It owns the HTTP trigger and the admin endpoint,
//! starts `--workers N` worker processes ([`process`]), feeds them through a
//! [`WorkerPool`] (a [`crate::Dispatch`]), and watches each slot: a worker
//! that exits is replaced (at once the first time, then with a [`Backoff`]),
//! its in-flight invocations fail with `worker-lost`, and more than 3 × N
//! failures within 30 minutes ([`CrashBreaker`]) mark the host unhealthy and
//! stop it with exit code 1. On SIGTERM/SIGINT or `POST /drain` it stops
//! accepting, lets in-flight work finish within `--grace`, then stops the
//! workers and exits 0.

pub mod admin;
pub mod breaker;
pub mod pool;
pub mod process;

use crate::config::HostConfig;
use crate::ipc::{self, ToSupervisor, ToWorker, WorkerInit};
use crate::metrics::Metrics;
use crate::triggers::http::HttpTrigger;
use breaker::{Backoff, CrashBreaker};
use pool::{SlotCounters, WorkerLink, WorkerPool};
use process::WorkerLimits;
use serde::Serialize;
use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
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
/// Exit code of a host stopped by the crash-loop breaker.
pub const EXIT_CRASH_LOOP: u8 = 1;

/// What a supervisor runs.
#[derive(Clone, Debug)]
pub struct SupervisorConfig {
    /// The component every worker loads.
    pub component: PathBuf,
    /// The host settings, passed to every worker.
    pub host: HostConfig,
    /// Worker processes to keep running.
    pub workers: usize,
    /// OS limits of every worker.
    pub limits: WorkerLimits,
    /// The log filter workers use.
    pub log_filter: String,
}

/// The phase a worker slot is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SlotPhase {
    /// A process is loading the component.
    Starting,
    /// The worker takes invocations.
    Ready,
    /// Waiting out the backoff before the next start.
    Backoff,
    /// Stopped (drain or crash loop).
    Stopped,
}

/// One worker slot: the process filling it comes and goes.
struct Slot {
    counters: Arc<SlotCounters>,
    state: Mutex<SlotState>,
}

#[derive(Clone, Copy)]
struct SlotState {
    phase: SlotPhase,
    pid: Option<u32>,
    since: Instant,
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

/// How one worker process ended.
enum WorkerEnd {
    /// It was asked to stop (drain).
    Stopped,
    /// It could not load the component (one line).
    StartFailed(String),
    /// The supervisor killed it for overrunning a deadline.
    Recycled,
    /// It exited or broke the protocol on its own.
    Failed { uptime: Duration, reason: String },
}

/// Something the start-up phase waits for.
enum StartupEvent {
    Ready,
    StartFailed(String),
}

/// The supervisor of one host's worker processes.
pub struct Supervisor {
    config: SupervisorConfig,
    pool: Arc<WorkerPool>,
    slots: Vec<Slot>,
    breaker: Mutex<CrashBreaker>,
    metrics: Arc<Metrics>,
    function: Arc<str>,
    serving: AtomicBool,
    stopping: AtomicBool,
    stop: Notify,
    draining: AtomicBool,
    drain: Notify,
    unhealthy: watch::Sender<Option<String>>,
    first_ready: watch::Sender<bool>,
    startup: mpsc::UnboundedSender<StartupEvent>,
}

impl Supervisor {
    /// Starts `config.workers` workers and serves `listener` (and the admin
    /// endpoint on `admin`, if given) until `shutdown` resolves, `POST
    /// /drain` arrives, or the crash-loop breaker trips. Errors are start-up
    /// failures (exit 2); a tripped breaker returns [`EXIT_CRASH_LOOP`].
    pub async fn run(
        config: SupervisorConfig,
        listener: TcpListener,
        admin: Option<TcpListener>,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<ExitCode> {
        let workers = config.workers.clamp(1, MAX_WORKERS);
        let function: Arc<str> = config
            .component
            .file_stem()
            .map_or_else(|| "function".into(), |s| s.to_string_lossy().into());
        let (startup_sender, mut startup) = mpsc::unbounded_channel();
        let supervisor = Arc::new(Supervisor {
            pool: Arc::new(WorkerPool::new(workers, config.host.invocation.timeout)),
            slots: (0..workers)
                .map(|_| Slot {
                    counters: Arc::default(),
                    state: Mutex::new(SlotState {
                        phase: SlotPhase::Starting,
                        pid: None,
                        since: Instant::now(),
                    }),
                })
                .collect(),
            breaker: Mutex::new(CrashBreaker::new(workers)),
            metrics: Arc::new(Metrics::default()),
            function,
            serving: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            stop: Notify::new(),
            draining: AtomicBool::new(false),
            drain: Notify::new(),
            unhealthy: watch::channel(None).0,
            first_ready: watch::channel(false).0,
            startup: startup_sender,
            config,
        });
        let slot_tasks: Vec<_> = (0..workers)
            .map(|slot| tokio::spawn(supervisor.clone().watch_slot(slot)))
            .collect();

        // Start-up: every slot ready, or a load error, or the breaker.
        let mut unhealthy = supervisor.unhealthy.subscribe();
        let mut ready = 0;
        while ready < workers {
            tokio::select! {
                event = startup.recv() => match event {
                    Some(StartupEvent::Ready) => ready += 1,
                    Some(StartupEvent::StartFailed(message)) => {
                        supervisor.stop_workers(slot_tasks).await;
                        anyhow::bail!("{message}");
                    }
                    None => unreachable!("the supervisor holds a sender"),
                },
                _ = unhealthy.changed() => {
                    supervisor.stop_workers(slot_tasks).await;
                    return Ok(ExitCode::from(EXIT_CRASH_LOOP));
                }
            }
        }
        supervisor.serving.store(true, Ordering::Relaxed);
        tracing::info!(
            "serving {} on http://{} with {workers} worker process{}",
            supervisor.config.component.display(),
            listener.local_addr()?,
            if workers == 1 { "" } else { "es" },
        );
        if let Some(admin) = admin {
            tracing::info!("admin endpoint at http://{}", admin.local_addr()?);
            tokio::spawn(admin::serve(supervisor.clone(), admin));
        }

        let crash_loop = async {
            let _ = unhealthy.wait_for(|reason| reason.is_some()).await;
        };
        let drain_requested = supervisor.drain.notified();
        let stop_serving = async {
            tokio::select! {
                () = shutdown => {}
                () = drain_requested => tracing::info!("drain requested on the admin endpoint"),
                () = crash_loop => {}
            }
            supervisor.draining.store(true, Ordering::Relaxed);
        };
        let trigger =
            HttpTrigger::new(supervisor.pool.clone(), supervisor.config.host.http.clone());
        let drained = trigger
            .serve(listener, stop_serving, supervisor.config.host.grace)
            .await;
        let crashed = supervisor.unhealthy.borrow().is_some();
        supervisor.stop_workers(slot_tasks).await;
        if crashed {
            return Ok(ExitCode::from(EXIT_CRASH_LOOP));
        }
        if drained {
            tracing::info!("drained; exiting");
        } else {
            tracing::warn!("grace period over with requests still in flight; exiting");
        }
        Ok(ExitCode::SUCCESS)
    }

    /// Asks every worker to stop and waits for the slots to finish, up to
    /// [`WORKER_STOP_TIMEOUT`]; what is left is killed as the tasks drop.
    async fn stop_workers(&self, slot_tasks: Vec<tokio::task::JoinHandle<()>>) {
        self.stopping.store(true, Ordering::Relaxed);
        self.stop.notify_waiters();
        for link in self.pool.links().into_iter().flatten() {
            link.shutdown();
        }
        let all = futures_util::future::join_all(slot_tasks);
        if tokio::time::timeout(WORKER_STOP_TIMEOUT, all)
            .await
            .is_err()
        {
            tracing::warn!("workers did not stop within {WORKER_STOP_TIMEOUT:?}; killing them");
        }
    }

    /// Starts the drain (as `POST /drain` does).
    pub fn request_drain(&self) {
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
            && self.pool.links().iter().any(Option::is_some)
    }

    /// The host's metrics, with the gauges read from the workers now.
    pub fn metrics_text(&self) -> String {
        let links = self.pool.links();
        let instances: u64 = links.iter().flatten().map(|l| l.instances()).sum();
        self.metrics.instances.set(instances as i64);
        self.metrics.encode()
    }

    /// One row per worker slot.
    pub fn worker_status(&self) -> Vec<WorkerStatus> {
        let links = self.pool.links();
        self.slots
            .iter()
            .enumerate()
            .map(|(slot, state)| {
                let current = *state.state.lock().expect("slot state");
                let link = links.get(slot).and_then(Option::as_ref);
                WorkerStatus {
                    slot,
                    pid: current.pid,
                    phase: current.phase,
                    uptime_seconds: if current.pid.is_some() {
                        current.since.elapsed().as_secs_f64()
                    } else {
                        0.0
                    },
                    in_flight: link.map_or(0, |l| l.in_flight()),
                    completed: state.counters.completed.load(Ordering::Relaxed),
                    failures: state.counters.failures.load(Ordering::Relaxed),
                    restarts: state.counters.restarts.load(Ordering::Relaxed),
                    instances: link.map_or(0, |l| l.instances()),
                }
            })
            .collect()
    }

    fn set_phase(&self, slot: usize, phase: SlotPhase, pid: Option<u32>) {
        let mut state = self.slots[slot].state.lock().expect("slot state");
        if state.pid != pid || phase == SlotPhase::Starting {
            state.since = Instant::now();
        }
        state.phase = phase;
        state.pid = pid;
    }

    /// Keeps slot `slot` filled until the host stops or the breaker trips.
    async fn watch_slot(self: Arc<Self>, slot: usize) {
        if slot > 0 {
            // Let the first worker compile (and fill the compile cache)
            // before the others load.
            let mut first_ready = self.first_ready.subscribe();
            tokio::select! {
                _ = first_ready.wait_for(|ready| *ready) => {}
                () = self.stop.notified() => {}
            }
        }
        let mut backoff = Backoff::default();
        while !self.stopping.load(Ordering::Relaxed) {
            let end = self.run_worker(slot).await;
            let delay = match end {
                WorkerEnd::Stopped => break,
                WorkerEnd::StartFailed(message) if !self.serving.load(Ordering::Relaxed) => {
                    let _ = self.startup.send(StartupEvent::StartFailed(message));
                    break;
                }
                WorkerEnd::StartFailed(message) => {
                    self.failed(slot, &mut backoff, Duration::ZERO, &message)
                }
                WorkerEnd::Recycled => Some(Duration::ZERO),
                WorkerEnd::Failed { uptime, reason } => {
                    self.failed(slot, &mut backoff, uptime, &reason)
                }
            };
            let Some(delay) = delay else { break };
            if self.stopping.load(Ordering::Relaxed) {
                break;
            }
            if !delay.is_zero() {
                self.set_phase(slot, SlotPhase::Backoff, None);
                tracing::info!("worker {slot}: restarting in {} ms", delay.as_millis());
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = self.stop.notified() => break,
                }
            }
            self.slots[slot]
                .counters
                .restarts
                .fetch_add(1, Ordering::Relaxed);
            self.metrics.worker_restarts.inc();
        }
        self.set_phase(slot, SlotPhase::Stopped, None);
    }

    /// Records a worker failure; returns the delay before the next start,
    /// or `None` when the breaker tripped.
    fn failed(
        &self,
        slot: usize,
        backoff: &mut Backoff,
        uptime: Duration,
        reason: &str,
    ) -> Option<Duration> {
        let (count, tripped) = self.breaker.lock().expect("breaker").record(Instant::now());
        let limit = self.breaker.lock().expect("breaker").limit();
        tracing::warn!(
            "worker {slot} failed: {reason} ({count} failures in 30 min, limit {limit})"
        );
        if tripped {
            let message = format!(
                "crash loop: {count} worker failures within 30 minutes (limit 3 × {} workers); the host is unhealthy and stops",
                self.slots.len()
            );
            tracing::error!("{message}");
            self.unhealthy.send_replace(Some(message));
            return None;
        }
        Some(backoff.after_failure(uptime))
    }

    /// Starts one worker process in `slot` and runs it until it ends.
    async fn run_worker(&self, slot: usize) -> WorkerEnd {
        let started = Instant::now();
        self.set_phase(slot, SlotPhase::Starting, None);
        let worker = match process::spawn(self.config.limits) {
            Ok(worker) => worker,
            Err(error) => {
                return WorkerEnd::Failed {
                    uptime: Duration::ZERO,
                    reason: format!("cannot start a worker process: {error}"),
                };
            }
        };
        let process::WorkerProcess {
            mut child,
            pid,
            channel,
        } = worker;
        self.set_phase(slot, SlotPhase::Starting, Some(pid));
        tracing::debug!("worker {slot} started (pid {pid})");
        let (read_half, write_half) = channel.into_split();
        let (to_worker, _writer) = ipc::spawn_writer::<_, ToWorker>(write_half);
        let mut reader = ipc::reader::<_, ToSupervisor>(read_half);
        let workers = self.slots.len();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let _ = to_worker.send(ToWorker::Init(Box::new(WorkerInit {
            protocol: ipc::PROTOCOL_VERSION,
            slot,
            component: self.config.component.clone(),
            config: self.config.host.clone(),
            runtime_threads: (cores / workers).max(1),
            log_filter: self.config.log_filter.clone(),
        })));

        let first = tokio::select! {
            first = tokio::time::timeout(WORKER_START_TIMEOUT, ipc::next_message(&mut reader)) => first,
            () = self.stop.notified() => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                return WorkerEnd::Stopped;
            }
        };
        let lane = match first {
            Ok(Ok(Some(ToSupervisor::Ready(ready)))) if ready.protocol == ipc::PROTOCOL_VERSION => {
                ready.lane
            }
            Ok(Ok(Some(ToSupervisor::StartFailed { message }))) => {
                let _ = child.wait().await;
                return WorkerEnd::StartFailed(message);
            }
            other => {
                let reason = match other {
                    Ok(Ok(None)) => "exited before it was ready".to_string(),
                    Ok(Ok(Some(message))) => format!("sent {message:?} before it was ready"),
                    Ok(Err(error)) => format!("protocol error: {error}"),
                    Err(_) => format!("not ready within {} s", WORKER_START_TIMEOUT.as_secs()),
                };
                let status = exit_status(&mut child).await;
                return WorkerEnd::Failed {
                    uptime: started.elapsed(),
                    reason: format!("{reason} ({status})"),
                };
            }
        };

        let link = Arc::new(WorkerLink::new(
            slot,
            pid,
            started,
            lane,
            to_worker,
            self.slots[slot].counters.clone(),
            self.metrics.clone(),
            self.function.clone(),
        ));
        self.pool.install(link.clone());
        self.metrics.workers.inc();
        self.set_phase(slot, SlotPhase::Ready, Some(pid));
        tracing::info!(
            "worker {slot} (pid {pid}) ready in {} ms",
            started.elapsed().as_millis()
        );
        self.first_ready.send_replace(true);
        let _ = self.startup.send(StartupEvent::Ready);

        let reason = tokio::select! {
            status = child.wait() => match status {
                Ok(status) => format!("exited ({status})"),
                Err(error) => format!("cannot be waited for: {error}"),
            },
            reason = link.read_loop(reader) => {
                if reason.starts_with("protocol error") {
                    tracing::error!("worker {slot} (pid {pid}): {reason}; recycling it");
                    let _ = child.start_kill();
                }
                format!("{reason} ({})", exit_status(&mut child).await)
            }
            () = link.recycle_requested() => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                "recycled".to_string()
            }
        };
        self.pool.remove(slot);
        self.metrics.workers.dec();
        link.lose();
        if self.stopping.load(Ordering::Relaxed) {
            let _ = exit_status(&mut child).await;
            return WorkerEnd::Stopped;
        }
        if link.overran() {
            return WorkerEnd::Recycled;
        }
        WorkerEnd::Failed {
            uptime: started.elapsed(),
            reason,
        }
    }
}

/// Waits briefly for a worker's exit status, then kills it; describes how
/// it ended.
async fn exit_status(child: &mut tokio::process::Child) -> String {
    let status = match tokio::time::timeout(EXIT_STATUS_WAIT, child.wait()).await {
        Ok(status) => status,
        Err(_) => {
            let _ = child.start_kill();
            child.wait().await
        }
    };
    match status {
        Ok(status) => status.to_string(),
        Err(error) => format!("cannot be waited for: {error}"),
    }
}
