//! WASIp3 components (`wasi:http/handler@0.3.x`, component-model async) in
//! the async lane.
//!
//! A WASIp3 guest can serve several requests at once, so instances are
//! reused: one instance runs up to `--max-concurrent-reuse` calls at a time
//! and serves up to `--instance-reuse` calls (default 128, or 1000 for a
//! component with a large initial memory, `exec/reuse.rs`) before it is
//! replaced; the lane makes only the instances its calls in flight need
//! (`exec/p3_budget.rs`); an instance that trapped is dropped with every
//! call it was running. wasmtime-wasi-http's `ProxyHandler` schedules requests onto
//! instances; this module supplies the policy (how many calls, how long)
//! and the store.
//!
//! Fairness: the store's fuel yields happen inside `ProxyHandler`'s own
//! tasks, which fnhost cannot wrap with [`super::fair::Fair`], so the
//! engine also ticks epochs and every tick is a real yield
//! ([`super::async_lane::yield_on_epochs`]). A guest that holds its own
//! event loop (an `async` call that never awaits) stalls only the calls on
//! its instance: [`super::stall`] notices it and new calls go to other
//! instances.
//!
//! Known limits, compared with WASIp2 guests: guest stdout lines carry the id of the instance's
//! most recent call (calls share the instance); a failure that cannot be
//! traced to one call (a trap during concurrent calls, a memory limit) fails
//! every call on that instance with `trap`.

use super::p3_budget::{BudgetSlot, InstanceBudget, NoRoom};
use super::stall::{GuestClock, StallWatch};
use super::state::StoreState;
use super::{ExecSettings, body_error_to_wasi, classify, host_response, new_state};
use crate::component::one_line;
use crate::config::Origin;
use crate::invocation::{
    Dispatch, DispatchResult, FailureKind, HttpInvocation, InvocationError, InvocationId,
};
use http_body_util::BodyExt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use wasmtime::component::GuestTaskId;
use wasmtime::{Store, StoreContextMut};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::handler::{
    ExpirationError, HandlerState, Instance, InstantiationError, ProxyHandler, ProxyPre,
    ShouldAccept, TrapOrPanicError, WorkerExpiration, WorkerState, WorkerStatus,
};
use wasmtime_wasi_http::p3::bindings::ServicePre;

/// How long an idle WASIp3 instance is kept for the next request.
pub const IDLE_INSTANCE_TIMEOUT: Duration = Duration::from_secs(1);
/// Most WASIp3 calls in flight (running or waiting for an instance); beyond,
/// 503 `capacity`. `ProxyHandler` itself queues without bound.
pub const MAX_IN_FLIGHT: usize = 4096;

/// Runs WASIp3 invocations on reused, concurrent instances.
pub struct P3Lane {
    handler: ProxyHandler<P3Instances>,
    budget: Arc<InstanceBudget>,
}

impl P3Lane {
    /// A lane instantiating `pre` as requests need instances, each serving
    /// up to `reuse` calls; with `budget`, only as many instances as the
    /// calls in flight need (for a component whose instances are expensive).
    pub fn new(
        pre: ServicePre<StoreState>,
        settings: ExecSettings,
        reuse: u32,
        budget: bool,
    ) -> Self {
        let budget = if budget {
            InstanceBudget::new(
                MAX_IN_FLIGHT,
                settings.execution.max_concurrent_reuse as usize,
                super::async_lane::tokio_workers(),
            )
        } else {
            InstanceBudget::unlimited(MAX_IN_FLIGHT)
        };
        Self {
            handler: ProxyHandler::new(P3Instances {
                engine: pre.engine().clone(),
                pre: ProxyPre::P3(pre),
                outbound: settings.grants.outbound.clone().into(),
                settings,
                reuse: reuse as usize,
                watch: StallWatch::start(),
                budget: budget.clone(),
            }),
            budget,
        }
    }
}

impl Dispatch for P3Lane {
    fn dispatch_http(
        &self,
        invocation: HttpInvocation,
    ) -> Pin<Box<dyn Future<Output = DispatchResult> + Send + 'static>> {
        let handler = self.handler.clone();
        let budget = self.budget.clone();
        let timeout = handler.state().settings.limits.timeout;
        let permit = self.budget.in_flight.clone().try_acquire_owned();
        Box::pin(async move {
            let Ok(_permit) = permit else {
                return Err(InvocationError::new(
                    FailureKind::Capacity,
                    format!("{MAX_IN_FLIGHT} WASIp3 calls already in flight"),
                ));
            };
            let HttpInvocation { id, request } = invocation;
            let mut request = request.map(|body| body.map_err(body_error_to_wasi).boxed_unsync());
            // A call the budget made no instance for comes back untouched
            // and is offered again once an instance may take it.
            let served = async {
                let mut offers = 0;
                loop {
                    match handler.handle(id, request).await {
                        Err(error) => match given_back(error) {
                            Ok(back) => {
                                request = back;
                                budget.wait_for_room(offers).await;
                                offers += 1;
                            }
                            Err(error) => break Err(error),
                        },
                        answered => break answered,
                    }
                }
            };
            let deadline = tokio::time::Instant::now() + timeout;
            match tokio::time::timeout_at(deadline, served).await {
                Ok(Ok(response)) => Ok(host_response(response)),
                Ok(Err(error)) => Err(failure_of(
                    &error,
                    tokio::time::Instant::now() >= deadline,
                    timeout,
                )),
                Err(_) => Err(ran_past(timeout, None)),
            }
        })
    }
}

/// The request of a call that no instance was made for because the budget
/// had no room ([`NoRoom`]); any other error as it was.
fn given_back(
    error: wasmtime::Error,
) -> Result<wasmtime_wasi_http::handler::Request, wasmtime::Error> {
    let no_room = error
        .downcast_ref::<InstantiationError<InvocationId>>()
        .is_some_and(|failed| failed.error.downcast_ref::<NoRoom>().is_some());
    if !no_room {
        return Err(error);
    }
    let failed = error.downcast::<InstantiationError<InvocationId>>()?;
    Ok(failed
        .request
        .into_inner()
        .unwrap_or_else(|poisoned| poisoned.into_inner()))
}

/// The failure a call that ended with `error` gets. The instance's own
/// timers (its instantiation's timeout, and its expiry, which ends the
/// instance and reaches the call as a lost instance) have the call's timeout
/// as their length and start a little after the call's deadline was set;
/// whether one of them or the deadline is seen first is up to the scheduler,
/// so an error seen `past_deadline` is the call running out of time.
fn failure_of(error: &wasmtime::Error, past_deadline: bool, timeout: Duration) -> InvocationError {
    let failure = classify_p3(error);
    if past_deadline {
        ran_past(timeout, Some(&failure))
    } else {
        failure
    }
}

/// A timeout, with what the call ended with instead, if anything.
fn ran_past(timeout: Duration, instead: Option<&InvocationError>) -> InvocationError {
    let millis = timeout.as_millis();
    InvocationError::new(
        FailureKind::Timeout,
        match instead {
            Some(failure) => format!("ran past its {millis} ms timeout ({})", failure.detail),
            None => format!("ran past its {millis} ms timeout"),
        },
    )
}

fn classify_p3(error: &wasmtime::Error) -> InvocationError {
    if error.downcast_ref::<ExpirationError>().is_some() {
        InvocationError::new(FailureKind::Timeout, "ran past its timeout")
    } else if error.downcast_ref::<TrapOrPanicError>().is_some() {
        InvocationError::new(
            FailureKind::Trap,
            "the instance trapped while running this call",
        )
    } else if let Some(failed) = error.downcast_ref::<InstantiationError<InvocationId>>() {
        let kind = if failed
            .error
            .downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
            .is_some()
        {
            FailureKind::Capacity
        } else {
            FailureKind::Trap
        };
        InvocationError::new(
            kind,
            format!("cannot instantiate: {}", one_line(&failed.to_string())),
        )
    } else {
        classify(error, false)
    }
}

/// Creates instances for the handler.
struct P3Instances {
    pre: ProxyPre<StoreState>,
    engine: wasmtime::Engine,
    settings: ExecSettings,
    outbound: Arc<[Origin]>,
    reuse: usize,
    watch: Arc<StallWatch>,
    budget: Arc<InstanceBudget>,
}

impl HandlerState for P3Instances {
    type StoreData = StoreState;
    type WorkerExpiration = Expiry;
    type WorkerState = Reuse;

    async fn instantiate(&self) -> wasmtime::Result<Instance<StoreState, Expiry, Reuse>> {
        let slot = self.budget.reserve()?;
        let state = new_state(&self.settings, &self.outbound).map_err(wasmtime::Error::msg)?;
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limiter);
        let execution = &self.settings.execution;
        store.set_fuel(execution.max_fuel.unwrap_or(u64::MAX))?;
        store.fuel_async_yield_interval(Some(execution.yield_fuel))?;
        let stalled = slot.clone();
        let clock = GuestClock::new(
            self.settings.function.clone(),
            self.settings.profile.clone(),
            move || stalled.leave(),
        );
        self.watch.register(&clock);
        super::async_lane::yield_on_epochs(&mut store, clock.clone());
        let hook = clock.clone();
        store.call_hook(move |_, transition| {
            hook.transition(transition);
            Ok(())
        });
        let timeout = self.settings.limits.timeout;
        let proxy = tokio::time::timeout(timeout, self.pre.instantiate_async(&mut store))
            .await
            .map_err(|_| wasmtime::Error::msg("instantiation ran past the timeout"))??;
        Ok(Instance {
            store,
            proxy,
            view: StoreState::http,
            expiration: Expiry {
                request_timeout: timeout,
                sleep: Box::pin(tokio::time::sleep(Duration::MAX)),
            },
            state: Reuse {
                max_concurrent: execution.max_concurrent_reuse as usize,
                max_total: self.reuse,
                request_timeout: timeout,
                clock,
                slot,
            },
        })
    }
}

/// When an instance should go: idle too long, or a call past its timeout.
struct Expiry {
    request_timeout: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl WorkerExpiration for Expiry {
    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        status: WorkerStatus,
        start: Instant,
    ) -> Poll<()> {
        let limit = match status {
            WorkerStatus::Idle => IDLE_INSTANCE_TIMEOUT,
            WorkerStatus::Requests | WorkerStatus::PostReturn => self.request_timeout,
        };
        let Some(deadline) = start.checked_add(limit) else {
            return Poll::Pending;
        };
        let deadline = tokio::time::Instant::from_std(deadline);
        if self.sleep.deadline() != deadline {
            self.sleep.as_mut().reset(deadline);
        }
        self.sleep.as_mut().poll(cx)
    }
}

/// How many calls an instance takes, at once and in all, whether its
/// guest is holding its event loop, and its place in the lane's budget.
struct Reuse {
    max_concurrent: usize,
    max_total: usize,
    request_timeout: Duration,
    clock: Arc<GuestClock>,
    slot: Arc<BudgetSlot>,
}

impl WorkerState for Reuse {
    type StoreData = StoreState;
    type RequestData = InvocationId;

    fn should_accept_request(&self, concurrent_count: usize, total_count: usize) -> ShouldAccept {
        if total_count >= self.max_total {
            self.slot.leave();
            ShouldAccept::Never
        } else if self.clock.stalled() || concurrent_count >= self.max_concurrent {
            // (A stalled instance's watchdog has let it go from the budget.)
            ShouldAccept::No
        } else {
            self.slot.may_take_calls();
            ShouldAccept::Yes
        }
    }

    fn on_request_start(
        &self,
        mut store: StoreContextMut<'_, StoreState>,
        id: InvocationId,
        _task: GuestTaskId,
    ) -> Pin<Box<dyn Future<Output = ()> + 'static + Send + Sync>> {
        // Calls running at once share the store: the output budget starts
        // again only when this call is the instance's only one.
        store.data_mut().begin_shared(id, self.clock.idle());
        let call = (self.clock.call_started(id), self.slot.hold_call());
        let (timeout, slot) = (self.request_timeout, self.slot.clone());
        Box::pin(async move {
            let _call = call;
            tokio::time::sleep(timeout).await;
            // The call ran past its timeout: the handler takes no more
            // calls on this instance, nor asks it again.
            slot.leave();
        })
    }

    fn drop(&self, store: Store<StoreState>, result: Result<(), wasmtime::Error>) {
        // The calls it was running have been answered and logged with their
        // ids already; this is the instance's side of the story. Instances
        // still alive when the host exits end here too, hence debug level.
        if let Err(error) = result {
            let memory = store.data().limiter.exceeded();
            tracing::debug!(
                "a WASIp3 instance ended with an error{}: {}",
                if memory { " (memory limit)" } else { "" },
                one_line(&error)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(1);

    #[test]
    fn an_instance_lost_past_the_deadline_is_a_timeout_and_before_it_a_trap() {
        let lost = wasmtime::Error::new(TrapOrPanicError);
        assert_eq!(failure_of(&lost, true, TIMEOUT).kind, FailureKind::Timeout);
        assert_eq!(failure_of(&lost, false, TIMEOUT).kind, FailureKind::Trap);
    }

    #[test]
    fn an_instantiation_that_timed_out_past_the_deadline_is_a_timeout() {
        let failed = wasmtime::Error::msg("instantiation ran past the timeout");
        let timed_out = failure_of(&failed, true, TIMEOUT);
        assert_eq!(timed_out.kind, FailureKind::Timeout);
        assert!(
            timed_out.detail.contains("ran past its 1000 ms timeout"),
            "{}",
            timed_out.detail
        );
        assert!(
            timed_out.detail.contains("instantiation"),
            "{}",
            timed_out.detail
        );
        assert_eq!(failure_of(&failed, false, TIMEOUT).kind, FailureKind::Trap);
    }
}
