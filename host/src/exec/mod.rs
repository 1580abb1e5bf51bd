//! The executor: runs invocations of one component in this process, in one
//! of two lanes chosen once at load time.
//!
//! - `AsyncLane`: each invocation is a future on the tokio
//!   runtime, metered with fuel and yielding every `--yield-fuel` units
//!   through `Fair`, so a guest that never waits cannot starve the
//!   others or the network. Guest waits (timers, outbound HTTP, body
//!   streams) are host futures: a waiting guest holds no thread.
//! - `SyncLane`: a bounded pool of `--threads` OS threads, each
//!   with a warm, pre-created instance, calling the guest with wasmtime's
//!   synchronous API; a bounded queue in front answers 503 when full.
//!
//! - `P3Lane`: WASIp3 components, in the async lane, on reused instances
//!   that run several calls at once.
//!
//! WASIp2 instances are reused as `--instance-reuse` (or the component's
//! size) says, in either lane, until reuse is seen to break the component
//! (`reuse.rs`); no lane reuses an instance that failed a call.

mod answer;
mod async_lane;
mod fair;
mod guest_output;
pub mod memory_budget;
mod outbound;
#[cfg(feature = "wasip3")]
mod p3_budget;
#[cfg(feature = "wasip3")]
mod p3_lane;
pub mod profile;
mod queue_lane;
mod reuse;
pub mod shed;
#[cfg(feature = "wasip3")]
mod stall;
mod state;
mod sync_lane;
pub mod thread_control;

use crate::component::{HandlerKind, LoadError, LoadedComponent, one_line};
use crate::config::{ExecutionConfig, GuestGrants, InvocationLimits, Lane, Origin};
use crate::invocation::{Body, BodyError, Dispatch, FailureKind, InvocationError};
use answer::Answer;
use http_body_util::BodyExt;
use state::StoreState;
use std::sync::Arc;
use wasmtime::component::{InstancePre, Linker};
use wasmtime::{Engine, PoolConcurrencyLimitError, Trap};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

pub use guest_output::dropped_lines as guest_output_dropped;
pub use guest_output::flush as flush_guest_output;
pub use outbound::MAX_CONNECT_TIMEOUT;
pub use state::live_instances;

/// Stalled WASIp3 instances noticed in this process so far (an `async`
/// call that held its instance's event loop; see `exec/stall.rs`).
pub fn async_stalls() -> u64 {
    #[cfg(feature = "wasip3")]
    return stall::stalls();
    #[cfg(not(feature = "wasip3"))]
    return 0;
}

/// Everything an executor needs besides the component.
#[derive(Clone, Debug)]
pub struct ExecSettings {
    /// The function's name, for log lines.
    pub function: Arc<str>,
    /// Per-invocation limits.
    pub limits: InvocationLimits,
    /// What guests are granted.
    pub grants: GuestGrants,
    /// Lane sizing.
    pub execution: ExecutionConfig,
    /// Where the function's calls are counted.
    pub profile: Arc<profile::Profile>,
    /// The function's adaptive limit on calls at once, with
    /// `--load-shedding on`.
    pub shedder: Option<Arc<shed::Shedder>>,
}

/// Links `component` for `lane` and starts that lane. The sync lane spawns its
/// threads here and needs `runtime` (the tokio runtime whose I/O its guests
/// use); call this from inside that runtime.
pub fn start(
    engine: &Engine,
    component: &LoadedComponent,
    lane: Lane,
    settings: ExecSettings,
) -> Result<Arc<dyn Dispatch>, LoadError> {
    let instance_pre = link(engine, component, lane)?;
    let link_error = |e: wasmtime::Error| LoadError::Link {
        path: component.path.clone(),
        reason: one_line(&e),
    };
    let queue = match &component.queue_handler {
        Some(_) => Some(Arc::new(
            queue_lane::QueueRunner::new(instance_pre.clone(), lane, settings.clone())
                .map_err(link_error)?,
        )),
        None => None,
    };
    let http: Arc<dyn Dispatch> = match &component.handler {
        None => Arc::new(NoHttpHandler),
        Some(HandlerKind::HttpP3 { .. }) => {
            #[cfg(feature = "wasip3")]
            {
                let pre = wasmtime_wasi_http::p3::bindings::ServicePre::new(instance_pre)
                    .map_err(link_error)?;
                let reuse = reuse::configured_reuse(
                    settings.execution.instance_reuse,
                    &component.needs,
                    crate::config::DEFAULT_P3_INSTANCE_REUSE,
                );
                let expensive = reuse::large_instances(&component.needs);
                Arc::new(p3_lane::P3Lane::new(pre, settings, reuse, expensive))
            }
            #[cfg(not(feature = "wasip3"))]
            return Err(link_error(wasmtime::Error::msg(
                "this fnhost was built without WASIp3 support (the `wasip3` feature)",
            )));
        }
        Some(HandlerKind::HttpP2 { .. }) => match lane {
            Lane::Async => {
                let pre = wasmtime_wasi_http::p2::bindings::ProxyPre::new(instance_pre)
                    .map_err(link_error)?;
                let reuse =
                    reuse::configured_reuse(settings.execution.instance_reuse, &component.needs, 1);
                let shedder = settings.shedder.clone();
                shed::Shed::wrap(async_lane::AsyncLane::new(pre, settings, reuse), shedder)
            }
            Lane::Sync => {
                let pre = wasmtime_wasi_http::p2::bindings::sync::ProxyPre::new(instance_pre)
                    .map_err(link_error)?;
                let reuse =
                    reuse::configured_reuse(settings.execution.instance_reuse, &component.needs, 1);
                let shedder = settings.shedder.clone();
                let lane = sync_lane::SyncLane::start(
                    pre,
                    settings,
                    reuse,
                    tokio::runtime::Handle::current(),
                );
                shed::Shed::wrap(lane, shedder)
            }
        },
    };
    Ok(match queue {
        None => http,
        Some(queue) => Arc::new(WithQueue { http, queue }),
    })
}

/// The HTTP side of a component that exports no HTTP handler: 404.
struct NoHttpHandler;

impl Dispatch for NoHttpHandler {
    fn dispatch_http(
        &self,
        _invocation: crate::invocation::HttpInvocation,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = crate::invocation::DispatchResult> + Send>,
    > {
        let mut response = http::Response::new(
            http_body_util::Full::new(bytes::Bytes::from_static(
                b"this function has no HTTP handler (it handles queue messages)\n",
            ))
            .map_err(|never| match never {})
            .boxed_unsync(),
        );
        *response.status_mut() = http::StatusCode::NOT_FOUND;
        Box::pin(std::future::ready(Ok(response)))
    }
}

/// A component's HTTP dispatch plus its queue handler.
struct WithQueue {
    http: Arc<dyn Dispatch>,
    queue: Arc<queue_lane::QueueRunner>,
}

impl Dispatch for WithQueue {
    fn dispatch_http(
        &self,
        invocation: crate::invocation::HttpInvocation,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = crate::invocation::DispatchResult> + Send>,
    > {
        self.http.dispatch_http(invocation)
    }

    fn dispatch_queue(
        &self,
        invocation: crate::invocation::QueueInvocation,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = crate::invocation::QueueResult> + Send>>
    {
        Box::pin(self.queue.clone().run(invocation))
    }
}

/// Links `component` against all of WASI 0.2 and wasi:http, with the host
/// functions of `lane` (async futures, or blocking calls). Fails if the
/// component imports something the host does not provide.
pub fn link(
    engine: &Engine,
    component: &LoadedComponent,
    lane: Lane,
) -> Result<InstancePre<StoreState>, LoadError> {
    let link_error = |e: wasmtime::Error| LoadError::Link {
        path: component.path.clone(),
        reason: one_line(&e),
    };
    let mut linker = Linker::new(engine);
    // All of WASI 0.2, so Rust guests built with std link; what they can
    // actually reach is decided by the (empty by default) grants.
    match lane {
        Lane::Async => {
            wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(link_error)?;
            wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
                .map_err(link_error)?;
            // WASIp3 components (built with Rust's std they import WASI 0.2
            // too) also get the WASI 0.3 interfaces.
            #[cfg(feature = "wasip3")]
            if let Some(HandlerKind::HttpP3 { .. }) = component.handler {
                wasmtime_wasi::p3::add_to_linker(&mut linker).map_err(link_error)?;
                wasmtime_wasi_http::p3::add_to_linker(&mut linker).map_err(link_error)?;
            }
        }
        Lane::Sync => {
            wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(link_error)?;
            wasmtime_wasi_http::p2::add_only_http_to_linker_sync(&mut linker)
                .map_err(link_error)?;
        }
    }
    linker
        .instantiate_pre(&component.component)
        .map_err(link_error)
}

/// A fresh store state for `settings`.
fn new_state(
    settings: &ExecSettings,
    outbound: &Arc<[Origin]>,
) -> Result<StoreState, InvocationError> {
    StoreState::new(&settings.grants, outbound.clone(), &settings.limits)
        .map_err(|e| InvocationError::new(FailureKind::Capacity, one_line(&e)))
}

/// What a guest's `handle` call amounts to: `returned` is what it returned,
/// `answered` whether it set a response, `exceeded` whether it was refused
/// memory on the way.
fn call_outcome(
    returned: wasmtime::Result<()>,
    answered: bool,
    exceeded: bool,
) -> Result<(), InvocationError> {
    match returned {
        Ok(()) if answered => Ok(()),
        Ok(()) => Err(InvocationError::new(
            FailureKind::Trap,
            "the guest returned without setting a response",
        )),
        Err(error) => Err(classify(&error, exceeded)),
    }
}

/// Decides which failure a wasmtime error is.
fn classify(error: &wasmtime::Error, memory_exceeded: bool) -> InvocationError {
    let kind = if memory_exceeded {
        FailureKind::Memory
    } else if error.downcast_ref::<PoolConcurrencyLimitError>().is_some() {
        FailureKind::Capacity
    } else {
        match error.downcast_ref::<Trap>() {
            // The sync lane's epoch deadline, or the `--max-fuel` budget.
            Some(Trap::Interrupt | Trap::OutOfFuel) => FailureKind::Timeout,
            _ => FailureKind::Trap,
        }
    };
    InvocationError::new(kind, one_line(error))
}

/// What the guest answered, as the trigger's response type.
fn host_response(response: hyper::Response<HyperOutgoingBody>) -> http::Response<Body> {
    response.map(|body| {
        body.map_err(|e| BodyError::Transport(e.to_string()))
            .boxed_unsync()
    })
}

fn body_error_to_wasi(error: BodyError) -> wasmtime_wasi_http::Error {
    match error {
        BodyError::TooLarge { limit } => {
            wasmtime_wasi_http::Error::HttpRequestBodySize(Some(limit))
        }
        BodyError::Transport(reason) => wasmtime_wasi_http::Error::InternalError(Some(reason)),
    }
}
