//! How many WASIp3 instances a lane keeps taking calls: as many as its calls
//! in flight need, not one per call of a burst.
//!
//! wasmtime-wasi-http's `ProxyHandler` makes a new instance whenever no
//! instance is ready to take a call at that moment, and an instance running
//! guest code is not. A burst on a busy host finds every instance busy, so
//! each call of it made its own: the fanout example at 500 connections (a
//! Python `async def` awaiting 50 ms) grew to 200-460 instances of up to 16
//! calls each, 1.5-4 GB resident, and with `--worker-memory 1GiB` half its
//! calls failed to instantiate. Those instances then stay, each taking a
//! call now and then.
//!
//! So a lane holds an instance budget: the instances still taking calls
//! stay within what its calls fill (`--max-concurrent-reuse` per instance;
//! the calls are those in flight, or those the instances hold if more:
//! a call whose client left runs on) plus one per runtime thread (about
//! the instances busy running guest code, and so not taking calls, at any
//! moment; on a saturated host more wait at a yield, and their calls wait
//! with them). An instance beyond it is not made: its call goes back to the
//! lane, which waits until an instance may take it
//! ([`InstanceBudget::wait_for_room`]) and offers it again. An instance
//! leaves the budget when it stops taking calls for good (its reuse count
//! is spent, a call ran past its timeout), when its guest is found holding
//! its event loop (a stall; should it recover, it serves on outside the
//! budget), or when it is dropped.
//!
//! Only where instances are expensive: a component whose initial memory is
//! large (CPython's 12-14 MiB image, the line of `exec/reuse.rs`). A small
//! Rust instance is made in microseconds and costs a few hundred KiB, less
//! than handing calls back: with the budget, the `hello-p3` example at 64
//! connections ran at 0.8x its rate without one, so its lane is
//! [`InstanceBudget::unlimited`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};

/// Longest first wait for an instance before a call is offered again
/// anyway: a guard against a missed wake-up, not the usual path (an
/// instance that may take a call, or leaves the budget, wakes a waiting
/// call). It doubles with each offer of the same call, up to
/// [`RECHECK_AT_MOST`], so a long backlog does not re-offer itself
/// thousands of times a second.
const RECHECK_AFTER: Duration = Duration::from_millis(20);
const RECHECK_AT_MOST: Duration = Duration::from_millis(320);

/// The instances a WASIp3 lane keeps taking calls, and its calls in flight.
pub struct InstanceBudget {
    /// Calls in flight (running or waiting for an instance), one permit each.
    pub in_flight: Arc<Semaphore>,
    max_in_flight: usize,
    per_instance: usize,
    /// Instances beyond what the calls fill; `None`: no limit.
    spare: Option<usize>,
    taking: AtomicUsize,
    held: AtomicUsize,
    waiting: AtomicUsize,
    room: Notify,
}

/// Why an instance was not made: the lane's instances can take the calls in
/// flight. The call goes back to the lane, which offers it again.
#[derive(Debug)]
pub struct NoRoom;

impl std::fmt::Display for NoRoom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the instances taking calls are enough for the calls in flight")
    }
}

impl std::error::Error for NoRoom {}

impl InstanceBudget {
    /// A budget for up to `max_in_flight` calls at once, `per_instance` on
    /// one instance, with `spare` instances beyond what the calls fill.
    pub fn new(max_in_flight: usize, per_instance: usize, spare: usize) -> Arc<Self> {
        Self::build(max_in_flight, per_instance, Some(spare))
    }

    /// Up to `max_in_flight` calls at once, on as many instances as the
    /// handler makes.
    pub fn unlimited(max_in_flight: usize) -> Arc<Self> {
        Self::build(max_in_flight, 1, None)
    }

    fn build(max_in_flight: usize, per_instance: usize, spare: Option<usize>) -> Arc<Self> {
        Arc::new(Self {
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
            per_instance: per_instance.max(1),
            spare,
            taking: AtomicUsize::new(0),
            held: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            room: Notify::new(),
        })
    }

    /// Instances the calls in flight need now.
    fn wanted(&self) -> usize {
        let Some(spare) = self.spare else {
            return usize::MAX;
        };
        let in_flight = self.max_in_flight - self.in_flight.available_permits();
        let calls = in_flight.max(self.held.load(Ordering::Acquire));
        calls.div_ceil(self.per_instance) + spare
    }

    /// A place for one more instance taking calls, if the calls in flight
    /// need it.
    pub fn reserve(self: &Arc<Self>) -> Result<Arc<BudgetSlot>, NoRoom> {
        let wanted = self.wanted();
        self.taking
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |taking| {
                (taking < wanted).then_some(taking + 1)
            })
            .map_err(|_| NoRoom)?;
        Ok(Arc::new(BudgetSlot {
            budget: self.clone(),
            left: AtomicBool::new(false),
        }))
    }

    /// A call an instance holds, until the guard is dropped.
    fn hold_call(self: &Arc<Self>) -> HeldCall {
        self.held.fetch_add(1, Ordering::AcqRel);
        HeldCall(self.clone())
    }

    /// Waits until an instance may take a call or one more may be made,
    /// at most [`RECHECK_AFTER`] doubled `offers` times (up to
    /// [`RECHECK_AT_MOST`]).
    pub async fn wait_for_room(&self, offers: u32) {
        let notified = self.room.notified();
        self.waiting.fetch_add(1, Ordering::AcqRel);
        let wait = RECHECK_AFTER
            .saturating_mul(1 << offers.min(4))
            .min(RECHECK_AT_MOST);
        let _ = tokio::time::timeout(wait, notified).await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
    }

    /// Wakes one call waiting for an instance, if any: one per event, so a
    /// call that finds no instance after all waits again without waking
    /// the others for nothing.
    fn wake(&self) {
        if self.waiting.load(Ordering::Acquire) > 0 {
            self.room.notify_one();
        }
    }

    /// Instances taking calls now.
    #[cfg(test)]
    fn taking(&self) -> usize {
        self.taking.load(Ordering::Acquire)
    }
}

/// A call an instance holds (see [`InstanceBudget::hold_call`]).
pub struct HeldCall(Arc<InstanceBudget>);

impl Drop for HeldCall {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One instance's place in the budget, given back when it stops taking
/// calls for good or is dropped.
pub struct BudgetSlot {
    budget: Arc<InstanceBudget>,
    left: AtomicBool,
}

impl BudgetSlot {
    /// The instance takes no more calls: its place goes to a new one.
    pub fn leave(&self) {
        if !self.left.swap(true, Ordering::AcqRel) {
            self.budget.taking.fetch_sub(1, Ordering::AcqRel);
            self.budget.wake();
        }
    }

    /// A call this instance holds, counted in its budget until the guard
    /// is dropped.
    pub fn hold_call(&self) -> HeldCall {
        self.budget.hold_call()
    }

    /// The instance may take a call: wakes the calls waiting for one.
    pub fn may_take_calls(&self) {
        self.budget.wake();
    }
}

impl Drop for BudgetSlot {
    fn drop(&mut self) {
        self.leave();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_follow_the_calls_in_flight_plus_the_spares() {
        let budget = InstanceBudget::new(100, 16, 2);
        // No call in flight: the spares only.
        let spares: Vec<_> = (0..2).map(|_| budget.reserve().unwrap()).collect();
        assert!(budget.reserve().is_err());
        // 17 calls fill two instances.
        let calls = budget.in_flight.clone().try_acquire_many_owned(17).unwrap();
        let more: Vec<_> = (0..2).map(|_| budget.reserve().unwrap()).collect();
        assert!(budget.reserve().is_err());
        assert_eq!(budget.taking(), 4);
        drop(calls);
        // Fewer calls make no instance go, but none is made either.
        assert!(budget.reserve().is_err());
        drop(more);
        drop(spares);
        assert_eq!(budget.taking(), 0);
    }

    #[test]
    fn calls_held_by_instances_count_when_more_than_those_in_flight() {
        // Calls whose clients left run on, without a dispatch permit.
        let budget = InstanceBudget::new(100, 16, 0);
        assert!(budget.reserve().is_err());
        let held: Vec<_> = (0..20).map(|_| budget.hold_call()).collect();
        let two: Vec<_> = (0..2).map(|_| budget.reserve().unwrap()).collect();
        assert!(budget.reserve().is_err());
        drop(held);
        drop(two);
        assert!(budget.reserve().is_err());
    }

    #[test]
    fn an_unlimited_budget_makes_every_instance_asked_for() {
        let budget = InstanceBudget::unlimited(10);
        let slots: Vec<_> = (0..50).map(|_| budget.reserve().unwrap()).collect();
        assert_eq!(budget.taking(), 50);
        drop(slots);
        assert_eq!(budget.taking(), 0);
    }

    #[test]
    fn an_instance_that_leaves_gives_its_place_back_once() {
        let budget = InstanceBudget::new(10, 1, 1);
        let slot = budget.reserve().unwrap();
        assert!(budget.reserve().is_err());
        slot.leave();
        slot.leave();
        assert_eq!(budget.taking(), 0);
        let next = budget.reserve().unwrap();
        drop(slot);
        assert_eq!(budget.taking(), 1, "the first slot left already");
        drop(next);
    }

    #[tokio::test]
    async fn a_waiting_call_is_woken_when_an_instance_may_take_it() {
        let budget = InstanceBudget::new(10, 1, 1);
        let slot = budget.reserve().unwrap();
        let waiter = {
            let budget = budget.clone();
            tokio::spawn(async move {
                let started = tokio::time::Instant::now();
                budget.wait_for_room(0).await;
                started.elapsed()
            })
        };
        while budget.waiting.load(Ordering::Acquire) == 0 {
            tokio::task::yield_now().await;
        }
        slot.may_take_calls();
        let waited = waiter.await.unwrap();
        assert!(waited < RECHECK_AFTER, "woken, not timed out: {waited:?}");
    }
}
