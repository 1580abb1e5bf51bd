//! The in-process executor: runs each invocation on a fresh instance of the
//! component, as a future on the tokio runtime.
//!
//! A fresh instance per request is the isolation default: nothing a request
//! leaves in guest memory is seen by the next. Instantiation is cheap because
//! the component is pre-linked once ([`ProxyPre`]) and memory comes from the
//! pooling allocator. Guests yield to the event loop at every epoch tick (see
//! [`crate::engine::EPOCH_TICK`]), which also lets the deadline fire.

mod guest_output;
mod outbound;
mod state;

use crate::component::{LoadError, LoadedComponent, one_line};
use crate::config::{GuestGrants, InvocationLimits, Origin};
use crate::invocation::{
    BodyError, Dispatch, DispatchResult, FailureKind, HttpInvocation, InvocationError, InvocationId,
};
use http_body_util::BodyExt;
use state::StoreState;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use wasmtime::component::Linker;
use wasmtime::{Engine, PoolConcurrencyLimitError, Store};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};

pub use outbound::MAX_CONNECT_TIMEOUT;

/// Runs invocations of one component in this process.
#[derive(Clone)]
pub struct Executor {
    inner: Arc<ExecutorInner>,
}

struct ExecutorInner {
    pre: ProxyPre<StoreState>,
    limits: InvocationLimits,
    grants: GuestGrants,
    outbound: Arc<[Origin]>,
}

impl Executor {
    /// Links `component` against WASI 0.2 and wasi:http and prepares it for
    /// instantiation. Fails if the component imports something the host does
    /// not provide.
    pub fn new(
        engine: &Engine,
        component: &LoadedComponent,
        limits: InvocationLimits,
        grants: GuestGrants,
    ) -> Result<Self, LoadError> {
        let link_error = |e: wasmtime::Error| LoadError::Link {
            path: component.path.clone(),
            reason: one_line(&e),
        };
        let mut linker = Linker::new(engine);
        // All of WASI 0.2, so Rust guests built with std link; what they can
        // actually reach is decided by the (empty by default) grants.
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(link_error)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(link_error)?;
        let pre = linker
            .instantiate_pre(&component.component)
            .and_then(ProxyPre::new)
            .map_err(link_error)?;
        Ok(Self {
            inner: Arc::new(ExecutorInner {
                pre,
                outbound: grants.outbound.clone().into(),
                limits,
                grants,
            }),
        })
    }
}

impl Dispatch for Executor {
    fn dispatch_http(
        &self,
        invocation: HttpInvocation,
    ) -> Pin<Box<dyn Future<Output = DispatchResult> + Send + 'static>> {
        Box::pin(self.inner.clone().run_http(invocation))
    }
}

impl ExecutorInner {
    fn new_store(&self, id: InvocationId) -> Result<Store<StoreState>, InvocationError> {
        let state = StoreState::new(
            id,
            &self.grants,
            self.outbound.clone(),
            self.limits.max_memory,
            self.limits.timeout,
        )
        .map_err(|e| InvocationError::new(FailureKind::Capacity, one_line(&e)))?;
        let mut store = Store::new(self.pre.engine(), state);
        store.limiter(|state| &mut state.limiter);
        // Yield to the event loop at every epoch tick; the deadline itself is
        // enforced by the timeout around the whole invocation.
        store.epoch_deadline_async_yield_and_update(1);
        Ok(store)
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
        let timeout = self.limits.timeout;
        let pre = self.pre.clone();
        let guest = tokio::spawn(async move {
            let call = async {
                let proxy = pre.instantiate_async(&mut store).await?;
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, incoming, outparam)
                    .await
            };
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
            Ok(Ok(response)) => Ok(response.map(|body| {
                body.map_err(|e| BodyError::Transport(e.to_string()))
                    .boxed_unsync()
            })),
            Ok(Err(code)) => Err(InvocationError::new(
                FailureKind::Trap,
                format!(
                    "the guest answered with error code {}",
                    describe_code(&code)
                ),
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

/// Decides which failure a wasmtime error is.
fn classify(error: &wasmtime::Error, memory_exceeded: bool) -> InvocationError {
    let kind = if memory_exceeded {
        FailureKind::Memory
    } else if error.downcast_ref::<PoolConcurrencyLimitError>().is_some() {
        FailureKind::Capacity
    } else {
        FailureKind::Trap
    };
    InvocationError::new(kind, one_line(error))
}

fn body_error_to_wasi(error: BodyError) -> wasmtime_wasi_http::Error {
    match error {
        BodyError::TooLarge { limit } => {
            wasmtime_wasi_http::Error::HttpRequestBodySize(Some(limit))
        }
        BodyError::Transport(reason) => wasmtime_wasi_http::Error::InternalError(Some(reason)),
    }
}

fn describe_code(code: &ErrorCode) -> String {
    format!("{code:?}")
}
