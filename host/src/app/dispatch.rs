//! The one place a function is chosen: [`AppDispatch`] routes an HTTP
//! request by path, a queue message to the app's queue function, and
//! holds each function's `max_concurrent` cap.

use super::Router;
use crate::invocation::{
    Dispatch, DispatchResult, FailureKind, HttpInvocation, InvocationError, QueueInvocation,
    QueueResult, hold_until_body_ends,
};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// One function as the router sees it: its name, where its invocations
/// run, and its cap.
pub struct FunctionDispatch {
    /// The function's name, for messages.
    pub name: Arc<str>,
    /// Runs the function's invocations (a lane in this process, or the
    /// worker pool with this function's index).
    pub dispatch: Arc<dyn Dispatch>,
    /// Invocations that may run at once; `None`: no cap of its own.
    pub max_concurrent: Option<usize>,
}

struct Entry {
    name: Arc<str>,
    dispatch: Arc<dyn Dispatch>,
    slots: Option<(Arc<Semaphore>, usize)>,
}

/// Routes invocations to an app's functions.
pub struct AppDispatch {
    router: Router,
    functions: Vec<Entry>,
    queue_function: Option<usize>,
}

impl AppDispatch {
    /// A dispatch over `functions` (indexed as in `router`), with queue
    /// messages going to `queue_function`.
    pub fn new(
        router: Router,
        functions: Vec<FunctionDispatch>,
        queue_function: Option<usize>,
    ) -> Self {
        let functions = functions
            .into_iter()
            .map(|function| Entry {
                name: function.name,
                dispatch: function.dispatch,
                slots: function
                    .max_concurrent
                    .map(|cap| (Arc::new(Semaphore::new(cap)), cap)),
            })
            .collect();
        Self {
            router,
            functions,
            queue_function,
        }
    }

    /// The index of the function that serves `path`, if any.
    pub fn function_for(&self, path: &str) -> Option<usize> {
        self.router.pick(path)
    }

    /// Invocations of function `index` running now (those holding a slot of
    /// its cap; 0 for a function without one).
    pub fn running(&self, index: usize) -> Option<usize> {
        let (semaphore, cap) = self.functions.get(index)?.slots.as_ref()?;
        Some(cap - semaphore.available_permits())
    }
}

impl Dispatch for AppDispatch {
    fn dispatch_http(
        &self,
        invocation: HttpInvocation,
    ) -> Pin<Box<dyn Future<Output = DispatchResult> + Send + 'static>> {
        let path = invocation.request.uri().path();
        let Some(entry) = self.router.pick(path).map(|i| &self.functions[i]) else {
            let error = InvocationError::new(
                FailureKind::NoRoute,
                format!("no function has a route for {path}"),
            );
            return Box::pin(std::future::ready(Err(error)));
        };
        let named = self.functions.len() > 1;
        let Some((semaphore, cap)) = &entry.slots else {
            let call = entry.dispatch.dispatch_http(invocation);
            if !named {
                return call;
            }
            // Among several functions, the failure's log line names it.
            let name = entry.name.clone();
            return Box::pin(async move { call.await.map_err(|error| named_error(&name, error)) });
        };
        let Ok(permit) = semaphore.clone().try_acquire_owned() else {
            let error = InvocationError::new(
                FailureKind::Capacity,
                format!(
                    "function {} is running its max_concurrent of {cap} invocations",
                    entry.name
                ),
            );
            return Box::pin(std::future::ready(Err(error)));
        };
        let call = entry.dispatch.dispatch_http(invocation);
        let name = entry.name.clone();
        Box::pin(async move {
            let response = call.await.map_err(|error| {
                if named {
                    named_error(&name, error)
                } else {
                    error
                }
            })?;
            // The slot is the function's until its response body ends.
            Ok(hold_until_body_ends(response, permit))
        })
    }

    fn dispatch_queue(
        &self,
        invocation: QueueInvocation,
    ) -> Pin<Box<dyn Future<Output = QueueResult> + Send + 'static>> {
        match self.queue_function.map(|i| &self.functions[i]) {
            Some(entry) => entry.dispatch.dispatch_queue(invocation),
            None => Box::pin(std::future::ready(Err(InvocationError::new(
                FailureKind::Trap,
                "no function of the app has a queue trigger",
            )))),
        }
    }
}

/// `error` with its detail saying which function failed.
fn named_error(function: &str, error: InvocationError) -> InvocationError {
    InvocationError::new(error.kind, format!("function {function}: {}", error.detail))
}

/// A version of an app, as the dispatch of the current one sees it.
pub trait AppVersion: Send + Sync + 'static {
    /// The version's router.
    fn router(&self) -> &AppDispatch;
}

/// The version current when a call arrives; a redeploy replaces what the
/// lock holds. Each call holds its version until its response head, so a
/// replaced version goes once no call can still send it work.
pub struct CurrentVersion<V>(pub Arc<std::sync::RwLock<Arc<V>>>);

impl<V: AppVersion> CurrentVersion<V> {
    fn get(&self) -> Arc<V> {
        self.0.read().expect("current version").clone()
    }
}

impl<V: AppVersion> Dispatch for CurrentVersion<V> {
    fn dispatch_http(
        &self,
        invocation: HttpInvocation,
    ) -> Pin<Box<dyn Future<Output = DispatchResult> + Send + 'static>> {
        let version = self.get();
        let call = version.router().dispatch_http(invocation);
        Box::pin(async move {
            let result = call.await;
            drop(version);
            result
        })
    }

    fn dispatch_queue(
        &self,
        invocation: QueueInvocation,
    ) -> Pin<Box<dyn Future<Output = QueueResult> + Send + 'static>> {
        let version = self.get();
        let call = version.router().dispatch_queue(invocation);
        Box::pin(async move {
            let result = call.await;
            drop(version);
            result
        })
    }
}
