//! Noticing a WASIp3 instance whose guest has stopped handing control back.
//!
//! A WASIp3 instance runs up to `--max-concurrent-reuse` calls at once on
//! the guest's own event loop (CPython's asyncio loop, say). A call that
//! computes without awaiting holds that loop, so every other call on the
//! instance waits: the seed's "async function that never awaits". The
//! host's own loop stays fair (fuel and epoch yields), but those yields
//! suspend the guest in the middle of its code: to wasmtime's request
//! handler the instance then looks idle and it keeps routing new calls to
//! it.
//!
//! wasmtime-wasi-http's handler already offers a new call to an instance
//! only while its event loop can run, and a guest that holds the loop keeps
//! the handler's own bookkeeping for that instance from running too, so new
//! calls go to other instances (measured: probes answered in 2-15 ms while
//! a call spun 2 s on the instance they would otherwise share). What it
//! does not do is say so. So each instance's store gets a call hook:
//! entering wasm from the host starts a run, returning from the outermost
//! wasm call ends it (an event-loop guest returns whenever every task
//! awaits), and the run counts the epoch ticks the guest runs through (the
//! engine's epoch callback, which is also its yield). A [`StallWatch`] task
//! looks at the clocks of a lane's live instances every [`WATCH_INTERVAL`];
//! a run of [`STALL_TICKS`] ticks while the instance holds calls means the
//! guest has held its loop for about [`STALL_AFTER`] of its own running: the
//! stall is logged once with the calls the instance holds and counted
//! (`fnhost_async_stalls_total`), and the instance says no to new calls
//! (`should_accept_request`) should the handler ask.
//!
//! Ticks, not wall time: a guest parked at its yield, waiting for a core
//! behind other tasks, crosses no tick. Wall time counted that wait, and a
//! well-behaved Python app (`await` of 50 ms, 500 connections, the host's
//! 2 cores saturated) logged about 1,400 false stalls in 10 s and had its
//! instances refuse calls it could take.

use super::async_lane::YieldObserver;
use super::profile::Profile;
use crate::engine::EPOCH_TICK;
use crate::invocation::InvocationId;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use wasmtime::CallHook;

/// How long guest code may run without handing control back to its
/// instance's event loop before it counts as a stall. Python handles a
/// request in well under a millisecond between awaits, so the line sits
/// far above an ordinary call.
pub const STALL_AFTER: Duration = Duration::from_millis(100);

/// [`STALL_AFTER`] in epoch ticks the guest ran through. A run also takes
/// a tick when it starts after a pause of a tick or more (the instance's
/// deadline passed meanwhile), so an ordinary call counts 1-2. A yield
/// sets the next deadline when the guest resumes, so the wait at a yield
/// counts nothing, but the guest then runs only to the next tick, 0-10 ms:
/// a spin parked at every yield on a saturated host is caught after about
/// 50 ms of its own running, on an idle host after 100.
pub const STALL_TICKS: u32 = (STALL_AFTER.as_millis() / EPOCH_TICK.as_millis()) as u32;

/// How often a lane's watchdog looks at its instances' clocks.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(20);

/// Stalls noticed in this process so far (reported to the supervisor).
static STALLS: AtomicU64 = AtomicU64::new(0);

/// Stalls noticed in this process so far.
pub fn stalls() -> u64 {
    STALLS.load(Ordering::Relaxed)
}

/// One instance's guest clock and the calls it is running.
pub struct GuestClock {
    base: Instant,
    /// Nanoseconds after `base` (plus one) at which the outermost wasm call
    /// started; 0 while no guest code runs.
    since: AtomicU64,
    /// Epoch ticks the guest has run through since then.
    ticks: AtomicU32,
    /// Nanoseconds of that run spent waiting at epoch yields.
    parked: AtomicU64,
    /// Whether the run serves calls (not the instantiation), so its time
    /// goes to the function's profile.
    serving: AtomicBool,
    depth: AtomicU32,
    /// The `since` of the last stall reported, so each stall is reported
    /// once and a new one is never mistaken for it.
    reported_since: AtomicU64,
    calls: Mutex<Vec<InvocationId>>,
    function: Arc<str>,
    /// Runs at each stall noticed (the lane's budget lets the instance go).
    on_stall: Box<dyn Fn() + Send + Sync>,
    /// The function's costs: its guest's running time and its calls.
    profile: Arc<Profile>,
}

impl GuestClock {
    /// A clock for an instance of `function`, whose guest's running time
    /// and calls go to `profile`; `on_stall` runs at each stall noticed,
    /// from the watchdog (the guest still holds its store then).
    pub fn new(
        function: Arc<str>,
        profile: Arc<Profile>,
        on_stall: impl Fn() + Send + Sync + 'static,
    ) -> Arc<Self> {
        Arc::new(Self {
            base: Instant::now(),
            since: AtomicU64::new(0),
            ticks: AtomicU32::new(0),
            parked: AtomicU64::new(0),
            serving: AtomicBool::new(false),
            depth: AtomicU32::new(0),
            reported_since: AtomicU64::new(0),
            calls: Mutex::new(Vec::new()),
            function,
            on_stall: Box::new(on_stall),
            profile,
        })
    }

    /// The store's call hook: tracks the outermost wasm call.
    pub fn transition(&self, hook: CallHook) {
        match hook {
            CallHook::CallingWasm => {
                if self.depth.fetch_add(1, Ordering::Relaxed) == 0 {
                    let now = self.base.elapsed().as_nanos() as u64 + 1;
                    self.ticks.store(0, Ordering::Relaxed);
                    self.parked.store(0, Ordering::Relaxed);
                    self.serving.store(!self.idle(), Ordering::Relaxed);
                    self.since.store(now, Ordering::Relaxed);
                }
            }
            CallHook::ReturningFromWasm => {
                if self.depth.fetch_sub(1, Ordering::Relaxed) == 1 {
                    let since = self.since.swap(0, Ordering::Relaxed);
                    if self.serving.load(Ordering::Relaxed) {
                        let now = self.base.elapsed().as_nanos() as u64 + 1;
                        let parked = self.parked.load(Ordering::Relaxed);
                        let ran = now.saturating_sub(since).saturating_sub(parked);
                        self.profile.add_cpu(Duration::from_nanos(ran));
                    }
                }
            }
            CallHook::CallingHost | CallHook::ReturningFromHost => {}
        }
    }

    /// Whether the instance is stalled: guest code has run through
    /// [`STALL_TICKS`] epoch ticks without returning, while the instance
    /// holds calls (instantiation, with none, does not count). A new stall
    /// is reported once.
    pub fn stalled(&self) -> bool {
        let since = self.since.load(Ordering::Relaxed);
        if since == 0 {
            return false;
        }
        let ticks = self.ticks.load(Ordering::Relaxed);
        if ticks < STALL_TICKS {
            return false;
        }
        let now = self.base.elapsed().as_nanos() as u64 + 1;
        let running = Duration::from_nanos(now.saturating_sub(since));
        let calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        if calls.is_empty() {
            return false;
        }
        if self.reported_since.swap(since, Ordering::Relaxed) != since {
            STALLS.fetch_add(1, Ordering::Relaxed);
            (self.on_stall)();
            let ids: Vec<String> = calls.iter().map(|id| format!("[{id}]")).collect();
            tracing::warn!(
                "{} an async call of {} has run through {ticks} epoch ticks ({} ms) without handing control back to its instance (an `async` function that never awaits?); the {} call{} on that instance wait for it, new calls go to other instances",
                ids.join(" "),
                self.function,
                running.as_millis(),
                calls.len(),
                if calls.len() == 1 { "" } else { "s" },
            );
        }
        true
    }

    /// Whether the instance is running no call now.
    pub fn idle(&self) -> bool {
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// Records that `id` started on this instance; the guard forgets it.
    pub fn call_started(self: &Arc<Self>, id: InvocationId) -> CallGuard {
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(id);
        CallGuard {
            clock: self.clone(),
            id,
        }
    }
}

/// The clocks of one lane's live instances, and the task that watches them.
pub struct StallWatch {
    clocks: Mutex<Vec<Weak<GuestClock>>>,
}

impl StallWatch {
    /// A watch whose task runs on the current tokio runtime until the watch
    /// is dropped.
    pub fn start() -> Arc<Self> {
        let watch = Arc::new(Self {
            clocks: Mutex::new(Vec::new()),
        });
        let weak = Arc::downgrade(&watch);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(WATCH_INTERVAL);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let Some(watch) = weak.upgrade() else { return };
                watch.check();
            }
        });
        watch
    }

    /// Watches `clock` from now on, for as long as its instance lives.
    pub fn register(&self, clock: &Arc<GuestClock>) {
        self.clocks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::downgrade(clock));
    }

    /// Reports stalled instances and forgets dropped ones.
    fn check(&self) {
        let mut clocks = self.clocks.lock().unwrap_or_else(|e| e.into_inner());
        clocks.retain(|clock| match clock.upgrade() {
            Some(clock) => {
                clock.stalled();
                true
            }
            None => false,
        });
    }
}

/// The engine's epoch yields: ticks count towards a stall, and the time
/// parked at a yield is not the guest's running.
impl YieldObserver for Arc<GuestClock> {
    fn ticked(&self) {
        self.ticks.fetch_add(1, Ordering::Relaxed);
    }

    fn resumed(&self, parked: Duration) {
        self.parked
            .fetch_add(parked.as_nanos() as u64, Ordering::Relaxed);
    }
}

/// Removes a call from its instance's list when the call is over, and
/// counts it (its CPU is counted per run of the instance's guest).
pub struct CallGuard {
    clock: Arc<GuestClock>,
    id: InvocationId,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        let mut calls = self.clock.calls.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(at) = calls.iter().position(|id| *id == self.id) {
            calls.swap_remove(at);
        }
        self.clock.profile.record(Duration::ZERO, Duration::ZERO);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_calls_keep_the_clock_and_the_outermost_return_stops_it() {
        let clock = GuestClock::new("f".into(), Arc::default(), || {});
        assert_eq!(clock.since.load(Ordering::Relaxed), 0);
        clock.transition(CallHook::CallingWasm);
        clock.transition(CallHook::CallingHost);
        // The host calls back into the guest (a realloc, say).
        clock.transition(CallHook::CallingWasm);
        clock.transition(CallHook::ReturningFromWasm);
        clock.transition(CallHook::ReturningFromHost);
        assert_ne!(
            clock.since.load(Ordering::Relaxed),
            0,
            "still in the outer call"
        );
        clock.transition(CallHook::ReturningFromWasm);
        assert_eq!(clock.since.load(Ordering::Relaxed), 0);
    }

    /// The guest running through `ticks` epoch ticks.
    fn run_through(clock: &Arc<GuestClock>, ticks: u32) {
        for _ in 0..ticks {
            clock.ticked();
        }
    }

    #[test]
    fn a_long_run_is_a_stall_reported_once_and_the_list_follows_the_calls() {
        let clock = GuestClock::new("f".into(), Arc::default(), || {});
        // Instantiation (no calls yet) is never a stall.
        clock.transition(CallHook::CallingWasm);
        run_through(&clock, STALL_TICKS + 1);
        assert!(!clock.stalled());
        clock.transition(CallHook::ReturningFromWasm);
        let guard = clock.call_started(InvocationId::from_u64(7));
        clock.transition(CallHook::CallingWasm);
        assert!(!clock.stalled(), "a new run starts from no ticks");
        run_through(&clock, STALL_TICKS - 1);
        assert!(!clock.stalled());
        run_through(&clock, 1);
        let before = stalls();
        assert!(clock.stalled());
        assert!(clock.stalled());
        assert_eq!(stalls(), before + 1, "counted once");
        clock.transition(CallHook::ReturningFromWasm);
        assert!(!clock.stalled());
        // The next stall is a new one.
        std::thread::sleep(Duration::from_millis(2));
        clock.transition(CallHook::CallingWasm);
        run_through(&clock, STALL_TICKS);
        assert!(clock.stalled());
        assert_eq!(stalls(), before + 2);
        clock.transition(CallHook::ReturningFromWasm);
        drop(guard);
        assert!(clock.calls.lock().unwrap().is_empty());
    }

    #[test]
    fn a_run_parked_past_the_line_but_crossing_few_ticks_is_no_stall() {
        // A well-behaved call on a saturated host: it waits behind other
        // tasks at its yields far longer than it runs.
        let clock = GuestClock::new("f".into(), Arc::default(), || {});
        let _guard = clock.call_started(InvocationId::from_u64(8));
        clock.transition(CallHook::CallingWasm);
        run_through(&clock, 2);
        std::thread::sleep(STALL_AFTER + Duration::from_millis(5));
        assert!(!clock.stalled());
    }

    #[test]
    fn a_serving_run_counts_its_time_less_its_yields_and_each_call_once() {
        let profile = Arc::new(Profile::default());
        let clock = GuestClock::new("f".into(), profile.clone(), || {});
        // Instantiation (no calls) costs the function nothing.
        clock.transition(CallHook::CallingWasm);
        std::thread::sleep(Duration::from_millis(5));
        clock.transition(CallHook::ReturningFromWasm);
        assert_eq!(profile.snapshot().cpu_ns, 0);
        let guard = clock.call_started(InvocationId::from_u64(9));
        let started = std::time::Instant::now();
        clock.transition(CallHook::CallingWasm);
        std::thread::sleep(Duration::from_millis(20));
        clock.resumed(Duration::from_millis(15));
        clock.transition(CallHook::ReturningFromWasm);
        let elapsed = started.elapsed();
        let cpu = Duration::from_nanos(profile.snapshot().cpu_ns);
        assert!(
            cpu >= Duration::from_millis(5) && cpu + Duration::from_millis(15) <= elapsed,
            "a run of {elapsed:?}, 15 ms of it parked, counted {cpu:?}"
        );
        assert_eq!(profile.snapshot().calls, 0);
        drop(guard);
        assert_eq!(profile.snapshot().calls, 1);
    }

    #[test]
    fn the_line_is_a_whole_number_of_ticks() {
        assert_eq!(EPOCH_TICK * STALL_TICKS, STALL_AFTER);
    }
}
