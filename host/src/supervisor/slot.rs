//! Worker slots: each keeps one worker process running, started with
//! the current app version, replaced when it exits (at once the first
//! time, then with a backoff), retired when scaling down, and counted by
//! the crash-loop breaker.

use super::breaker::Backoff;
use super::pool::{SlotCounters, WorkerLink};
use super::process;
use super::{
    EXIT_STATUS_WAIT, StartupEvent, Supervisor, WORKER_START_TIMEOUT, WORKER_STOP_TIMEOUT,
};
use crate::ipc::{self, ToSupervisor, ToWorker, WorkerInit};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

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
    /// Finishing its in-flight work before it stops (scaling down).
    Retiring,
    /// Stopped (drain or crash loop).
    Stopped,
}

/// One worker slot: the process filling it comes and goes.
pub(super) struct Slot {
    pub(super) id: usize,
    pub(super) counters: Arc<SlotCounters>,
    pub(super) state: Mutex<SlotState>,
    pub(super) retiring: AtomicBool,
    pub(super) retire: Notify,
}

impl Slot {
    pub(super) fn new(id: usize) -> Self {
        Self {
            id,
            counters: Arc::default(),
            state: Mutex::new(SlotState {
                phase: SlotPhase::Starting,
                pid: None,
                since: Instant::now(),
            }),
            retiring: AtomicBool::new(false),
            retire: Notify::new(),
        }
    }
}

#[derive(Clone, Copy)]
pub(super) struct SlotState {
    pub(super) phase: SlotPhase,
    pub(super) pid: Option<u32>,
    pub(super) since: Instant,
}

/// How one worker process ended.
pub(super) enum WorkerEnd {
    /// It was asked to stop (drain).
    Stopped,
    /// It could not load the component (one line).
    StartFailed(String),
    /// The supervisor killed it for overrunning a deadline.
    Recycled,
    /// Scaling down stopped it after its in-flight work finished.
    Retired,
    /// It exited or broke the protocol on its own.
    Failed { uptime: Duration, reason: String },
}

impl Supervisor {
    pub(super) fn set_phase(&self, slot: &Slot, phase: SlotPhase, pid: Option<u32>) {
        let mut state = slot.state.lock().expect("slot state");
        if state.pid != pid || phase == SlotPhase::Starting {
            state.since = Instant::now();
        }
        state.phase = phase;
        state.pid = pid;
    }

    /// Keeps `slot` filled until the host stops, the slot is retired, or
    /// the breaker trips.
    pub(super) async fn watch_slot(self: Arc<Self>, slot: Arc<Slot>) {
        if slot.id > 0 {
            // Let the first worker compile (and fill the compile cache)
            // before the others load.
            let mut first_ready = self.first_ready.subscribe();
            tokio::select! {
                _ = first_ready.wait_for(|ready| *ready) => {}
                () = self.stopped() => {}
            }
        }
        let mut backoff = Backoff::default();
        while !self.stopping.load(Ordering::Relaxed) && !slot.retiring.load(Ordering::Relaxed) {
            let end = self.run_worker(&slot).await;
            let delay = match end {
                WorkerEnd::Stopped | WorkerEnd::Retired => break,
                WorkerEnd::StartFailed(message) if !self.serving.load(Ordering::Relaxed) => {
                    let _ = self.startup.send(StartupEvent::StartFailed(message));
                    break;
                }
                WorkerEnd::StartFailed(message) => {
                    self.failed(slot.id, &mut backoff, Duration::ZERO, &message)
                }
                WorkerEnd::Recycled => Some(Duration::ZERO),
                WorkerEnd::Failed { uptime, reason } => {
                    self.failed(slot.id, &mut backoff, uptime, &reason)
                }
            };
            let Some(delay) = delay else { break };
            if self.stopping.load(Ordering::Relaxed) || slot.retiring.load(Ordering::Relaxed) {
                break;
            }
            if !delay.is_zero() {
                self.set_phase(&slot, SlotPhase::Backoff, None);
                tracing::info!("worker {}: restarting in {} ms", slot.id, delay.as_millis());
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = self.stopped() => break,
                    () = slot.retire.notified() => break,
                }
            }
            slot.counters.restarts.fetch_add(1, Ordering::Relaxed);
            self.metrics.worker_restarts.inc();
        }
        self.set_phase(&slot, SlotPhase::Stopped, None);
        if slot.retiring.load(Ordering::Relaxed) {
            self.slots
                .lock()
                .expect("slots")
                .retain(|other| other.id != slot.id);
        }
    }

    /// Records a worker failure; returns the delay before the next start,
    /// or `None` when the breaker tripped.
    pub(super) fn failed(
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
                self.config.workers.max
            );
            tracing::error!("{message}");
            self.unhealthy.send_replace(Some(message));
            return None;
        }
        Some(backoff.after_failure(uptime))
    }

    /// Starts one worker process in `slot` and runs it until it ends.
    pub(super) async fn run_worker(self: &Arc<Self>, slot_state: &Slot) -> WorkerEnd {
        let slot = slot_state.id;
        let started = Instant::now();
        self.set_phase(slot_state, SlotPhase::Starting, None);
        let prespawned = self.prespawned.lock().expect("prespawned worker").take();
        let worker = match prespawned.map_or_else(process::spawn, Ok) {
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
            connections,
            table,
        } = worker;
        let handed = match super::handoff::Handed::new(table, connections) {
            Ok(handed) => handed,
            Err(error) => {
                let _ = child.start_kill();
                return WorkerEnd::Failed {
                    uptime: Duration::ZERO,
                    reason: format!("cannot set up its connection channel: {error}"),
                };
            }
        };
        self.set_phase(slot_state, SlotPhase::Starting, Some(pid));
        tracing::debug!("worker {slot} started (pid {pid})");
        let (read_half, write_half) = channel.into_split();
        let (to_worker, mut writer_task) = ipc::spawn_writer::<_, ToWorker>(write_half);
        let mut reader = ipc::reader::<_, ToSupervisor>(read_half);
        let workers = self.active_slots().len().max(1);
        let cores = crate::config::cores();
        // The version's number only: holding the version itself would keep
        // it from being released after a redeploy.
        let (generation, functions) = {
            let current = self.current.get();
            (current.id, current.inits())
        };
        let _ = to_worker.send(ToWorker::Init(Box::new(WorkerInit {
            protocol: ipc::PROTOCOL_VERSION,
            slot,
            generation,
            functions,
            runtime_threads: (cores / workers).max(1),
            log_filter: self.config.log_filter.clone(),
            supervisor_pid: std::process::id(),
            memory_limit: self.config.limits.memory,
            worker_processes: self.config.workers.max,
            threads_memory: self.config.limits.threads_memory,
        })));

        let first = tokio::select! {
            first = tokio::time::timeout(WORKER_START_TIMEOUT, ipc::next_message(&mut reader)) => first,
            () = self.stopped() => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                return WorkerEnd::Stopped;
            }
        };
        match first {
            Ok(Ok(Some(ToSupervisor::Ready(ready)))) if ready.protocol == ipc::PROTOCOL_VERSION => {
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
            generation,
            to_worker,
            slot_state.counters.clone(),
            self.metrics.clone(),
            self.function_lookup(),
            handed,
            self.released.clone(),
        ));
        self.pool.install(link.clone());
        // A redeploy finished while this worker was starting: it loads the
        // version that is current now, then drops the one it started with.
        self.catch_up(&link, generation);
        self.metrics.workers.inc();
        self.set_phase(slot_state, SlotPhase::Ready, Some(pid));
        tracing::info!(
            "worker {slot} (pid {pid}) ready in {} ms",
            started.elapsed().as_millis()
        );
        self.first_ready.send_replace(true);
        if !self.serving.load(Ordering::Relaxed) {
            let _ = self.startup.send(StartupEvent::Ready(slot));
        }

        // The reader runs as its own task, so it keeps turning replies into
        // responses while a retiring worker finishes its in-flight work.
        let mut reader_task = {
            let link = link.clone();
            tokio::spawn(async move {
                let reason = link.read_loop(reader).await;
                // Nothing more will arrive: fail what is pending at once.
                link.lose();
                reason
            })
        };
        let reason = tokio::select! {
            status = child.wait() => {
                // Take what the worker sent before it exited.
                let _ = tokio::time::timeout(EXIT_STATUS_WAIT, &mut reader_task).await;
                match status {
                    Ok(status) => format!("exited ({status})"),
                    Err(error) => format!("cannot be waited for: {error}"),
                }
            }
            reason = &mut reader_task => {
                let reason = reason.unwrap_or_else(|e| format!("the channel reader failed: {e}"));
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
            _ = &mut writer_task => {
                // The socket failed or a message could not be encoded: the
                // worker would never see what is pending on it.
                tracing::error!("worker {slot} (pid {pid}): cannot write to it; recycling it");
                let _ = child.start_kill();
                format!("channel write failed ({})", exit_status(&mut child).await)
            }
            () = self.stopped() => {
                // The host is stopping (drain done): ask the worker to exit.
                link.shutdown();
                if tokio::time::timeout(WORKER_STOP_TIMEOUT, child.wait()).await.is_err() {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                }
                "stopped".to_string()
            }
            () = slot_state.retire.notified() => {
                self.retire(slot_state, &link, &mut child).await;
                let _ = tokio::time::timeout(EXIT_STATUS_WAIT, &mut reader_task).await;
                "retired".to_string()
            }
        };
        reader_task.abort();
        self.pool.remove(slot);
        self.metrics.workers.dec();
        link.lose();
        // The process is gone: what its connections were doing decides
        // what each client gets.
        self.rescue_connections(&link, link.overran());
        if self.stopping.load(Ordering::Relaxed) {
            let _ = exit_status(&mut child).await;
            return WorkerEnd::Stopped;
        }
        if link.overran() {
            return WorkerEnd::Recycled;
        }
        if slot_state.retiring.load(Ordering::Relaxed) {
            return WorkerEnd::Retired;
        }
        WorkerEnd::Failed {
            uptime: started.elapsed(),
            reason,
        }
    }
}

impl Supervisor {
    /// Scales a worker down: no new work, in-flight work finishes (within
    /// `--grace`), then it is asked to exit.
    pub(super) async fn retire(
        &self,
        slot: &Slot,
        link: &Arc<WorkerLink>,
        child: &mut tokio::process::Child,
    ) {
        self.set_phase(slot, SlotPhase::Retiring, Some(link.pid));
        self.pool.remove(slot.id);
        let deadline = Instant::now() + self.config.host.grace;
        // Its connections go to the other workers once their requests in
        // progress are answered.
        link.release_connections();
        // The reader task marks the link lost if the worker dies meanwhile;
        // an overrun kills it now.
        // A lost worker's table says what it was doing when it died, not
        // what it still does: its connections are answered at once below.
        let mut watched = Instant::now();
        while !link.is_lost()
            && (link.in_flight() > 0 || link.handed.open_count() > 0)
            && Instant::now() < deadline
            && !link.overran()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
            // Out of the pool, so the watchdog does not see it: the same
            // check here (a stuck call gets its 504 from the rescue).
            if watched.elapsed() >= super::handoff::WATCH_INTERVAL {
                watched = Instant::now();
                if link.handed.overdue(self.overrun_limit()) {
                    link.overrun_connections();
                }
            }
        }
        if link.overran() {
            let _ = child.start_kill();
        }
        link.shutdown();
        if tokio::time::timeout(WORKER_STOP_TIMEOUT, child.wait())
            .await
            .is_err()
        {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
        tracing::info!("worker {} (pid {}) retired", slot.id, link.pid);
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
