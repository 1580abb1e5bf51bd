//! The sync lane's threads: how many there are, how many the lane wants,
//! what they measured, and, with `--threads auto`, the controller that
//! changes the count while serving (`exec/thread_control.rs`).
//!
//! A thread is started by [`Crew::grow_to`]; it leaves when it finds the
//! crew over its target, after a call or on a [`Work::Retire`] that
//! [`Crew::reconcile`] queues for idle threads. The controller reconciles
//! the crew with its count on every tick; the profile's thread gauge is
//! written when threads start and on every tick.

use super::Work;
use super::thread::Runner;
use crate::exec::memory_budget;
use crate::exec::profile::nanos;
use crate::exec::thread_control::{CONTROL_INTERVAL, Change, MemoryUse, Sample, ThreadController};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// What a sync lane's calls cost, cumulative (the controller takes
/// differences).
#[derive(Debug, Default)]
pub(super) struct LaneLoad {
    calls: AtomicU64,
    busy_ns: AtomicU64,
    cpu_ns: AtomicU64,
    queued_ns: AtomicU64,
    /// Calls in the queue now.
    pub(super) waiting: AtomicUsize,
    /// Threads in a call now.
    pub(super) running: AtomicUsize,
    /// Threads waiting for a call now.
    idle: AtomicUsize,
    /// Retire notes in the queue, not yet taken by a thread.
    retire_notes: AtomicUsize,
    /// Whether `--threads auto` may still add threads: while it may, time
    /// queued for a thread is the controller's to remove, not load to shed.
    pub(super) can_grow: AtomicBool,
}

impl LaneLoad {
    /// Counts one finished call: its time on a thread, its CPU, and its
    /// time in the queue.
    pub(super) fn record(&self, busy: Duration, cpu: Duration, queued: Duration) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.busy_ns.fetch_add(nanos(busy), Ordering::Relaxed);
        self.cpu_ns.fetch_add(nanos(cpu), Ordering::Relaxed);
        self.queued_ns.fetch_add(nanos(queued), Ordering::Relaxed);
    }
}

/// The lane's threads.
pub(super) struct Crew {
    runner: Runner,
    jobs: Mutex<Receiver<Work>>,
    runtime: tokio::runtime::Handle,
    /// Threads running now.
    alive: AtomicUsize,
    /// Threads the lane wants.
    target: AtomicUsize,
    /// Threads ever started, for their names.
    started: AtomicUsize,
    /// What the calls cost.
    pub(super) load: LaneLoad,
}

impl Crew {
    /// A crew of no threads yet, taking calls from `jobs`; their host
    /// calls that need async I/O run on `runtime`.
    pub(super) fn new(
        runner: Runner,
        jobs: Receiver<Work>,
        runtime: tokio::runtime::Handle,
    ) -> Arc<Self> {
        Arc::new(Self {
            runner,
            jobs: Mutex::new(jobs),
            runtime,
            alive: AtomicUsize::new(0),
            target: AtomicUsize::new(0),
            started: AtomicUsize::new(0),
            load: LaneLoad::default(),
        })
    }

    /// Threads running now.
    pub(super) fn threads(&self) -> usize {
        self.alive.load(Ordering::Relaxed)
    }

    /// Starts threads until `threads` run.
    pub(super) fn grow_to(self: &Arc<Self>, threads: usize) {
        self.target.fetch_max(threads, Ordering::Relaxed);
        while self
            .alive
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |alive| {
                (alive < threads).then_some(alive + 1)
            })
            .is_ok()
        {
            let crew = self.clone();
            let index = self.started.fetch_add(1, Ordering::Relaxed);
            let spawned = std::thread::Builder::new()
                .name(format!("fnhost-sync-{index}"))
                .spawn(move || {
                    let _entered = crew.runtime.enter();
                    let profile = crew.runner.profile();
                    profile.add_this_thread();
                    crew.runner.serve(&crew);
                    profile.remove_this_thread();
                });
            if let Err(error) = spawned {
                self.alive.fetch_sub(1, Ordering::AcqRel);
                tracing::warn!("cannot start a sync-lane thread: {error}");
                break;
            }
        }
        self.runner.profile().set_threads(self.threads());
    }

    /// Brings the crew to `threads`: starts the missing ones (a change,
    /// or a thread that could not be started before), or asks the extra
    /// ones to leave. Busy threads leave after their call; while no call
    /// waits, `queue` carries retire notes to idle ones, as many as are
    /// not queued already (again on each tick, for notes a full queue
    /// refused: notes share the queue with calls, so they must not pile up).
    pub(super) fn reconcile(self: &Arc<Self>, threads: usize, queue: &SyncSender<Work>) {
        self.target.store(threads, Ordering::Relaxed);
        let alive = self.threads();
        if alive < threads {
            self.grow_to(threads);
        } else if alive > threads && self.load.waiting.load(Ordering::Relaxed) == 0 {
            let queued = self.load.retire_notes.load(Ordering::Relaxed);
            for _ in threads.saturating_add(queued)..alive {
                // Counted before it is sent: the thread that takes it
                // counts it out.
                self.load.retire_notes.fetch_add(1, Ordering::Relaxed);
                if queue.try_send(Work::Retire).is_err() {
                    self.load.retire_notes.fetch_sub(1, Ordering::Relaxed);
                    break;
                }
            }
        }
    }

    /// The next call or retire note; `None` once the lane has stopped.
    pub(super) fn next_work(&self) -> Option<Work> {
        self.load.idle.fetch_add(1, Ordering::Relaxed);
        let work = {
            let jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
            jobs.recv()
        };
        self.load.idle.fetch_sub(1, Ordering::Relaxed);
        let work = work.ok()?;
        match work {
            Work::Call(_) => self.load.waiting.fetch_sub(1, Ordering::Relaxed),
            Work::Retire => self.load.retire_notes.fetch_sub(1, Ordering::Relaxed),
        };
        Some(work)
    }

    /// Whether the calling thread should leave because the crew is over
    /// its target; if so it is no longer counted.
    pub(super) fn retire_one(&self) -> bool {
        let target = self.target.load(Ordering::Relaxed);
        let left = self
            .alive
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |alive| {
                (alive > target).then(|| alive - 1)
            });
        left.is_ok()
    }

    /// Runs the `--threads auto` controller for this crew every
    /// [`CONTROL_INTERVAL`] until the lane stops (`queue` is dropped).
    pub(super) fn control(
        self: &Arc<Self>,
        mut controller: ThreadController,
        queue: Weak<SyncSender<Work>>,
    ) {
        let crew = Arc::downgrade(self);
        let function = self.runner.function();
        self.runtime.spawn(async move {
            let _share = memory_budget::LaneShare::join();
            let mut ticker = tokio::time::interval(CONTROL_INTERVAL);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await;
            let mut before = Reading::default();
            let mut at = Instant::now();
            loop {
                ticker.tick().await;
                let (Some(crew), Some(queue)) = (crew.upgrade(), queue.upgrade()) else {
                    return;
                };
                let now = Reading::of(&crew);
                let sample = now.since(&before, at.elapsed(), &crew);
                (before, at) = (now, Instant::now());
                if let Some(Change { from, to, reason }) = controller.step(&sample) {
                    tracing::info!(
                        "function {function}: sync-lane threads {from} → {to}: {reason}"
                    );
                    crew.runner.profile().count_thread_change();
                }
                crew.load
                    .can_grow
                    .store(controller.can_grow(), Ordering::Relaxed);
                crew.reconcile(controller.threads(), &queue);
                crew.runner.profile().set_threads(crew.threads());
            }
        });
    }
}

/// The cumulative counts at one instant.
#[derive(Clone, Copy, Default)]
struct Reading {
    calls: u64,
    busy_ns: u64,
    cpu_ns: u64,
    queued_ns: u64,
    descheduled_ns: u64,
}

impl Reading {
    fn of(crew: &Crew) -> Self {
        let load = &crew.load;
        Self {
            calls: load.calls.load(Ordering::Relaxed),
            busy_ns: load.busy_ns.load(Ordering::Relaxed),
            cpu_ns: load.cpu_ns.load(Ordering::Relaxed),
            queued_ns: load.queued_ns.load(Ordering::Relaxed),
            descheduled_ns: crew.runner.profile().descheduled_ns(),
        }
    }

    fn since(&self, before: &Self, interval: Duration, crew: &Crew) -> Sample {
        Sample {
            interval,
            calls: self.calls.saturating_sub(before.calls),
            busy_ns: self.busy_ns.saturating_sub(before.busy_ns),
            cpu_ns: self.cpu_ns.saturating_sub(before.cpu_ns),
            descheduled_ns: self.descheduled_ns.saturating_sub(before.descheduled_ns),
            queued_ns: self.queued_ns.saturating_sub(before.queued_ns),
            waiting: crew.load.waiting.load(Ordering::Relaxed),
            running: crew.load.running.load(Ordering::Relaxed),
            idle: crew.load.idle.load(Ordering::Relaxed),
            memory: memory_use(crew),
        }
    }
}

/// The process's memory against the `--threads auto` budget, once one of
/// the lane's calls has shown what an instance holds.
fn memory_use(crew: &Crew) -> Option<MemoryUse> {
    let largest = crew.runner.largest_memory();
    if largest == 0 {
        return None;
    }
    Some(MemoryUse {
        resident: memory_budget::resident()?,
        budget: memory_budget::budget()?,
        per_thread: largest + memory_budget::THREAD_OVERHEAD,
        alive: crew.threads(),
        lanes: memory_budget::lanes(),
    })
}
