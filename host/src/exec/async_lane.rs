//! The async lane: each invocation is a future on the tokio runtime.
//!
//! - The store meters fuel and yields every `--yield-fuel` units; [`Fair`]
//!   turns each yield into a real one.
//! - The deadline is a tokio timer around the whole invocation: the yields
//!   let it fire, and dropping the future drops the store mid-call.
//! - Instances are made before the requests that use them: the lane keeps
//!   a few ready (one per runtime worker), making the next one after a call
//!   has answered, and an instance serves up to the component's reuse limit
//!   (`reuse.rs`) before it is replaced. Only a burst larger than what is
//!   ready instantiates on a request's path.

use super::fair::{Fair, FairShare};
use super::reuse::{Ended, Replay, ReusePolicy};
use super::state::StoreState;
use super::{
    Answer, ExecSettings, body_error_to_wasi, call_outcome, classify, host_response, new_state,
};
use crate::component::one_line;
use crate::config::Origin;
use crate::invocation::{
    Body, Dispatch, DispatchResult, FailureKind, HttpInvocation, InvocationError, InvocationId,
};
use http_body_util::BodyExt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use wasmtime::Store;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyPre};

/// Most idle instances the lane keeps for reuse; more are dropped when
/// their call ends (each holds its linear memory: 15-30 MiB for CPython).
const MAX_IDLE: usize = 32;
/// How long an idle instance beyond the ready ones is kept.
const IDLE_EXPIRY: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs invocations as futures on the current tokio runtime.
pub struct AsyncLane {
    inner: Arc<Inner>,
}

struct Inner {
    pre: ProxyPre<StoreState>,
    settings: ExecSettings,
    outbound: Arc<[Origin]>,
    share: FairShare,
    reuse: ReusePolicy,
    /// Instances waiting for a call: fresh ones made ahead of time, and
    /// used ones that may serve again. Taken last in, first out.
    idle: Mutex<Vec<Warm>>,
    /// Fresh instances kept ready.
    ready_target: usize,
    /// Fresh instances being made for the idle list right now.
    making: AtomicUsize,
}

/// An instance and the calls it has served.
struct Warm {
    store: Store<StoreState>,
    proxy: Proxy,
    calls: u32,
    /// When it last went idle.
    idle_since: Instant,
}

impl AsyncLane {
    /// A lane serving `pre`, each instance for up to `reuse` calls. Call it
    /// inside the tokio runtime that will run the calls: it starts making
    /// the first instances there.
    pub fn new(pre: ProxyPre<StoreState>, settings: ExecSettings, reuse: u32) -> Self {
        let workers = tokio_workers();
        let inner = Arc::new(Inner {
            pre,
            outbound: settings.grants.outbound.clone().into(),
            settings,
            share: FairShare::for_workers(workers),
            reuse: ReusePolicy::new(reuse),
            idle: Mutex::new(Vec::new()),
            ready_target: workers,
            making: AtomicUsize::new(0),
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(inner.clone().make_ready());
            runtime.spawn(release_idle(Arc::downgrade(&inner)));
        }
        Self { inner }
    }
}

impl Dispatch for AsyncLane {
    fn dispatch_http(
        &self,
        invocation: HttpInvocation,
    ) -> Pin<Box<dyn Future<Output = DispatchResult> + Send + 'static>> {
        let (answer, answered) = Answer::new();
        // The guest runs in its own task: it may keep streaming the response
        // body after the head has been handed to the trigger.
        // Read only for load shedding: two clock reads a call otherwise
        // spent for nothing.
        let dispatched = self
            .inner
            .settings
            .shedder
            .is_some()
            .then(std::time::Instant::now);
        let guest = tokio::spawn(self.inner.clone().serve(invocation, answer, dispatched));
        Box::pin(async move {
            match answered.await {
                Ok(result) => result,
                Err(_) => Err(InvocationError::new(
                    FailureKind::Trap,
                    match guest.await {
                        Err(join) => format!("the invocation task failed: {join}"),
                        Ok(()) => "the invocation ended without an answer".to_string(),
                    },
                )),
            }
        })
    }
}

impl Inner {
    /// One invocation, from taking an instance to keeping instances ready
    /// for the next ones. `dispatched` (with load shedding): when the call
    /// was handed to the lane; until its task first runs it waits for the
    /// runtime, which load shedding counts.
    async fn serve(
        self: Arc<Self>,
        invocation: HttpInvocation,
        answer: Answer,
        dispatched: Option<std::time::Instant>,
    ) {
        let HttpInvocation { id, request } = invocation;
        let timeout = self.settings.limits.timeout;
        // With load shedding: the dispatch time, and the wait for this task.
        let dispatched = dispatched.map(|at| (at, at.elapsed()));
        let finished = {
            let guest = self.call(id, request, &answer);
            let mut call = std::pin::pin!(match dispatched {
                Some(_) => Fair::measuring(guest, self.share.clone()),
                None => Fair::new(guest, self.share.clone()),
            });
            let finished = tokio::time::timeout(timeout, &mut call).await;
            self.settings
                .profile
                .record(call.guest_time(), std::time::Duration::ZERO);
            if let (Some(shedder), Some((at, spawn_wait))) = (&self.settings.shedder, dispatched) {
                let waiting = spawn_wait + call.ready_wait();
                shedder.record(waiting, at.elapsed().saturating_sub(waiting));
            }
            finished
        };
        let outcome = match finished {
            Ok(outcome) => outcome,
            Err(_) => Err(InvocationError::new(
                FailureKind::Timeout,
                format!("ran past its {} ms timeout", timeout.as_millis()),
            )),
        };
        if let Err(error) = outcome {
            answer.report(id, error);
        }
        self.make_ready().await;
    }

    /// Runs the call on an instance; if it failed on a reused instance in a
    /// way that cannot have had effects, runs it once more on a fresh one.
    async fn call(
        &self,
        id: InvocationId,
        request: http::Request<Body>,
        answer: &Answer,
    ) -> Result<(), InvocationError> {
        let instance = match self.take_idle(false) {
            Some(instance) => instance,
            None => self.instantiate().await?,
        };
        let reused = instance.calls > 0;
        let (request, replay) = Replay::keep_if(reused, request);
        let ended = self.call_on(instance, id, request, answer).await;
        let failure = match ended.result {
            Ok(()) => {
                self.reuse.record(reused, None);
                self.keep(ended.instance);
                return Ok(());
            }
            Err(failure) => failure,
        };
        if answer.abandoned() {
            // The client went away while the guest answered: no evidence
            // against reuse (exec/answer.rs).
            return Err(failure);
        }
        let dirs = !self.settings.grants.dirs.is_empty();
        let answered = answer.is_answered();
        let again =
            self.reuse
                .run_again(id, reused, replay, &failure, answered, ended.outbound, dirs);
        let Some(request) = again else {
            return Err(failure);
        };
        let fresh = match self.take_idle(true) {
            Some(fresh) => fresh,
            None => self.instantiate().await?,
        };
        let ended = self.call_on(fresh, id, request, answer).await;
        match ended.result {
            Ok(()) => {
                self.reuse.confirmed_by_retry(&failure);
                self.keep(ended.instance);
                Ok(())
            }
            Err(error) => {
                self.reuse.record(false, Some(error.kind));
                Err(error)
            }
        }
    }

    /// Runs one call on `instance`.
    async fn call_on(
        &self,
        mut instance: Warm,
        id: InvocationId,
        request: http::Request<Body>,
        answer: &Answer,
    ) -> Ended<Warm> {
        let store = &mut instance.store;
        store.data_mut().begin(id);
        let budget = self.settings.execution.max_fuel.unwrap_or(u64::MAX);
        if let Err(error) = store.set_fuel(budget) {
            return Ended::failed(InvocationError::new(FailureKind::Trap, one_line(&error)));
        }
        let request = request.map(|body| body.map_err(body_error_to_wasi).boxed_unsync());
        let resources = {
            let mut http = store.data_mut().http();
            let sender = answer.clone();
            http.new_incoming_request(Scheme::Http, request)
                .and_then(|incoming| {
                    let outparam = http.new_response_outparam_from_callback(move |response| {
                        sender.send(match response {
                            Ok(response) => Ok(host_response(response)),
                            Err(code) => Err(InvocationError::new(
                                FailureKind::Trap,
                                format!("the guest answered with error code {code:?}"),
                            )),
                        });
                    })?;
                    Ok((incoming, outparam))
                })
        };
        let (incoming, outparam) = match resources {
            Ok(resources) => resources,
            Err(error) => {
                return Ended::failed(InvocationError::new(FailureKind::Trap, one_line(&error)));
            }
        };
        let result = instance
            .proxy
            .wasi_http_incoming_handler()
            .call_handle(&mut instance.store, incoming, outparam)
            .await;
        instance.calls += 1;
        let outbound = instance.store.data().outbound_requests();
        let exceeded = instance.store.data().limiter.exceeded();
        let result = call_outcome(result, answer.is_answered(), exceeded);
        Ended {
            // An instance refused memory is at its cap: not kept, even if
            // the guest coped and answered.
            instance: (result.is_ok() && !exceeded).then_some(instance),
            result,
            outbound,
        }
    }

    /// A new instance (its start code runs with the lane's fuel and yields).
    async fn instantiate(&self) -> Result<Warm, InvocationError> {
        let mut store = new_async_store(self.pre.engine(), &self.settings, &self.outbound)?;
        match self.pre.instantiate_async(&mut store).await {
            Ok(proxy) => Ok(Warm {
                store,
                proxy,
                calls: 0,
                idle_since: Instant::now(),
            }),
            Err(error) => Err(classify(&error, store.data().limiter.exceeded())),
        }
    }

    /// An idle instance that may still serve a call (reuse may have
    /// stopped since it was put back), the newest first; only a fresh one
    /// when `fresh`.
    fn take_idle(&self, fresh: bool) -> Option<Warm> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if fresh {
            // `remove` keeps the rest oldest first, as `release_idle` reads it.
            let index = idle.iter().rposition(|instance| instance.calls == 0)?;
            return Some(idle.remove(index));
        }
        let limit = self.reuse.limit();
        // Used ones put back before reuse stopped are dropped on the way.
        std::iter::from_fn(|| idle.pop()).find(|instance| instance.calls < limit)
    }

    /// Puts an instance that served a call back, if it may serve another.
    fn keep(&self, instance: Option<Warm>) {
        let Some(mut instance) = instance else { return };
        if instance.calls >= self.reuse.limit() {
            return;
        }
        instance.idle_since = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(instance);
        }
    }

    /// Makes fresh instances until `ready_target` wait idle. A failure is
    /// left for the next request to meet (and report) on its own path.
    async fn make_ready(self: Arc<Self>) {
        loop {
            {
                // Counted under the lock, so concurrent calls ending together
                // make only what is missing.
                let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
                if idle.len() + self.making.load(Ordering::Relaxed) >= self.ready_target {
                    return;
                }
                self.making.fetch_add(1, Ordering::Relaxed);
            }
            let made = Fair::new(self.instantiate(), self.share.clone());
            let made = tokio::time::timeout(self.settings.limits.timeout, made).await;
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            self.making.fetch_sub(1, Ordering::Relaxed);
            match made {
                Ok(Ok(instance)) if idle.len() < MAX_IDLE => idle.push(instance),
                _ => return,
            }
        }
    }
}

/// Every second, drops the idle instances beyond the ready ones that have
/// waited [`IDLE_EXPIRY`]: a burst leaves up to [`MAX_IDLE`] behind, each
/// holding its memory. Ends with the lane.
async fn release_idle(lane: std::sync::Weak<Inner>) {
    let mut ticks = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        ticks.tick().await;
        let Some(lane) = lane.upgrade() else { return };
        let mut idle = lane.idle.lock().unwrap_or_else(|e| e.into_inner());
        // Oldest first; the newest `ready_target` stay whatever their age.
        let keep_from = idle.len().saturating_sub(lane.ready_target);
        let mut index = 0;
        idle.retain(|instance| {
            index += 1;
            index > keep_from || instance.idle_since.elapsed() < IDLE_EXPIRY
        });
    }
}

/// A store for async-lane calls: fuel metered, yielding every
/// `--yield-fuel` units, within `--max-fuel` if set.
pub(super) fn new_async_store(
    engine: &wasmtime::Engine,
    settings: &ExecSettings,
    outbound: &Arc<[Origin]>,
) -> Result<Store<StoreState>, InvocationError> {
    let state = new_state(settings, outbound)?;
    let mut store = Store::new(engine, state);
    store.limiter(|state| &mut state.limiter);
    let execution = &settings.execution;
    let fuel_error = |e: wasmtime::Error| InvocationError::new(FailureKind::Trap, one_line(&e));
    store
        .set_fuel(execution.max_fuel.unwrap_or(u64::MAX))
        .map_err(fuel_error)?;
    store
        .fuel_async_yield_interval(Some(execution.yield_fuel))
        .map_err(fuel_error)?;
    yield_on_epochs(&mut store, ());
    Ok(store)
}

/// On an engine with epoch interruption (the one of a WASIp3 component),
/// makes every epoch tick a real yield through [`tokio::task::yield_now`],
/// which lets the runtime's other tasks and its I/O driver run first
/// (wasmtime's own fuel yield wakes the task at once, and tokio runs it
/// again before anyone else: wasmtime #10667). WASIp3 calls run inside
/// wasmtime-wasi-http's own tasks, which [`Fair`](super::fair::Fair)
/// cannot wrap, so this is their fairness. Elsewhere it never fires.
/// `observer` hears of each tick and of how long the guest then waited.
pub(super) fn yield_on_epochs<O: YieldObserver + Clone>(
    store: &mut Store<StoreState>,
    observer: O,
) {
    store.epoch_deadline_callback(move |_| {
        observer.ticked();
        let observer = observer.clone();
        Ok(wasmtime::UpdateDeadline::YieldCustom(
            1,
            Box::pin(async move {
                let parked = std::time::Instant::now();
                tokio::task::yield_now().await;
                observer.resumed(parked.elapsed());
            }),
        ))
    });
    store.set_epoch_deadline(1);
}

/// What a store's epoch yields tell whoever watches its guest.
pub(super) trait YieldObserver: Send + Sync + 'static {
    /// The guest was running at an epoch tick, and yields now.
    fn ticked(&self) {}
    /// It waited `parked` at that yield before it ran again.
    fn resumed(&self, _parked: std::time::Duration) {}
}

/// Nobody watches.
impl YieldObserver for () {}

/// Worker threads of the current tokio runtime.
pub(super) fn tokio_workers() -> usize {
    tokio::runtime::Handle::try_current()
        .map(|handle| handle.metrics().num_workers())
        .unwrap_or(1)
}
