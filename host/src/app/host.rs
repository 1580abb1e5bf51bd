//! [`AppHost`]: an app of several named functions in this process, behind
//! one router; the embedding API's multi-function host and what
//! `fnhost serve --in-process` runs.

use super::{AppDispatch, FunctionSpec};
use crate::config::HttpLimits;
use crate::triggers::http::HttpTrigger;
use crate::{Host, HostError};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Several functions, each loaded into its own [`Host`] (engine, lanes,
/// stores and limits of its own), routed by [`AppDispatch`].
pub struct AppHost {
    functions: Vec<(FunctionSpec, Host)>,
    dispatch: Arc<AppDispatch>,
    http: HttpLimits,
    grace: Duration,
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
                .build()
                .and_then(|host| {
                    host.check_triggers(function.needs_http(), function.queue.is_some())
                        .map(|()| host)
                })
                .map_err(|error| AppError {
                    function: function.name.clone(),
                    error,
                })?;
            loaded.push((function, host));
        }
        let specs: Vec<FunctionSpec> = loaded.iter().map(|(spec, _)| spec.clone()).collect();
        let dispatch = super::app_dispatch(&specs, |index, _| loaded[index].1.dispatch())
            .map_err(app_error)?;
        Ok(Self {
            functions: loaded,
            dispatch: Arc::new(dispatch),
            http,
            grace,
        })
    }

    /// The functions and their hosts, in the app's order.
    pub fn functions(&self) -> impl Iterator<Item = (&FunctionSpec, &Host)> {
        self.functions.iter().map(|(spec, host)| (spec, host))
    }

    /// The router, for embedders with their own triggers.
    pub fn dispatch(&self) -> Arc<AppDispatch> {
        self.dispatch.clone()
    }

    /// Serves HTTP on `listener` until `shutdown` resolves, then drains for
    /// up to the grace period; returns whether the drain finished in time.
    pub async fn serve(&self, listener: TcpListener, shutdown: impl Future<Output = ()>) -> bool {
        HttpTrigger::new(self.dispatch.clone(), self.http.clone())
            .serve(listener, shutdown, self.grace)
            .await
    }
}
