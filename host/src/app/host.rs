//! [`AppHost`]: an app of several named functions in this process, behind
//! one router; the embedding API's multi-function host and what
//! `fnhost serve --in-process` runs. [`AppHost::reload`] swaps in a new
//! version of the app while calls already running finish on theirs.

use super::dispatch::CurrentVersion;
use super::{AppDispatch, FunctionSpec};
use crate::config::HttpLimits;
use crate::invocation::Dispatch;
use crate::triggers::http::HttpTrigger;
use crate::{Host, HostError};
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::TcpListener;

/// Several functions, each loaded into its own [`Host`] (engine, lanes,
/// stores and limits of its own), routed by [`AppDispatch`].
pub struct AppHost {
    current: Arc<RwLock<Arc<Version>>>,
    http: HttpLimits,
    grace: Duration,
}

/// One version of the app: its functions, their hosts, their router.
struct Version {
    functions: Vec<(FunctionSpec, Host)>,
    dispatch: AppDispatch,
}

/// Why an app could not be built: the function at fault and its error.
#[derive(Debug, thiserror::Error)]
#[error("function {function}: {error}")]
pub struct AppError {
    /// The function's name ("app" for an app-wide problem).
    pub function: String,
    /// What went wrong.
    pub error: HostError,
}

impl AppHost {
    /// Loads every function (compiling what the cache lacks: seconds per
    /// component, so before serving) and checks its triggers. `http` and
    /// `grace` are the host-wide settings of the listener. Call it inside
    /// a tokio runtime.
    pub fn build(
        functions: Vec<FunctionSpec>,
        http: HttpLimits,
        grace: Duration,
    ) -> Result<Self, AppError> {
        Ok(Self {
            current: Arc::new(RwLock::new(Arc::new(load(functions)?))),
            http,
            grace,
        })
    }

    /// Loads `functions` beside the running version and makes them
    /// current; calls already running finish on the old version, whose
    /// instances are dropped once they have. On an error nothing changes.
    /// Call it inside the tokio runtime, off its threads if the
    /// components may need compiling (`spawn_blocking`).
    pub fn reload(&self, functions: Vec<FunctionSpec>) -> Result<(), AppError> {
        let version = Arc::new(load(functions)?);
        *self.current.write().expect("current version") = version;
        Ok(())
    }

    /// The current functions' specs and their hosts' load summaries, in
    /// the app's order.
    pub fn describe(&self) -> Vec<(FunctionSpec, String)> {
        let version = self.current.read().expect("current version").clone();
        version
            .functions
            .iter()
            .map(|(spec, host)| (spec.clone(), host.describe_load()))
            .collect()
    }

    /// Routes every call to the version current when it arrives, for
    /// embedders with their own triggers.
    pub fn dispatch(&self) -> Arc<dyn Dispatch> {
        Arc::new(CurrentVersion(self.current.clone()))
    }

    /// Serves HTTP on `listener` until `shutdown` resolves, then drains for
    /// up to the grace period; returns whether the drain finished in time.
    pub async fn serve(&self, listener: TcpListener, shutdown: impl Future<Output = ()>) -> bool {
        HttpTrigger::new(self.dispatch(), self.http.clone())
            .serve(listener, shutdown, self.grace)
            .await
    }
}

/// Loads each function into its own host and routes them.
fn load(functions: Vec<FunctionSpec>) -> Result<Version, AppError> {
    let app_error = |reason: String| AppError {
        function: "app".into(),
        error: HostError::Engine(reason),
    };
    if functions.is_empty() {
        return Err(app_error("no functions".into()));
    }
    let mut loaded = Vec::with_capacity(functions.len());
    for function in functions {
        let host = Host::builder(function.config.clone())
            .component(&function.component)
            .name(function.name.clone())
            .build_for(function.needs_http(), function.queue.is_some())
            .map_err(|error| AppError {
                function: function.name.clone(),
                error,
            })?;
        loaded.push((function, host));
    }
    let specs: Vec<FunctionSpec> = loaded.iter().map(|(spec, _)| spec.clone()).collect();
    let dispatch =
        super::app_dispatch(&specs, |index, _| loaded[index].1.dispatch()).map_err(app_error)?;
    Ok(Version {
        functions: loaded,
        dispatch,
    })
}

impl super::dispatch::AppVersion for Version {
    fn router(&self) -> &AppDispatch {
        &self.dispatch
    }
}
