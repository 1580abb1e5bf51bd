//! # fnhost
//!
//! A WebAssembly-sandboxed function host. It serves components that export
//! `wasi:http/incoming-handler@0.2.x` (or, with the default `wasip3`
//! feature, `wasi:http/handler@0.3.x`), each request on a fresh, isolated
//! instance unless configured otherwise, with nothing granted to the guest
//! unless the host says so. Guests run in one of two lanes, chosen once per
//! component: the async lane (futures on the tokio event loop, with fuel
//! yield points) or the sync lane (a bounded pool of threads with warm
//! instances); see [`exec`].
//!
//! This library is the product; the `fnhost` binary is a thin shell over it.
//! An edge platform embeds a host in a few lines:
//!
//! ```no_run
//! use fnhost::{Host, HostConfig};
//!
//! # async fn run() -> anyhow::Result<()> {
//! let host = Host::builder(HostConfig::default())
//!     .component("app.wasm")
//!     .build()?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! println!("serving on http://{}", listener.local_addr()?);
//! // Serve until the future resolves (here: never), then drain.
//! host.serve(listener, std::future::pending()).await;
//! # Ok(())
//! # }
//! ```
//!
//! To run invocations without the HTTP server (say, from your own trigger),
//! take [`Host::dispatch`] and call [`Dispatch::dispatch_http`].

pub mod app;
pub mod cache;
pub mod component;
pub mod config;
pub mod engine;
pub mod exec;
pub mod handoff;
pub mod invocation;
pub mod ipc;
pub mod metrics;
pub mod queue;
pub mod supervisor;
pub mod triggers;
pub mod worker;

pub use config::HostConfig;
pub use invocation::{Dispatch, FailureKind, HttpInvocation, InvocationError, InvocationId};

use cache::CompileCache;
use component::{HandlerKind, LoadError};
use config::Lane;
use engine::{AllocatorKind, EngineSettings};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::TcpListener;
use triggers::http::HttpTrigger;

/// Why a host could not be built. Each message is one line naming the thing
/// at fault and the reason.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// No component was given to the builder.
    #[error("no component given")]
    NoComponent,
    /// The component could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The wasmtime engine could not be configured.
    #[error("{0}")]
    Engine(String),
    /// `build` was called outside a tokio runtime.
    #[error("the host must be built inside a tokio runtime (it runs its I/O there)")]
    NoRuntime,
    /// `--mode sync` for a WASIp3 component, which only the async lane runs.
    #[error("{path}: is a WASIp3 component, which runs only in the async lane (drop --mode sync)")]
    P3NeedsAsync {
        /// The component file.
        path: PathBuf,
    },
    /// `--queue` for a component without a queue handler, or no `--queue`
    /// for one that has nothing else.
    #[error("{path}: {reason}")]
    Triggers {
        /// The component file.
        path: PathBuf,
        /// What does not match.
        reason: &'static str,
    },
    /// A `--dir` grant names something that is not a readable directory.
    #[error("--dir {path}: {reason}")]
    Dir {
        /// The host path of the grant.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// Builds a [`Host`]: settings plus a component.
pub struct HostBuilder {
    config: HostConfig,
    component: Option<PathBuf>,
    name: Option<String>,
    pooling: bool,
}

impl HostBuilder {
    /// The function's name in log lines (default: the component file's
    /// name without its extension).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The component file to serve.
    pub fn component(mut self, path: impl Into<PathBuf>) -> Self {
        self.component = Some(path.into());
        self
    }

    /// Whether to try the pooling allocator (default: yes, with a fallback
    /// to on-demand allocation when it cannot reserve its address space).
    pub fn pooling(mut self, enabled: bool) -> Self {
        self.pooling = enabled;
        self
    }

    /// Creates the engine, loads and links the component, and starts the
    /// lane its invocations run in. This compiles the component unless the
    /// compile cache has it, so it can take seconds: call it before serving,
    /// not on a request path. It must be called inside a tokio runtime: the
    /// host's I/O (and the sync lane's host calls) run there.
    pub fn build(self) -> Result<Host, HostError> {
        let path = self.component.ok_or(HostError::NoComponent)?;
        for grant in &self.config.grants.dirs {
            if !grant.host.is_dir() {
                return Err(HostError::Dir {
                    path: grant.host.clone(),
                    reason: "not a directory".to_string(),
                });
            }
        }
        let mut protected = vec![(path.as_path(), "component file")];
        if let Some(cache) = &self.config.cache_dir {
            protected.push((cache.as_path(), "compile cache"));
        }
        config::refuse_unsafe_dirs(&self.config.grants.dirs, &protected)
            .map_err(|(path, reason)| HostError::Dir { path, reason })?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| HostError::NoRuntime)?;
        let file = component::read_checked(
            &path,
            self.config.max_component_size,
            self.config.invocation.max_memory,
        )?;
        let wasip3 = file.wasip3;
        if wasip3 && self.config.execution.mode == config::Mode::Sync {
            return Err(HostError::P3NeedsAsync { path });
        }
        let lane = file.lane(self.config.execution.mode);
        let (engine, allocator) = engine::build_engine(&EngineSettings {
            max_memory: self.config.invocation.max_memory,
            pool_slots: self.pooling.then_some(engine::POOL_COMPONENT_INSTANCES),
            needs: file.needs,
            lane,
            sync_fuel: self.config.execution.max_fuel.is_some(),
            concurrency: wasip3,
        })
        .map_err(|e| HostError::Engine(format!("{e:#}")))?;
        if lane == Lane::Sync || wasip3 {
            engine::start_epoch_ticker(&engine);
        }
        let cache =
            self.config
                .cache_dir
                .as_deref()
                .and_then(|dir| match CompileCache::open(dir) {
                    Ok(cache) => Some(cache),
                    Err(error) => {
                        tracing::warn!(
                            "compile cache disabled: cannot open {}: {error}",
                            dir.display()
                        );
                        None
                    }
                });
        let loaded = component::compile(&engine, file, cache.as_ref())?;
        let profile = Arc::new(exec::profile::Profile::default());
        let function = self
            .name
            .map_or_else(|| app::name_from_path(&path).into(), Into::into);
        let settings = exec::ExecSettings {
            function,
            limits: self.config.invocation.clone(),
            grants: self.config.grants.clone(),
            execution: self.config.execution.clone(),
            profile: profile.clone(),
            shedder: self.config.execution.load_shedding.then(Default::default),
        };
        let _entered = runtime.enter();
        let dispatch = exec::start(&engine, &loaded, lane, settings)?;
        Ok(Host {
            profile,
            summary: LoadSummary {
                path,
                handler: loaded.handler,
                queue_handler: loaded.queue_handler,
                lane,
                lane_marker: loaded.lane_marker,
                wasip3,
                allocator,
                from_cache: loaded.from_cache,
                load_time: loaded.load_time,
            },
            dispatch,
            config: self.config,
        })
    }

    /// [`Self::build`], then [`Host::check_triggers`]: a host for a
    /// function with a route (`needs_http`) and/or a queue (`needs_queue`).
    pub fn build_for(self, needs_http: bool, needs_queue: bool) -> Result<Host, HostError> {
        let host = self.build()?;
        host.check_triggers(needs_http, needs_queue)?;
        Ok(host)
    }
}

/// What happened while a host was built, for its start-up log line.
#[derive(Clone, Debug)]
pub struct LoadSummary {
    /// The component file.
    pub path: PathBuf,
    /// The HTTP handler, if the component exports one.
    pub handler: Option<HandlerKind>,
    /// The queue handler export, if the component has one.
    pub queue_handler: Option<String>,
    /// The lane its invocations run in.
    pub lane: Lane,
    /// The lane the component's marker asked for, if any.
    pub lane_marker: Option<Lane>,
    /// Whether it is a WASIp3 component.
    pub wasip3: bool,
    /// The instance allocator in use.
    pub allocator: AllocatorKind,
    /// Whether compiled code came from the compile cache.
    pub from_cache: bool,
    /// Time to read and compile (or load from cache).
    pub load_time: std::time::Duration,
}

/// A loaded component, ready to serve.
pub struct Host {
    config: HostConfig,
    profile: Arc<exec::profile::Profile>,
    dispatch: Arc<dyn Dispatch>,
    summary: LoadSummary,
}

impl Host {
    /// Starts building a host with `config`.
    pub fn builder(config: HostConfig) -> HostBuilder {
        HostBuilder {
            config,
            component: None,
            name: None,
            pooling: true,
        }
    }

    /// The settings this host runs with.
    pub fn config(&self) -> &HostConfig {
        &self.config
    }

    /// What was loaded and how.
    pub fn summary(&self) -> &LoadSummary {
        &self.summary
    }

    /// Checks that the component exports what its triggers need: the HTTP
    /// handler when it has a route (`needs_http`), the queue handler when a
    /// queue feeds it (`needs_queue`).
    pub fn check_triggers(&self, needs_http: bool, needs_queue: bool) -> Result<(), HostError> {
        let summary = &self.summary;
        let reason = if needs_queue && summary.queue_handler.is_none() {
            "has no queue handler (`fnhost:function/queue-handler@0.2.x`), which its queue trigger needs"
        } else if needs_http && summary.handler.is_none() {
            if needs_queue {
                "exports no HTTP handler, which its route needs"
            } else {
                "exports only a queue handler; give it a queue (--queue NAME, or `queue` in the manifest)"
            }
        } else {
            return Ok(());
        };
        Err(HostError::Triggers {
            path: summary.path.clone(),
            reason,
        })
    }

    /// One line saying what was loaded, from where, and how it runs: the
    /// start-up log line of `fnhost serve` and of each worker.
    pub fn describe_load(&self) -> String {
        let summary = &self.summary;
        let execution = &self.config.execution;
        let lane_source = match (execution.mode, summary.lane_marker) {
            _ if summary.wasip3 => "WASIp3 components always run in it",
            (config::Mode::Auto, Some(_)) => "from the component's marker",
            (config::Mode::Auto, None) => "no marker: the default",
            _ => "from --mode",
        };
        let lane_detail = match summary.lane {
            Lane::Sync => format!(
                ", {} threads, queue depth {}",
                match execution.threads {
                    config::ThreadCount::Auto =>
                        format!("auto from {}", execution.threads.initial()),
                    fixed => fixed.to_string(),
                },
                execution.queue_depth
            ),
            Lane::Async if summary.wasip3 => format!(
                ", up to {} calls at once per instance",
                execution.max_concurrent_reuse
            ),
            Lane::Async => format!(", yield every {} fuel", execution.yield_fuel),
        };
        format!(
            "loaded {} in {} ms ({}; {}; {} allocator); {} lane ({lane_source}){lane_detail}",
            summary.path.display(),
            summary.load_time.as_millis(),
            component::describe_triggers(
                summary.handler.as_ref(),
                summary.queue_handler.as_deref()
            ),
            if summary.from_cache {
                "compile cache hit"
            } else {
                "compiled"
            },
            summary.allocator,
            summary.lane,
        )
    }

    /// Where this host's calls are counted (calls, CPU, time queued);
    /// `snapshot()` reads it.
    pub fn profile(&self) -> Arc<exec::profile::Profile> {
        self.profile.clone()
    }

    /// The dispatch that runs invocations, for embedders with their own triggers.
    pub fn dispatch(&self) -> Arc<dyn Dispatch> {
        self.dispatch.clone()
    }

    /// Serves HTTP on `listener` until `shutdown` resolves, then drains for
    /// up to the configured grace period. Returns whether the drain finished
    /// in time.
    pub async fn serve(&self, listener: TcpListener, shutdown: impl Future<Output = ()>) -> bool {
        HttpTrigger::new(self.dispatch.clone(), self.config.http.clone())
            .serve(listener, shutdown, self.config.grace)
            .await
    }
}
