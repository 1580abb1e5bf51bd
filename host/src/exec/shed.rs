//! Load shedding that keeps latency: an adaptive limit on the calls one
//! function runs at once in this process, driven by how long its calls
//! wait for the machine (Azure's dynamic concurrency, done by feedback).
//!
//! A call's time splits in two, and the lanes measure both:
//! - **waiting**: ready to run but not running, because of load (in the
//!   sync lane, queued for a thread; in the async lane, from its spawn or
//!   a wake-up to its next poll, which includes waiting for a core and
//!   taking turns after a fuel yield);
//! - **service**: everything else (running, and waiting on its own I/O).
//!
//! Service does not grow with load; waiting does. So the limit needs no
//! baseline latency measured when the host was idle (which a host that
//! starts under overload never sees): it compares the two, every
//! [`WINDOW`] with at least [`MIN_CALLS`] calls finished (or ten windows,
//! for calls so slow that fewer finish).
//! - Waiting more than [`TOLERANCE`] of service, on average: the limit
//!   becomes the calls that were in flight (by Little's law, their
//!   summed time over the window) scaled by `(1 + TOLERANCE) / (1 + waiting
//!   / service)`, never less than half of it at once, nor below
//!   [`MIN_LIMIT`].
//! - Otherwise, if calls came near the limit: it grows by a tenth (at
//!   least one), back to no limit at [`UNLIMITED_FROM`].
//!
//! Beyond the limit a call is refused at once with 503 `capacity` and
//! `Retry-After`, so the calls admitted keep about the latency of an
//! unloaded host (mean wait at most a quarter of the service time). The WASIp3
//! lane runs calls in wasmtime's own tasks, where fnhost cannot see their
//! wake-ups: it is not limited.

use super::profile::nanos;
use crate::invocation::{
    Dispatch, DispatchResult, FailureKind, HttpInvocation, InvocationError, hold_until_body_ends,
};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the limit is reconsidered.
pub const WINDOW: Duration = Duration::from_millis(100);
/// Calls a window needs before it says anything.
pub const MIN_CALLS: u64 = 8;
/// Mean waiting, as a part of mean service, above which the limit falls.
pub const TOLERANCE: f64 = 0.25;
/// The limit never falls below this many calls.
pub const MIN_LIMIT: usize = 1;
/// A limit grown to this many calls is no limit.
pub const UNLIMITED_FROM: usize = 4096;

/// One function's adaptive limit in one process.
#[derive(Debug)]
pub struct Shedder {
    limit: AtomicUsize,
    in_flight: AtomicUsize,
    /// The most calls in flight since the window began (kept outside the
    /// window's lock, so that no admission's count is lost to contention).
    peak_in_flight: AtomicUsize,
    window: Mutex<Window>,
}

/// What finished calls measured since the window began.
#[derive(Debug)]
struct Window {
    started: Instant,
    calls: u64,
    waiting_ns: u64,
    service_ns: u64,
    /// The most calls in flight in it, filled in when it is judged.
    peak_in_flight: usize,
}

impl Window {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            calls: 0,
            waiting_ns: 0,
            service_ns: 0,
            peak_in_flight: 0,
        }
    }
}

impl Default for Shedder {
    fn default() -> Self {
        Self {
            limit: AtomicUsize::new(UNLIMITED_FROM),
            in_flight: AtomicUsize::new(0),
            peak_in_flight: AtomicUsize::new(0),
            window: Mutex::new(Window::new()),
        }
    }
}

/// A call admitted; it leaves the count when dropped.
#[must_use = "the call counts as in flight while this lives"]
pub struct Admitted(Arc<Shedder>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Shedder {
    /// Admits a call, or refuses it (`Err` carries the limit) when as many
    /// as the limit are in flight.
    pub fn admit(self: &Arc<Self>) -> Result<Admitted, usize> {
        let limit = self.limit.load(Ordering::Relaxed);
        if limit >= UNLIMITED_FROM {
            let now = self.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
            self.note_in_flight(now);
            return Ok(Admitted(self.clone()));
        }
        match self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            }) {
            Ok(before) => {
                self.note_in_flight(before + 1);
                Ok(Admitted(self.clone()))
            }
            Err(_) => Err(limit),
        }
    }

    fn note_in_flight(&self, now: usize) {
        self.peak_in_flight.fetch_max(now, Ordering::Relaxed);
    }

    /// Counts a finished call: how long it waited because of load, and the
    /// rest of its time.
    pub fn record(&self, waiting: Duration, service: Duration) {
        let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        window.calls += 1;
        window.waiting_ns += nanos(waiting);
        window.service_ns += nanos(service);
        let length = window.started.elapsed();
        // Slow calls may never fill a window: after ten, judge what came.
        if length < WINDOW || (window.calls < MIN_CALLS && length < WINDOW * 10) {
            return;
        }
        // The next window starts from the calls in flight now: calls
        // longer than a window keep it at its peak without a new admission.
        let in_flight_now = self.in_flight.load(Ordering::Relaxed);
        window.peak_in_flight = self.peak_in_flight.swap(in_flight_now, Ordering::Relaxed);
        let old = self.limit.load(Ordering::Relaxed);
        let new = next_limit(old, &window, length);
        *window = Window::new();
        drop(window);
        if new != old {
            self.limit.store(new, Ordering::Relaxed);
            match (old >= UNLIMITED_FROM, new >= UNLIMITED_FROM) {
                (true, false) => tracing::info!(
                    "calls wait for the machine more than {:.0}% of their service time: at most {new} at once from now on, the rest get 503",
                    TOLERANCE * 100.0
                ),
                (false, true) => tracing::info!("calls no longer wait: no limit on calls at once"),
                _ => tracing::debug!("calls at once: limit {old} → {new}"),
            }
        }
    }
}

/// A lane's dispatch behind its function's [`Shedder`].
pub struct Shed<D> {
    lane: D,
    shedder: Arc<Shedder>,
}

impl<D: Dispatch + 'static> Shed<D> {
    /// `lane`, admitting calls through `shedder` if there is one.
    pub fn wrap(lane: D, shedder: Option<Arc<Shedder>>) -> Arc<dyn Dispatch> {
        match shedder {
            Some(shedder) => Arc::new(Self { lane, shedder }),
            None => Arc::new(lane),
        }
    }
}

impl<D: Dispatch> Dispatch for Shed<D> {
    fn dispatch_http(
        &self,
        invocation: HttpInvocation,
    ) -> Pin<Box<dyn Future<Output = DispatchResult> + Send + 'static>> {
        match self.shedder.admit() {
            Ok(admitted) => {
                let call = self.lane.dispatch_http(invocation);
                // The call counts until its response body ends: the guest
                // may still be writing it.
                Box::pin(async move { Ok(hold_until_body_ends(call.await?, admitted)) })
            }
            Err(limit) => Box::pin(std::future::ready(Err(InvocationError::new(
                FailureKind::Capacity,
                format!(
                    "{limit} calls at once while its calls wait for the machine (load shedding)"
                ),
            )))),
        }
    }
}

/// The control law (module doc) for one window of `length`.
fn next_limit(limit: usize, window: &Window, length: Duration) -> usize {
    let ratio = window.waiting_ns as f64 / window.service_ns.max(1) as f64;
    if ratio > TOLERANCE {
        // Little's law: calls in flight on average over the window.
        let in_flight =
            (window.waiting_ns + window.service_ns) as f64 / length.as_nanos().max(1) as f64;
        let base = in_flight.min(limit as f64);
        let scaled = base * (1.0 + TOLERANCE) / (1.0 + ratio);
        let floor = (base / 2.0).floor();
        return (scaled.max(floor).floor() as usize).clamp(MIN_LIMIT, UNLIMITED_FROM);
    }
    if limit < UNLIMITED_FROM && window.peak_in_flight * 10 >= limit * 9 {
        return (limit + (limit / 10).max(1)).min(UNLIMITED_FROM);
    }
    limit
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(calls: u64, waiting_ms: f64, service_ms: f64, peak: usize) -> Window {
        Window {
            started: Instant::now(),
            calls,
            waiting_ns: (calls as f64 * waiting_ms * 1e6) as u64,
            service_ns: (calls as f64 * service_ms * 1e6) as u64,
            peak_in_flight: peak,
        }
    }

    #[test]
    fn an_overloaded_function_gets_a_limit_from_what_was_in_flight() {
        // 2 cores, 5 ms calls, 40 in flight: each waits 95 ms. 40 calls
        // finish per 100 ms window; 4,000 ms of call time in it.
        let w = window(40, 95.0, 5.0, 40);
        let limit = next_limit(UNLIMITED_FROM, &w, WINDOW);
        // Half of the 40 at once (the most it falls in one window).
        assert_eq!(limit, 20);
        // Still waiting 3× the service at 8 in flight (20 calls of 20 ms).
        let w = window(40, 15.0, 5.0, 8);
        assert_eq!(next_limit(8, &w, WINDOW), 4);
        // At 3 in flight they wait 1 ms for 5 ms of service: in bounds,
        // and the limit was reached, so it grows.
        let w = window(40, 1.0, 5.0, 3);
        assert_eq!(next_limit(3, &w, WINDOW), 4);
    }

    #[test]
    fn calls_that_wait_on_their_own_io_are_never_limited() {
        // 200 calls sleeping 50 ms each, hardly any waiting for a core.
        let w = window(400, 0.2, 50.0, 200);
        assert_eq!(next_limit(UNLIMITED_FROM, &w, WINDOW), UNLIMITED_FROM);
    }

    #[test]
    fn a_limit_not_reached_stays_and_one_reached_grows_back_to_none() {
        let w = window(40, 0.1, 5.0, 2);
        assert_eq!(next_limit(10, &w, WINDOW), 10);
        let mut limit = 10;
        for _ in 0..200 {
            limit = next_limit(limit, &window(40, 0.1, 5.0, limit), WINDOW);
        }
        assert_eq!(limit, UNLIMITED_FROM);
    }

    #[test]
    fn the_limit_refuses_beyond_it_and_frees_a_place_when_a_call_ends() {
        let shedder = Arc::new(Shedder::default());
        shedder.limit.store(2, Ordering::Relaxed);
        let first = shedder.admit().expect("first");
        let _second = shedder.admit().expect("second");
        assert_eq!(shedder.admit().err(), Some(2));
        drop(first);
        assert!(shedder.admit().is_ok());
    }

    #[test]
    fn a_limit_held_full_by_calls_longer_than_a_window_grows_in_each_window() {
        // Ten calls admitted once and still running: every window after
        // the first admits nothing new, yet the limit is reached in it.
        let shedder = Arc::new(Shedder::default());
        shedder.limit.store(10, Ordering::Relaxed);
        let _running: Vec<_> = (0..10).map(|_| shedder.admit().unwrap()).collect();
        for expected in [11, 12] {
            std::thread::sleep(WINDOW + Duration::from_millis(5));
            for _ in 0..MIN_CALLS {
                shedder.record(Duration::ZERO, Duration::from_millis(5));
            }
            assert_eq!(shedder.limit.load(Ordering::Relaxed), expected);
        }
    }
}
