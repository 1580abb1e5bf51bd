//! The async lane: each invocation is a future on the tokio runtime.
//!
//! The store meters fuel and yields every `--yield-fuel` units; [`Fair`]
//! turns each yield into a real one. The deadline is a tokio timer around
//! the whole invocation: the yields let it fire, and dropping the future
//! drops the store mid-call.

use super::fair::{Fair, FairShare};
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
use std::sync::atomic::{AtomicBool, Ordering};
use wasmtime::Store;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;

/// Runs invocations as futures on the current tokio runtime.
pub struct AsyncLane {
    inner: Arc<Inner>,
}

struct Inner {
    pre: ProxyPre<StoreState>,
    settings: ExecSettings,
    outbound: Arc<[Origin]>,
    share: FairShare,
}

impl AsyncLane {
    /// A lane instantiating `pre` for every invocation.
    pub fn new(pre: ProxyPre<StoreState>, settings: ExecSettings) -> Self {
        Self {
            inner: Arc::new(Inner {
                pre,
                outbound: settings.grants.outbound.clone().into(),
                settings,
                share: FairShare::for_workers(tokio_workers()),
            }),
        }
    }
}

impl Dispatch for AsyncLane {
    fn dispatch_http(
        &self,
        invocation: HttpInvocation,
    ) -> Pin<Box<dyn Future<Output = DispatchResult> + Send + 'static>> {
        Box::pin(self.inner.clone().run_http(invocation))
    }
}

impl Inner {
    fn new_store(&self, id: InvocationId) -> Result<Store<StoreState>, InvocationError> {
        new_async_store(self.pre.engine(), &self.settings, &self.outbound, id)
    }

    async fn run_http(self: Arc<Self>, invocation: HttpInvocation) -> DispatchResult {
        let HttpInvocation { id, request } = invocation;
        let mut store = self.new_store(id)?;
        let request = request.map(|body| body.map_err(body_error_to_wasi));
        let (response_tx, response_rx) = tokio::sync::oneshot::channel();
        let responded = Arc::new(AtomicBool::new(false));
        let (incoming, outparam) = {
            let mut http = store.data_mut().http();
            let incoming = http
                .new_incoming_request(Scheme::Http, request)
                .map_err(|e| InvocationError::new(FailureKind::Trap, one_line(&e)))?;
            let flag = responded.clone();
            let outparam = http
                .new_response_outparam_from_callback(move |response| {
                    flag.store(true, Ordering::Release);
                    let _ = response_tx.send(response);
                })
                .map_err(|e| InvocationError::new(FailureKind::Trap, one_line(&e)))?;
            (incoming, outparam)
        };

        // The guest runs in its own task: it may keep streaming the response
        // body after the head has been handed to the trigger.
        let timeout = self.settings.limits.timeout;
        let pre = self.pre.clone();
        let share = self.share.clone();
        let guest = tokio::spawn(async move {
            let call = Fair::new(
                async {
                    let proxy = pre.instantiate_async(&mut store).await?;
                    proxy
                        .wasi_http_incoming_handler()
                        .call_handle(&mut store, incoming, outparam)
                        .await
                },
                share,
            );
            let outcome = match tokio::time::timeout(timeout, call).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(error)) => Err(classify(&error, store.data().limiter.exceeded())),
                Err(_) => Err(InvocationError::new(
                    FailureKind::Timeout,
                    format!("ran past its {} ms timeout", timeout.as_millis()),
                )),
            };
            if let Err(error) = &outcome
                && responded.load(Ordering::Acquire)
            {
                tracing::warn!(
                    "[{id}] invocation failed after its response started: {}: {}",
                    error.kind,
                    error.detail
                );
            }
            outcome
        });

        match response_rx.await {
            Ok(Ok(response)) => Ok(host_response(response)),
            Ok(Err(code)) => Err(InvocationError::new(
                FailureKind::Trap,
                format!("the guest answered with error code {code:?}"),
            )),
            Err(_) => match guest.await {
                Ok(Ok(())) => Err(InvocationError::new(
                    FailureKind::Trap,
                    "the guest returned without setting a response",
                )),
                Ok(Err(error)) => Err(error),
                Err(join) => Err(InvocationError::new(
                    FailureKind::Trap,
                    format!("the invocation task failed: {join}"),
                )),
            },
        }
    }
}

/// Worker threads of the current tokio runtime (the multi-thread runtime
/// fnhost builds has one per core).
/// A store for one async-lane call: fuel metered, yielding every
/// `--yield-fuel` units, within `--max-fuel` if set.
pub(super) fn new_async_store(
    engine: &wasmtime::Engine,
    settings: &ExecSettings,
    outbound: &Arc<[Origin]>,
    id: InvocationId,
) -> Result<Store<StoreState>, InvocationError> {
    let mut state = new_state(settings, outbound)?;
    state.begin(id);
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
    yield_on_epochs(&mut store);
    Ok(store)
}

/// On an engine with epoch interruption (the one of a WASIp3 component),
/// makes every epoch tick a real yield through [`tokio::task::yield_now`],
/// which lets the runtime's other tasks and its I/O driver run first
/// (wasmtime's own fuel yield wakes the task at once, and tokio runs it
/// again before anyone else: wasmtime #10667). WASIp3 calls run inside
/// wasmtime-wasi-http's own tasks, which [`Fair`](super::fair::Fair)
/// cannot wrap, so this is their fairness. Elsewhere it never fires.
pub(super) fn yield_on_epochs(store: &mut Store<StoreState>) {
    store.epoch_deadline_callback(|_| {
        Ok(wasmtime::UpdateDeadline::YieldCustom(
            1,
            Box::pin(tokio::task::yield_now()),
        ))
    });
    store.set_epoch_deadline(1);
}

/// Worker threads of the current tokio runtime.
pub(super) fn tokio_workers() -> usize {
    tokio::runtime::Handle::try_current()
        .map(|handle| handle.metrics().num_workers())
        .unwrap_or(1)
}
