//! Making a guest's yield a real yield.
//!
//! wasmtime yields a guest that used up its fuel slice by waking its own task
//! and returning `Pending`. tokio puts a task woken from inside its own poll
//! into the worker's LIFO slot and runs it again at once, so the "yield"
//! hands the thread to nobody (wasmtime #10667); and tokio polls its I/O
//! driver only every 61 scheduler ticks, so new connections wait behind busy
//! guests. [`Fair`] catches that self-wake and replaces it with
//! [`tokio::task::yield_now`], which defers the wake until the worker has run
//! other ready tasks and polled the I/O driver.
//!
//! Yielding alone shares a worker thread between a spinning guest and
//! everything else, but with as many spinning guests as cores, every worker
//! still spends most of its time in guests. So, like an operating system's
//! multi-level feedback queue, an invocation that has run for more than
//! [`LONG_RUNNING_AFTER`] of guest time becomes *long-running*: from then on
//! it must hold one of a few [`FairShare`] permits while it runs a slice.
//! There are one fewer permits than worker threads, so at least one worker
//! is always free for short requests, however many guests spin.
//!
//! Made with [`Fair::measuring`], it also measures how long its guest was
//! ready to run but not running ([`Fair::ready_wait`]): from a wake-up, or
//! a yield, to the next slice. That time grows with load and nothing else,
//! which is what load shedding (`shed.rs`) needs; without it, no clock is
//! read for it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Guest time after which an invocation counts as long-running.
pub const LONG_RUNNING_AFTER: Duration = Duration::from_millis(10);

/// The slices long-running invocations may run at once, shared by a lane.
#[derive(Clone)]
pub struct FairShare {
    permits: Arc<Semaphore>,
}

impl FairShare {
    /// Room for `workers - 1` long-running slices at once, and at least one
    /// (so on a single-worker runtime a long-running guest still shares its
    /// worker with the short ones, through its yields).
    pub fn for_workers(workers: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(workers.saturating_sub(1).max(1))),
        }
    }
}

type PermitFuture = Pin<Box<dyn Future<Output = Option<OwnedSemaphorePermit>> + Send>>;

/// Wraps a guest future so its yields let other tasks and the network run.
pub struct Fair<F> {
    inner: Pin<Box<F>>,
    detector: Arc<SelfWakeDetector>,
    detector_waker: Waker,
    yielding: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    share: FairShare,
    guest_time: Duration,
    ready_wait: Duration,
    acquiring: Option<PermitFuture>,
}

impl<F: Future> Fair<F> {
    /// Time spent inside the inner future's polls so far: the work it did
    /// on this thread, not its waits.
    pub fn guest_time(&self) -> Duration {
        self.guest_time
    }

    /// Time the inner future was ready to run but not running so far:
    /// from each wake-up or yield to its next slice (zero unless made with
    /// [`Fair::measuring`]).
    pub fn ready_wait(&self) -> Duration {
        self.ready_wait
    }

    /// Wraps `inner`; once long-running, it takes turns on `share`.
    pub fn new(inner: F, share: FairShare) -> Self {
        Self::with_detector(inner, share, SelfWakeDetector::new(false))
    }

    /// [`Fair::new`], also measuring [`Fair::ready_wait`].
    pub fn measuring(inner: F, share: FairShare) -> Self {
        Self::with_detector(inner, share, SelfWakeDetector::new(true))
    }

    fn with_detector(inner: F, share: FairShare, detector: SelfWakeDetector) -> Self {
        let detector = Arc::new(detector);
        Self {
            inner: Box::pin(inner),
            detector_waker: Waker::from(detector.clone()),
            detector,
            yielding: None,
            share,
            guest_time: Duration::ZERO,
            ready_wait: Duration::ZERO,
            acquiring: None,
        }
    }
}

impl<F: Future> Future for Fair<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        if let Some(yielding) = this.yielding.as_mut() {
            if yielding.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.yielding = None;
        }
        // A long-running invocation runs a slice only with a permit, held
        // for that slice alone so the long-running ones take turns.
        let _permit = if this.guest_time >= LONG_RUNNING_AFTER {
            let permits = this.share.permits.clone();
            let acquiring = this
                .acquiring
                .get_or_insert_with(|| Box::pin(async move { permits.acquire_owned().await.ok() }));
            match acquiring.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(permit) => {
                    this.acquiring = None;
                    permit
                }
            }
        } else {
            None
        };
        this.detector.set_task_waker(cx.waker());
        this.detector.in_poll.store(true, Ordering::SeqCst);
        let mut inner_cx = Context::from_waker(&this.detector_waker);
        let slice_started = Instant::now();
        this.ready_wait += this.detector.take_ready_since(slice_started);
        let result = this.inner.as_mut().poll(&mut inner_cx);
        let slice_ended = Instant::now();
        this.guest_time += slice_ended - slice_started;
        this.detector.in_poll.store(false, Ordering::SeqCst);
        let woke_itself = this.detector.self_woken.swap(false, Ordering::SeqCst);
        if woke_itself && this.detector.epoch.is_some() {
            // A yield: ready from now until its next slice.
            this.detector.mark_ready(slice_ended);
        }
        match result {
            Poll::Ready(output) => Poll::Ready(output),
            Poll::Pending if woke_itself => {
                let mut yielding: Pin<Box<dyn Future<Output = ()> + Send>> =
                    Box::pin(tokio::task::yield_now());
                // The first poll of `yield_now` registers the deferred wake.
                if yielding.as_mut().poll(cx).is_pending() {
                    this.yielding = Some(yielding);
                    Poll::Pending
                } else {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The waker the guest future sees: wakes during its own poll are recorded
/// (they are yields), wakes at any other time go to the task, and the
/// first wake since the last slice is timed.
struct SelfWakeDetector {
    in_poll: AtomicBool,
    self_woken: AtomicBool,
    task: Mutex<Option<Waker>>,
    /// What `ready_since` counts from; `None`: ready time is not measured.
    epoch: Option<Instant>,
    /// When the future became ready to run, in nanoseconds since `epoch`
    /// (plus one; 0: it is not waiting to run).
    ready_since: AtomicU64,
}

impl SelfWakeDetector {
    /// A detector for a future that is ready to run from now (its first
    /// poll), timing that readiness if `measure`.
    fn new(measure: bool) -> Self {
        Self {
            in_poll: AtomicBool::new(false),
            self_woken: AtomicBool::new(false),
            task: Mutex::new(None),
            epoch: measure.then(Instant::now),
            ready_since: AtomicU64::new(u64::from(measure)),
        }
    }

    /// Notes that the future is ready to run from `at`, unless it already
    /// was (measuring only).
    fn mark_ready(&self, at: Instant) {
        let Some(epoch) = self.epoch else {
            return;
        };
        let since = u64::try_from((at - epoch).as_nanos()).unwrap_or(u64::MAX - 1) + 1;
        let _ = self
            .ready_since
            .compare_exchange(0, since, Ordering::AcqRel, Ordering::Acquire);
    }

    /// How long the future has been ready to run, at `now`; it no longer is.
    fn take_ready_since(&self, now: Instant) -> Duration {
        let Some(epoch) = self.epoch else {
            return Duration::ZERO;
        };
        match self.ready_since.swap(0, Ordering::AcqRel) {
            0 => Duration::ZERO,
            since => (now - epoch).saturating_sub(Duration::from_nanos(since - 1)),
        }
    }

    fn set_task_waker(&self, waker: &Waker) {
        let mut task = self.task.lock().unwrap_or_else(|e| e.into_inner());
        if !task
            .as_ref()
            .is_some_and(|current| current.will_wake(waker))
        {
            *task = Some(waker.clone());
        }
    }
}

impl Wake for SelfWakeDetector {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.in_poll.load(Ordering::SeqCst) {
            self.self_woken.store(true, Ordering::SeqCst);
            // A wake from another thread can race with the end of the poll:
            // if the poll has ended by now, it may already have read
            // `self_woken`, so wake the task directly. At worst the task is
            // woken twice, or takes one extra yield; it is never lost.
            if self.in_poll.load(Ordering::SeqCst) {
                return;
            }
        }
        if self.epoch.is_some() {
            self.mark_ready(Instant::now());
        }
        if let Some(task) = self.task.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            task.wake_by_ref();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A future that yields `n` times the way wasmtime does, then finishes.
    struct SelfWaking(usize);

    impl Future for SelfWaking {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.0 == 0 {
                return Poll::Ready(());
            }
            self.0 -= 1;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    /// Runs a guest-like future that yields ten times next to a task that
    /// counts, both on one worker thread; returns how far the counter got
    /// while the guest was still running.
    async fn progress_during_guest(wrap: bool) -> usize {
        let progress = Arc::new(AtomicUsize::new(0));
        let counter = progress.clone();
        let guest_done = Arc::new(AtomicBool::new(false));
        let done = guest_done.clone();
        let other = tokio::spawn(async move {
            while !done.load(Ordering::SeqCst) {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::task::yield_now().await;
            }
        });
        let observer = progress.clone();
        let guest = async move {
            for _ in 0..10 {
                SelfWaking(1).await;
            }
            let seen = observer.load(Ordering::SeqCst);
            guest_done.store(true, Ordering::SeqCst);
            seen
        };
        let seen = if wrap {
            tokio::spawn(Fair::new(guest, FairShare::for_workers(1)))
                .await
                .unwrap()
        } else {
            tokio::spawn(guest).await.unwrap()
        };
        other.await.unwrap();
        seen
    }

    /// A guest-like future that spins 1 ms per poll, 40 times, and counts
    /// how many such futures spin at once once past their first 15 ms
    /// (well into the long-running phase).
    struct Spinning {
        slices_done: usize,
        long_running_now: Arc<AtomicUsize>,
        most_at_once: Arc<AtomicUsize>,
    }

    impl Future for Spinning {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            let long = self.slices_done >= 15;
            if long {
                let now = self.long_running_now.fetch_add(1, Ordering::SeqCst) + 1;
                self.most_at_once.fetch_max(now, Ordering::SeqCst);
            }
            let started = Instant::now();
            while started.elapsed() < Duration::from_millis(1) {
                std::hint::spin_loop();
            }
            if long {
                self.long_running_now.fetch_sub(1, Ordering::SeqCst);
            }
            self.slices_done += 1;
            if self.slices_done == 40 {
                return Poll::Ready(());
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    async fn most_long_running_at_once(wrap: bool) -> usize {
        let share = FairShare::for_workers(3);
        let long_running_now = Arc::new(AtomicUsize::new(0));
        let most_at_once = Arc::new(AtomicUsize::new(0));
        let guests: Vec<_> = (0..3)
            .map(|_| {
                let guest = Spinning {
                    slices_done: 0,
                    long_running_now: long_running_now.clone(),
                    most_at_once: most_at_once.clone(),
                };
                if wrap {
                    tokio::spawn(Fair::new(guest, share.clone()))
                } else {
                    tokio::spawn(guest)
                }
            })
            .collect();
        for guest in guests {
            guest.await.unwrap();
        }
        most_at_once.load(Ordering::SeqCst)
    }

    /// How long a guest that yields ten times waited to run, on a
    /// one-thread runtime where `competitor` spins 2 ms per poll meanwhile,
    /// and how long one that sleeps 50 ms waited.
    async fn ready_waits(competitor: bool) -> (Duration, Duration) {
        let done = Arc::new(AtomicBool::new(false));
        let spinner = competitor.then(|| {
            let done = done.clone();
            tokio::spawn(async move {
                while !done.load(Ordering::SeqCst) {
                    let started = Instant::now();
                    while started.elapsed() < Duration::from_millis(2) {
                        std::hint::spin_loop();
                    }
                    tokio::task::yield_now().await;
                }
            })
        });
        let yielding = tokio::spawn(async move {
            let mut guest = Box::pin(Fair::measuring(
                async {
                    for _ in 0..10 {
                        SelfWaking(1).await;
                    }
                },
                FairShare::for_workers(1),
            ));
            (&mut guest).await;
            done.store(true, Ordering::SeqCst);
            guest.ready_wait()
        });
        let yielded = yielding.await.unwrap();
        if let Some(spinner) = spinner {
            spinner.await.unwrap();
        }
        let sleeping = tokio::spawn(async {
            let mut guest = Box::pin(Fair::measuring(
                tokio::time::sleep(Duration::from_millis(50)),
                FairShare::for_workers(1),
            ));
            (&mut guest).await;
            guest.ready_wait()
        });
        (yielded, sleeping.await.unwrap())
    }

    #[tokio::test(flavor = "current_thread")]
    async fn ready_wait_counts_turns_given_to_others_and_not_sleep() {
        let (alone, slept) = ready_waits(false).await;
        let (crowded, _) = ready_waits(true).await;
        // Each of the ten yields let the spinner run a 2 ms slice.
        assert!(crowded >= Duration::from_millis(20), "{crowded:?}");
        assert!(crowded > alone, "crowded {crowded:?}, alone {alone:?}");
        assert!(slept < Duration::from_millis(50), "slept {slept:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 3)]
    async fn long_running_guests_never_hold_every_worker() {
        let with_share = most_long_running_at_once(true).await;
        let without = most_long_running_at_once(false).await;
        assert!(
            with_share <= 2,
            "{with_share} long-running guests ran at once on 3 workers (without the share: {without})"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_yielding_guest_lets_another_task_run_between_its_yields() {
        let with_fair = progress_during_guest(true).await;
        let without = progress_during_guest(false).await;
        assert!(
            with_fair >= 9,
            "the other task ran {with_fair} times during 10 guest yields (without Fair: {without})"
        );
    }
}
