//! `--threads auto`: the control law that sizes one function's sync lane
//! while it serves, doing what the seed tells its users to do by hand
//! (profile, then set the thread count), every [`CONTROL_INTERVAL`].
//!
//! What it reads from the lane, per interval ([`Sample`]):
//! - **demand**: calls waiting for a thread, the mean over the interval
//!   (their queued time over the interval's length, by Little's law), or
//!   the count waiting now when that is a quarter of the threads or more
//!   (a burst, before its calls have finished and told their wait); a
//!   call or two waiting at the instant of the sample, while a thread
//!   prepares its next instance, is not demand;
//! - **core share**: the part of a busy thread's time that needs a core
//!   when one is free, `CPU / (time in calls − time ready to run without a
//!   core)`, smoothed. A call sleeping on a timer or waiting on a socket
//!   needs none.
//!
//! From the share follows a **ceiling**, `cores / share`: the rule of
//! thumb `threads = cores × (1 + wait / compute)` with the kernel's own
//! accounting in place of a guess. More threads than that would only queue
//! for the cores. Time ready without a core is taken out of the time in
//! calls, so a CPU-bound lane on a busy machine does not look as if it
//! waited (its threads' CPU is all of the time they had a core), and a
//! waiting lane beside it does not look CPU-bound because its threads wait
//! a moment for a core after each wake-up. The
//! ceiling is rounded up less a quarter of a thread, so measurement noise
//! (a share of 0.98) does not put a CPU-bound lane one thread above the
//! cores.
//!
//! The law, in order:
//! 1. **Check the last growth** once it had an interval to settle: if calls
//!    still wait and throughput rose by less than half of what the added
//!    threads would give if each added as much as the old ones did, more
//!    threads stopped adding throughput (a saturated downstream, a lock):
//!    go back, and hold that count as a cap for [`CAP_HOLD_INTERVALS`].
//!    Growths under [`JUDGED_FROM`] are not judged: their expected gain is
//!    within the noise of one interval's count.
//! 2. **Over the ceiling**: shrink to it.
//! 3. **Grow** while calls wait, no thread is idle or at least 90% are in a
//!    call (calls can also wait for a free thread that is waiting for a
//!    core), and the lane is under its ceiling: by as many threads as calls
//!    wait, at most doubling per step.
//! 4. **Idle**: after [`IDLE_INTERVALS`] in a row with no call waiting
//!    and fewer than half the threads busy, shrink to 1.5 × the most that
//!    were busy, but not below the starting count.
//!
//! Each step is pure arithmetic on the sample, so the unit tests below
//! drive it with synthetic workloads; `sync_lane/crew.rs` feeds it real
//! samples and applies its changes.

use std::time::Duration;

/// How often the controller looks at its lane.
pub const CONTROL_INTERVAL: Duration = Duration::from_millis(250);
/// Intervals after a growth before it is judged: the new threads need to
/// pre-create an instance (about 20 ms for CPython) and finish a call.
pub const SETTLE_INTERVALS: u32 = 1;
/// Part of the proportional throughput gain a growth must bring to stand.
pub const MIN_GAIN: f64 = 0.5;
/// The smallest growth judged, as a ratio of thread counts.
pub const JUDGED_FROM: f64 = 1.25;
/// Intervals a count found not to pay is held as a cap (10 s).
pub const CAP_HOLD_INTERVALS: u32 = 40;
/// Intervals of low use before the lane shrinks (5 s).
pub const IDLE_INTERVALS: u32 = 20;
/// Part of the threads that must be busy for waiting calls to mean the
/// lane is short of threads.
const BUSY_FOR_GROWTH: f64 = 0.9;
/// Mean calls waiting below which an interval counts as idle.
const IDLE_DEMAND: f64 = 0.1;
/// Part of a thread the ceiling rounds away.
const CEILING_SLACK: f64 = 0.25;
/// Weight of the newest interval in the smoothed core share.
const SHARE_WEIGHT: f64 = 0.5;
/// The smallest core share believed: one call in a thousand of a thread's
/// time on a core (the ceiling stays finite for a pure sleeper).
const MIN_SHARE: f64 = 0.001;

/// Share of the memory budget up to which threads are added; past the
/// budget itself they are taken back.
const MEMORY_GROWTH_LIMIT: f64 = 0.95;

/// What a sync lane measured over one interval.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sample {
    /// The interval's length.
    pub interval: Duration,
    /// Calls that finished in it.
    pub calls: u64,
    /// Their time on a thread (start of the call to its end), summed.
    pub busy_ns: u64,
    /// Their CPU time, summed.
    pub cpu_ns: u64,
    /// Time the lane's threads were ready to run without a core.
    pub descheduled_ns: u64,
    /// Time calls spent waiting for a thread, summed.
    pub queued_ns: u64,
    /// Calls waiting for a thread at the interval's end.
    pub waiting: usize,
    /// Threads in a call at the interval's end.
    pub running: usize,
    /// Threads waiting for a call at the interval's end.
    pub idle: usize,
    /// The process's memory against its budget, when both are known.
    pub memory: Option<MemoryUse>,
}

/// What the process holds in memory, what `--threads auto` may let it
/// hold, and what one more of this lane's threads would add.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct MemoryUse {
    /// Resident memory of the whole process now, in bytes.
    pub resident: u64,
    /// The budget `auto` keeps the process within (`exec/memory_budget.rs`).
    pub budget: u64,
    /// What one more thread of this lane holds: its instance's linear
    /// memory at its largest so far, plus its stack.
    pub per_thread: u64,
    /// The lane's threads alive now, whose memory `resident` holds (during
    /// a shrink, more than the controller's count until their calls end).
    pub alive: usize,
    /// The `--threads auto` lanes in the process, which share the budget:
    /// each takes its part of the room, and gives back its part of the
    /// overage.
    pub lanes: usize,
}

impl MemoryUse {
    /// The most threads the lane may have: its threads alive now plus as
    /// many as fit below [`MEMORY_GROWTH_LIMIT`] of the budget, none
    /// between that and the budget, and fewer than now when the process is
    /// over its budget (the gap keeps the count from hunting around the
    /// budget a thread at a time). Counted from the threads alive, not the
    /// controller's count, so a shrink still under way is not made again.
    fn ceiling(&self) -> usize {
        let threads = self.alive;
        let share = self
            .per_thread
            .max(1)
            .saturating_mul(self.lanes.max(1) as u64);
        if self.resident <= self.budget {
            let growth_limit = (self.budget as f64 * MEMORY_GROWTH_LIMIT) as u64;
            let room = growth_limit.saturating_sub(self.resident) / share;
            threads.saturating_add(usize::try_from(room).unwrap_or(usize::MAX))
        } else {
            let over = (self.resident - self.budget).div_ceil(share);
            threads.saturating_sub(usize::try_from(over).unwrap_or(usize::MAX))
        }
    }
}

impl Sample {
    /// Calls waiting for a thread, for a lane of `threads`: the
    /// interval's mean, or the count now when it is a burst.
    fn demand(&self, threads: usize) -> f64 {
        let mean = self.queued_ns as f64 / nanos(self.interval);
        if self.waiting * 4 >= threads {
            mean.max(self.waiting as f64)
        } else {
            mean
        }
    }

    /// Threads busy on average over the interval.
    fn busy_threads(&self) -> f64 {
        self.busy_ns as f64 / nanos(self.interval)
    }

    /// Threads busy: the interval's mean from the calls that finished in
    /// it, or the count in a call now (calls longer than the interval),
    /// whichever is more.
    fn occupied(&self) -> f64 {
        self.busy_threads().max(self.running as f64)
    }

    /// Calls finished per second.
    fn rate(&self) -> f64 {
        self.calls as f64 / self.interval.as_secs_f64().max(f64::EPSILON)
    }

    /// The part of the busy threads' time that needed a core when one was
    /// free, if any call finished.
    fn core_share(&self) -> Option<f64> {
        (self.busy_ns > 0).then(|| {
            let had_a_core = self
                .busy_ns
                .saturating_sub(self.descheduled_ns)
                .max(self.cpu_ns)
                .max(1);
            (self.cpu_ns as f64 / had_a_core as f64).clamp(MIN_SHARE, 1.0)
        })
    }
}

/// One change of a lane's thread count, with the reason logged for it.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    /// Threads before.
    pub from: usize,
    /// Threads after.
    pub to: usize,
    /// Why, in words and numbers.
    pub reason: String,
}

/// A growth waiting to be judged.
#[derive(Clone, Copy, Debug)]
struct Probe {
    threads_before: usize,
    rate_before: f64,
    settle: u32,
}

/// The controller of one lane's thread count.
#[derive(Debug)]
pub struct ThreadController {
    threads: usize,
    floor: usize,
    max: usize,
    cores: usize,
    share: Option<f64>,
    probe: Option<Probe>,
    /// A count found not to pay, and the intervals it is still held.
    cap: Option<(usize, u32)>,
    /// The newest memory reading.
    memory: Option<MemoryUse>,
    idle_intervals: u32,
    idle_peak_busy: f64,
}

impl ThreadController {
    /// A controller for a lane that starts with `threads`, never idles
    /// below them, never grows past `max`, on a machine of `cores`.
    pub fn new(threads: usize, max: usize, cores: usize) -> Self {
        let max = max.max(1);
        let threads = threads.clamp(1, max);
        Self {
            threads,
            floor: threads,
            max,
            cores: cores.max(1),
            share: None,
            probe: None,
            cap: None,
            memory: None,
            idle_intervals: 0,
            idle_peak_busy: 0.0,
        }
    }

    /// The thread count the lane should have.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Whether the controller may still add threads (it is under its
    /// ceiling and cap).
    pub fn can_grow(&self) -> bool {
        self.threads < self.ceiling()
    }

    /// The most threads the cores can keep busy, by the smoothed share.
    /// [`CEILING_SLACK`] keeps a share of 0.98 on 2 cores at 2 threads.
    fn ceiling(&self) -> usize {
        // A quarter of a thread of slack, so a CPU-bound lane measured at
        // a share of 0.98 stays at the cores instead of one above them.
        let by_share = self.share.map_or(self.max, |share| {
            (self.cores as f64 / share - CEILING_SLACK).ceil() as usize
        });
        let capped = self.cap.map_or(by_share, |(cap, _)| by_share.min(cap));
        capped.min(self.memory_ceiling()).clamp(1, self.max)
    }

    /// Whether `ceiling` is the memory budget's.
    fn limited_by_memory(&self, ceiling: usize) -> bool {
        self.memory.is_some() && self.memory_ceiling().clamp(1, self.max) == ceiling
    }

    /// The most threads the memory budget allows (no limit without a
    /// reading).
    fn memory_ceiling(&self) -> usize {
        self.memory.map_or(usize::MAX, |memory| memory.ceiling())
    }

    /// Takes one interval's sample; returns the change to make, if any.
    pub fn step(&mut self, sample: &Sample) -> Option<Change> {
        if let Some(share) = sample.core_share() {
            self.share = Some(self.share.map_or(share, |old| {
                SHARE_WEIGHT * share + (1.0 - SHARE_WEIGHT) * old
            }));
        }
        if let Some((cap, left)) = self.cap {
            self.cap = left.checked_sub(1).map(|left| (cap, left));
        }
        self.memory = sample.memory;
        let demand = sample.demand(self.threads);
        if let Some(change) = self.judge_growth(sample, demand) {
            return Some(change);
        }
        if self.probe.is_some() {
            return None;
        }
        let ceiling = self.ceiling();
        let share = self.share.unwrap_or(1.0);
        if self.threads > ceiling && self.limited_by_memory(ceiling) {
            let memory = self.memory.unwrap_or_default();
            return self.change_to(
                ceiling,
                format!(
                    "the process holds {} MiB of its {} MiB budget for --threads auto, and a thread holds about {} MiB",
                    memory.resident >> 20,
                    memory.budget >> 20,
                    memory.per_thread.div_ceil(1 << 20)
                ),
            );
        }
        if self.threads > ceiling {
            return self.change_to(
                ceiling,
                format!(
                    "calls need a core {:.0}% of their time, so {ceiling} threads keep {} cores busy",
                    share * 100.0,
                    self.cores
                ),
            );
        }
        // Calls can wait while a thread is free but not yet running (on a
        // busy machine a woken thread waits for a core): that is no
        // shortage of threads. A lane with no thread idle is short even
        // if its threads spend time between calls preparing instances. Without a finished call there is no share
        // to size by yet.
        let short_of_threads =
            sample.idle == 0 || sample.occupied() >= BUSY_FOR_GROWTH * self.threads as f64;
        if demand >= 1.0 && short_of_threads && self.threads < ceiling && self.share.is_some() {
            let added = (demand.ceil() as usize).clamp(1, self.threads);
            let to = (self.threads + added).min(ceiling);
            self.probe = Some(Probe {
                threads_before: self.threads,
                rate_before: sample.rate(),
                settle: SETTLE_INTERVALS,
            });
            let room = if self.limited_by_memory(ceiling) {
                format!(
                    "memory has room for {ceiling} threads at about {} MiB each",
                    self.memory.unwrap_or_default().per_thread.div_ceil(1 << 20)
                )
            } else {
                format!("room for {ceiling} threads")
            };
            return self.change_to(
                to,
                format!(
                    "{demand:.0} calls waiting for a thread, and calls need a core {:.1}% of their time ({room})",
                    share * 100.0
                ),
            );
        }
        self.shrink_when_idle(sample, demand)
    }

    /// Step 1: keeps or reverts the last growth once it has settled.
    fn judge_growth(&mut self, sample: &Sample, demand: f64) -> Option<Change> {
        let probe = self.probe.as_mut()?;
        if probe.settle > 0 {
            probe.settle -= 1;
            return None;
        }
        let probe = self.probe.take()?;
        if demand < 1.0 || probe.rate_before <= 0.0 {
            return None;
        }
        let thread_gain = self.threads as f64 / probe.threads_before as f64;
        if thread_gain < JUDGED_FROM {
            return None;
        }
        let needed = probe.rate_before * (1.0 + MIN_GAIN * (thread_gain - 1.0));
        let rate = sample.rate();
        if rate >= needed {
            return None;
        }
        let (more, fewer) = (self.threads, probe.threads_before);
        self.cap = Some((fewer, CAP_HOLD_INTERVALS));
        self.change_to(
            fewer,
            format!(
                "{more} threads finished {rate:.0} calls/s and {fewer} finished {:.0}: more threads stopped adding throughput, so {fewer} is the most for {} s",
                probe.rate_before,
                (CONTROL_INTERVAL * CAP_HOLD_INTERVALS).as_secs()
            ),
        )
    }

    /// Step 4: shrinks a lane that has had more threads than it used.
    fn shrink_when_idle(&mut self, sample: &Sample, demand: f64) -> Option<Change> {
        let busy = sample.occupied();
        if demand >= IDLE_DEMAND || busy >= self.threads as f64 / 2.0 {
            self.idle_intervals = 0;
            self.idle_peak_busy = 0.0;
            return None;
        }
        self.idle_intervals += 1;
        self.idle_peak_busy = self.idle_peak_busy.max(busy);
        if self.idle_intervals < IDLE_INTERVALS {
            return None;
        }
        let peak = self.idle_peak_busy;
        self.idle_intervals = 0;
        self.idle_peak_busy = 0.0;
        let to = ((peak * 1.5).ceil() as usize).max(self.floor);
        if to >= self.threads {
            return None;
        }
        self.change_to(
            to,
            format!(
                "at most {peak:.1} threads were busy for {} s and no call waited",
                (CONTROL_INTERVAL * IDLE_INTERVALS).as_secs()
            ),
        )
    }

    fn change_to(&mut self, to: usize, reason: String) -> Option<Change> {
        let from = self.threads;
        if to == from {
            return None;
        }
        self.threads = to;
        // Idleness is judged afresh after any change.
        self.idle_intervals = 0;
        self.idle_peak_busy = 0.0;
        Some(Change { from, to, reason })
    }
}

fn nanos(duration: Duration) -> f64 {
    (duration.as_nanos() as f64).max(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lane of `threads` threads serving `clients` closed-loop clients,
    /// each call `cpu_ms` on a core then `wait_ms` waiting, on `cores`;
    /// `downstream` caps the calls per second the lane can finish.
    struct Workload {
        clients: usize,
        cpu_ms: f64,
        wait_ms: f64,
        cores: usize,
        downstream: f64,
    }

    /// 200 clients of calls that take 0.1 ms of CPU and wait 50 ms, on 2
    /// cores.
    fn sleeper() -> Workload {
        Workload {
            clients: 200,
            cpu_ms: 0.1,
            wait_ms: 50.0,
            cores: 2,
            downstream: f64::INFINITY,
        }
    }

    impl Workload {
        /// What an interval looks like at `threads` threads (a fluid model:
        /// every thread busy when calls wait, cores shared evenly).
        fn sample(&self, threads: usize) -> Sample {
            let interval = CONTROL_INTERVAL.as_secs_f64();
            let running = threads.min(self.clients) as f64;
            // CPU time stretches when more calls want a core than exist.
            let contention =
                (running * self.cpu_ms / (self.cpu_ms + self.wait_ms) / self.cores as f64).max(1.0);
            let call_ms = self.cpu_ms * contention + self.wait_ms;
            let rate = (running * 1000.0 / call_ms).min(self.downstream);
            let calls = rate * interval;
            let waiting = self.clients.saturating_sub(threads);
            let ns = |ms: f64| (ms * 1e6) as u64;
            Sample {
                interval: CONTROL_INTERVAL,
                calls: calls as u64,
                busy_ns: ns(running * interval * 1000.0),
                cpu_ns: ns(calls * self.cpu_ms),
                descheduled_ns: ns(calls * self.cpu_ms * (contention - 1.0)),
                queued_ns: ns(waiting as f64 * interval * 1000.0),
                waiting,
                running: running as usize,
                idle: threads.saturating_sub(self.clients),
                memory: None,
            }
        }

        /// The thread count after `intervals` steps from `start`.
        fn settle(&self, start: usize, intervals: usize) -> (usize, Vec<Change>) {
            let mut controller = ThreadController::new(start, 256, self.cores);
            let changes = self.drive(&mut controller, intervals, |_, _| {});
            (controller.threads(), changes)
        }

        /// Steps `controller` `intervals` times on this workload, each
        /// sample changed by `tweak` (given the thread count) first; the
        /// changes made.
        fn drive(
            &self,
            controller: &mut ThreadController,
            intervals: usize,
            tweak: impl Fn(&mut Sample, usize),
        ) -> Vec<Change> {
            let mut changes = Vec::new();
            for _ in 0..intervals {
                let threads = controller.threads();
                let mut sample = self.sample(threads);
                tweak(&mut sample, threads);
                changes.extend(controller.step(&sample));
            }
            changes
        }
    }

    #[test]
    fn a_waiting_function_grows_to_its_clients_within_a_few_seconds() {
        let sleeper = sleeper();
        // 6 → 12 → 24 → 48 → 96 → 192 → 200, a growth every other interval.
        let (threads, changes) = sleeper.settle(6, 14);
        assert_eq!(threads, 200, "{changes:#?}");
        assert!(changes.iter().all(|c| c.to > c.from), "{changes:#?}");
        assert!(
            changes[0].reason.contains("194 calls waiting"),
            "{changes:#?}"
        );
    }

    #[test]
    fn a_waiting_function_beside_a_cpu_bound_one_still_grows() {
        // The cores are busy with another function: each wake-up waits
        // 2 ms for a core, which is not a reason to stop growing.
        let sleeper = sleeper();
        let mut controller = ThreadController::new(6, 256, 2);
        sleeper.drive(&mut controller, 14, |sample, _| {
            sample.descheduled_ns = sample.calls * 2_000_000;
            sample.busy_ns += sample.descheduled_ns;
        });
        assert_eq!(controller.threads(), 200);
    }

    #[test]
    fn a_cpu_bound_function_stays_at_the_cores() {
        let cruncher = Workload {
            clients: 8,
            cpu_ms: 5.0,
            wait_ms: 0.0,
            cores: 2,
            downstream: f64::INFINITY,
        };
        let (threads, changes) = cruncher.settle(6, 40);
        assert_eq!(threads, 2, "{changes:#?}");
        assert!(
            changes[0].reason.contains("need a core 100%"),
            "{changes:#?}"
        );
    }

    #[test]
    fn half_work_half_waiting_gets_twice_the_cores() {
        let mixed = Workload {
            clients: 64,
            cpu_ms: 5.0,
            wait_ms: 5.0,
            cores: 2,
            downstream: f64::INFINITY,
        };
        let (threads, changes) = mixed.settle(6, 40);
        assert_eq!(threads, 4, "{changes:#?}");
    }

    #[test]
    fn threads_that_stop_adding_throughput_are_taken_back_and_held() {
        // A downstream that answers at most 300 calls/s: 15 threads suffice.
        let limited = Workload {
            downstream: 300.0,
            ..sleeper()
        };
        let mut controller = ThreadController::new(6, 256, 2);
        let changes = limited.drive(&mut controller, 12, |_, _| {});
        // 6 → 12 paid (120 → 240 calls/s); 12 → 24 did not (240 → 300).
        let reverted = changes.iter().find(|c| c.to < c.from).expect("a revert");
        assert_eq!((reverted.from, reverted.to), (24, 12), "{changes:#?}");
        assert!(reverted.reason.contains("stopped adding throughput"));
        assert_eq!(controller.threads(), 12, "held: {changes:#?}");
        // The hold ends; the controller probes again. It began at the
        // revert (interval 5), and intervals 6 to 12 have passed.
        let mut held = 12 - 5;
        let probe = loop {
            let sample = limited.sample(controller.threads());
            if let Some(change) = controller.step(&sample) {
                break change;
            }
            held += 1;
            assert!(held <= CAP_HOLD_INTERVALS, "held too long");
        };
        assert!(probe.to > 12, "{probe:?}");
        assert_eq!(held, CAP_HOLD_INTERVALS);
    }

    #[test]
    fn an_idle_lane_shrinks_back_to_its_start_but_not_below() {
        let burst = sleeper();
        let mut controller = ThreadController::new(6, 256, 2);
        burst.drive(&mut controller, 14, |_, _| {});
        assert_eq!(controller.threads(), 200);
        let trickle = Workload {
            clients: 2,
            ..burst
        };
        let changes = trickle.drive(&mut controller, IDLE_INTERVALS as usize - 1, |_, _| {});
        assert!(changes.is_empty(), "not before the idle time: {changes:#?}");
        let sample = trickle.sample(controller.threads());
        let change = controller.step(&sample).expect("shrinks");
        assert_eq!((change.from, change.to), (200, 6), "{change:?}");
        for _ in 0..3 * IDLE_INTERVALS {
            let sample = trickle.sample(controller.threads());
            assert_eq!(controller.step(&sample), None);
        }
    }

    #[test]
    fn a_call_or_two_waiting_at_the_sample_is_not_demand() {
        let mut controller = ThreadController::new(200, 256, 2);
        let sample = Sample {
            interval: CONTROL_INTERVAL,
            calls: 1000,
            busy_ns: 200 * CONTROL_INTERVAL.as_nanos() as u64,
            cpu_ns: 100_000_000,
            queued_ns: 40_000_000,
            waiting: 3,
            idle: 54,
            ..Sample::default()
        };
        assert_eq!(controller.step(&sample), None);
        // Nor a queue while a fifth of the threads are free: their wake-up
        // is what the calls wait for.
        let slow_wakeups = Sample {
            queued_ns: 10 * CONTROL_INTERVAL.as_nanos() as u64,
            waiting: 60,
            busy_ns: 160 * CONTROL_INTERVAL.as_nanos() as u64,
            running: 160,
            idle: 40,
            ..sample
        };
        assert_eq!(controller.step(&slow_wakeups), None);
        // Nor is a burst before any call has finished.
        let mut fresh = ThreadController::new(6, 256, 2);
        let burst = Sample {
            interval: CONTROL_INTERVAL,
            waiting: 100,
            ..Sample::default()
        };
        assert_eq!(fresh.step(&burst), None);
    }

    /// The sleeper's threads each holding 14 MiB (a CPython instance) in
    /// a process of 300 MiB plus its threads, under `budget` MiB.
    fn python_memory(threads: usize, budget: u64) -> MemoryUse {
        MemoryUse {
            resident: (300 + 14 * threads as u64) << 20,
            budget: budget << 20,
            per_thread: 14 << 20,
            alive: threads,
            lanes: 1,
        }
    }

    #[test]
    fn a_waiting_function_grows_only_as_far_as_the_memory_budget() {
        let sleeper = sleeper();
        let mut controller = ThreadController::new(6, 256, 2);
        let changes = sleeper.drive(&mut controller, 20, |sample, threads| {
            sample.memory = Some(python_memory(threads, 1024));
        });
        // (0.95 × 1024 - 300) / 14 = 48 threads fit.
        assert_eq!(controller.threads(), 48, "{changes:#?}");
        assert!(changes.iter().all(|c| c.to > c.from), "{changes:#?}");
        assert!(
            changes
                .last()
                .unwrap()
                .reason
                .contains("memory has room for 48 threads at about 14 MiB each"),
            "{changes:#?}"
        );
        assert!(!controller.can_grow());
    }

    #[test]
    fn a_process_over_its_memory_budget_gives_threads_back() {
        let sleeper = sleeper();
        let mut controller = ThreadController::new(100, 256, 2);
        let mut sample = sleeper.sample(100);
        // 100 threads hold 1,700 MiB; the budget is 1,024.
        sample.memory = Some(python_memory(100, 1024));
        let change = controller.step(&sample).expect("a shrink");
        assert_eq!((change.from, change.to), (100, 51), "{change:#?}");
        // The next tick the 100 threads are still finishing their calls and
        // hold the same memory: the shrink is under way, not made again.
        assert_eq!(controller.step(&sample), None);
        assert!(
            change
                .reason
                .contains("holds 1700 MiB of its 1024 MiB budget"),
            "{change:#?}"
        );
    }

    #[test]
    fn two_lanes_share_the_room_and_the_overage() {
        // 1,024 MiB budget, 300 held: room for 48 threads of 14 MiB in
        // all, so 24 each; 1,700 MiB held: 49 threads over, 25 each.
        let two = |threads, budget| MemoryUse {
            lanes: 2,
            ..python_memory(threads, budget)
        };
        assert_eq!(two(0, 1024).ceiling(), 24);
        assert_eq!(two(100, 1024).ceiling(), 75);
    }

    #[test]
    fn a_lane_just_under_its_memory_budget_neither_grows_nor_shrinks() {
        let sleeper = sleeper();
        let mut controller = ThreadController::new(50, 256, 2);
        for _ in 0..8 {
            let mut sample = sleeper.sample(50);
            // 300 + 14 × 50 = 1,000 MiB: past 95% of 1,024, within it.
            sample.memory = Some(python_memory(50, 1024));
            assert_eq!(controller.step(&sample), None);
        }
    }

    #[test]
    fn a_steady_lane_at_its_size_does_not_move() {
        let steady = Workload {
            clients: 6,
            ..sleeper()
        };
        let (threads, changes) = steady.settle(6, 200);
        assert_eq!((threads, changes), (6, vec![]));
    }
}
