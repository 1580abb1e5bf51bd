//! `fnhost serve`: load a component, or an app of functions from a
//! manifest, and serve it until a signal.

use anyhow::Context;
use clap::parser::ValueSource;
use clap::{ArgMatches, Args};
use fnhost::app::{AppHost, FunctionSpec, Route, manifest};
use fnhost::config::parse::{
    parse_dir_grant, parse_duration, parse_env_pair, parse_on_off, parse_origin, parse_size,
};
use fnhost::config::{
    DEFAULT_LISTEN, DEFAULT_MAX_CONCURRENT_REUSE, DEFAULT_YIELD_FUEL, DirGrant, ExecutionConfig,
    GuestGrants, HostConfig, HttpLimits, InvocationLimits, Mode, Origin, ThreadCount,
};
use fnhost::queue::{DEFAULT_DATA_DIR, QueueSpec};
use fnhost::supervisor::process::WorkerLimits;
use fnhost::supervisor::redeploy::ReloadSource;
use fnhost::supervisor::{QueueBinding, Supervisor, SupervisorConfig, WorkerCount};
use fnhost::triggers::queue::{
    DEFAULT_BATCH_SIZE, DEFAULT_MAX_DEQUEUE_COUNT, MAX_BATCH_SIZE, MIN_VISIBILITY_TIMEOUT,
    QueueSettings,
};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use super::DEFAULT_LOG_FILTER;

/// Settings of `fnhost serve`. Each flag also reads the environment variable
/// named in its help; a flag wins over the variable, and both win over the
/// manifest.
#[derive(Args, Clone)]
pub struct ServeCommand {
    /// The component to serve (a .wasm file exporting wasi:http/incoming-handler@0.2.x, wasi:http/handler@0.3.x or fnhost:function/queue-handler@0.2.x), or an app manifest (a .toml file) [default: ./fnhost.toml].
    pub(super) path: Option<PathBuf>,

    /// Address of the HTTP trigger; port 0 picks a free port.
    #[arg(long, env = "FNHOST_LISTEN", default_value = DEFAULT_LISTEN, value_name = "ADDR")]
    pub(super) listen: SocketAddr,

    /// Largest request body (413 beyond).
    #[arg(long, env = "FNHOST_MAX_BODY", default_value = "100MiB", value_parser = parse_size, value_name = "SIZE")]
    pub(super) max_body: u64,

    /// Time a client has to send a complete request head before the connection is closed.
    #[arg(long, env = "FNHOST_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration, value_name = "DUR")]
    pub(super) header_timeout: Duration,

    /// Longest a write to a client may wait; a client that stops reading its response is disconnected after it.
    #[arg(long, env = "FNHOST_WRITE_TIMEOUT", default_value = "30s", value_parser = parse_duration, value_name = "DUR")]
    pub(super) write_timeout: Duration,

    /// Wall clock per invocation, response body included (504 beyond).
    #[arg(long, env = "FNHOST_TIMEOUT", default_value = "30s", value_parser = parse_duration, value_name = "DUR")]
    pub(super) timeout: Duration,

    /// Execution lane: auto reads the component's marker (async without one).
    #[arg(
        long,
        env = "FNHOST_MODE",
        default_value = "auto",
        value_name = "auto|async|sync"
    )]
    pub(super) mode: Mode,

    /// Fuel units between yield points in the async lane (about 1 unit per wasm instruction).
    #[arg(long, env = "FNHOST_YIELD_FUEL", default_value_t = DEFAULT_YIELD_FUEL, value_parser = clap::value_parser!(u64).range(1_000..), value_name = "N")]
    pub(super) yield_fuel: u64,

    /// CPU budget per invocation in fuel units (504 beyond); none by default.
    #[arg(long, env = "FNHOST_MAX_FUEL", value_parser = clap::value_parser!(u64).range(1..), value_name = "N")]
    pub(super) max_fuel: Option<u64>,

    /// Threads of the sync lane, or auto: start at min(32, cores + 4), then grow while calls queue and the cores have room (up to 256, and within --threads-memory), take back threads that stop adding throughput, shrink to the cores for work that needs them, and shrink when idle, not below the start [default: auto].
    #[arg(long, env = "FNHOST_THREADPOOL_THREAD_COUNT", value_parser = ThreadCount::parse, value_name = "N|auto")]
    pub(super) threads: Option<ThreadCount>,

    /// Calls that may wait for a sync-lane thread; beyond, 503 with Retry-After [default: 64 × starting threads].
    #[arg(long, env = "FNHOST_QUEUE_DEPTH", value_parser = clap::value_parser!(u64).range(1..=1_000_000), value_name = "N")]
    pub(super) queue_depth: Option<u64>,

    /// Longest a call waits for a sync-lane thread before 503 with Retry-After [default: 5s, or half of --timeout if shorter].
    #[arg(long, env = "FNHOST_QUEUE_TIMEOUT", value_parser = parse_nonzero_duration, value_name = "DURATION")]
    pub(super) queue_timeout: Option<Duration>,

    /// Calls one instance may serve before it is replaced [default: 1 (a fresh instance per call), or 1000 for components with 8 MiB or more of initial memory (Python, JavaScript); 128 for smaller WASIp3 components].
    #[arg(long, env = "FNHOST_INSTANCE_REUSE", value_parser = clap::value_parser!(u32).range(1..), value_name = "N")]
    pub(super) instance_reuse: Option<u32>,

    /// Calls one WASIp3 instance may run at once.
    #[arg(long, env = "FNHOST_MAX_CONCURRENT_REUSE", default_value_t = DEFAULT_MAX_CONCURRENT_REUSE, value_parser = clap::value_parser!(u32).range(1..), value_name = "N")]
    pub(super) max_concurrent_reuse: u32,

    /// Refuse calls beyond an adaptive limit at once (503 with Retry-After) when calls wait for the machine more than a quarter of their service time, so admitted calls keep about unloaded latency; not for WASIp3 components.
    #[arg(long, env = "FNHOST_LOAD_SHEDDING", default_value = "off", value_parser = parse_on_off, action = clap::ArgAction::Set, value_name = "on|off")]
    pub(super) load_shedding: bool,

    /// Linear memory per instance (500 with fnhost-error: memory beyond).
    #[arg(long, env = "FNHOST_MAX_MEMORY", default_value = "128MiB", value_parser = parse_size, value_name = "SIZE")]
    pub(super) max_memory: u64,

    /// Largest component file fnhost reads (checked before reading or compiling).
    #[arg(long, env = "FNHOST_MAX_COMPONENT_SIZE", default_value = "64MiB", value_parser = parse_size, value_name = "SIZE")]
    pub(super) max_component_size: u64,

    /// What one invocation may write to stdout and stderr together; the rest is cut after a marker line.
    #[arg(long, env = "FNHOST_MAX_GUEST_OUTPUT", default_value = "1MiB", value_parser = parse_size, value_name = "SIZE")]
    pub(super) max_guest_output: u64,

    /// Origin the guest may send HTTP requests to, e.g. https://api.example.com (repeatable; none by default).
    #[arg(long = "allow-outbound", env = "FNHOST_ALLOW_OUTBOUND", value_delimiter = ',', value_parser = parse_origin, value_name = "URL")]
    pub(super) allow_outbound: Vec<Origin>,

    /// Environment variable the guest sees (repeatable; none by default).
    #[arg(long = "env", value_parser = parse_env_pair, value_name = "K=V")]
    pub(super) env: Vec<(String, String)>,

    /// Host directory the guest may use, at GUEST path (repeatable; none by default).
    #[arg(long = "dir", value_parser = parse_dir_grant, value_name = "HOST::GUEST")]
    pub(super) dir: Vec<DirGrant>,

    /// Time in-flight requests get to finish after SIGTERM/SIGINT.
    #[arg(long, env = "FNHOST_GRACE", default_value = "30s", value_parser = parse_duration, value_name = "DUR")]
    pub(super) grace: Duration,

    /// Folder of the compile cache [default: $XDG_CACHE_HOME/fnhost or ~/.cache/fnhost].
    #[arg(long, env = "FNHOST_CACHE_DIR", value_name = "DIR")]
    pub(super) cache_dir: Option<PathBuf>,

    /// Compile the component on every start; neither read nor write the cache.
    #[arg(long)]
    pub(super) no_cache: bool,

    /// Worker processes that run the guests, N or MIN..MAX (scaled on queue length, message age and HTTP concurrency), each from 1 to 64.
    #[arg(long, env = "FNHOST_WORKER_PROCESS_COUNT", default_value = "1", value_parser = WorkerCount::parse, value_name = "N|MIN..MAX")]
    pub(super) workers: WorkerCount,

    /// Hand each client connection to a worker, which then serves it with no hop through this process (on), or forward every request over the worker's channel (off). An app with a max_concurrent cap and more than one worker always forwards: the cap is the host's, and only the supervisor sees every call.
    #[arg(long, env = "FNHOST_CONNECTION_HANDOFF", default_value = "on", value_parser = parse_on_off, action = clap::ArgAction::Set, value_name = "on|off")]
    pub(super) connection_handoff: bool,

    /// With --workers MIN..MAX: how long fewer workers must suffice before some are stopped.
    #[arg(long, env = "FNHOST_SCALE_COOLDOWN", default_value = "60s", value_parser = parse_duration, value_name = "DUR")]
    pub(super) scale_cooldown: Duration,

    /// Feed the component's queue handler from this queue: a NAME in the embedded store, or redis://HOST:PORT/STREAM.
    #[arg(long, env = "FNHOST_QUEUE", value_parser = parse_queue, value_name = "NAME|URL")]
    pub(super) queue: Option<QueueSpec>,

    /// Folder of the embedded queue store.
    #[arg(long, env = "FNHOST_DATA_DIR", default_value = DEFAULT_DATA_DIR, value_name = "DIR")]
    pub(super) data_dir: PathBuf,

    /// Queue messages fetched at once per worker.
    #[arg(long, env = "FNHOST_BATCH_SIZE", default_value_t = DEFAULT_BATCH_SIZE as u64, value_parser = clap::value_parser!(u64).range(1..=MAX_BATCH_SIZE as u64), value_name = "N")]
    pub(super) batch_size: u64,

    /// Messages in flight per worker at which the next batch is fetched [default: batch size / 2].
    #[arg(long, env = "FNHOST_NEW_BATCH_THRESHOLD", value_parser = clap::value_parser!(u64).range(0..=MAX_BATCH_SIZE as u64), value_name = "N")]
    pub(super) new_batch_threshold: Option<u64>,

    /// How long a fetched message stays invisible to other consumers (renewed while its handler runs); at least 1s.
    #[arg(long, env = "FNHOST_VISIBILITY_TIMEOUT", default_value = "30s", value_parser = parse_visibility, value_name = "DUR")]
    pub(super) visibility_timeout: Duration,

    /// Failed deliveries after which a message moves to <queue>-poison.
    #[arg(long, env = "FNHOST_MAX_DEQUEUE_COUNT", default_value_t = DEFAULT_MAX_DEQUEUE_COUNT, value_parser = clap::value_parser!(u32).range(1..=1000), value_name = "N")]
    pub(super) max_dequeue_count: u32,

    /// Address of the admin endpoint (/health, /ready, /workers, /functions, /metrics, POST /reload, POST /drain); off unless set.
    #[arg(long, env = "FNHOST_ADMIN", value_name = "ADDR")]
    pub(super) admin: Option<SocketAddr>,

    /// Writable memory per worker process (RLIMIT_DATA); none by default.
    #[arg(long, env = "FNHOST_WORKER_MEMORY", value_parser = parse_size, value_name = "SIZE")]
    pub(super) worker_memory: Option<u64>,

    /// Resident memory --threads auto may fill per process: it adds sync-lane threads only while the process stays within it, and takes threads back when it is over [default: half the memory the host may use (its cgroup's limit or the machine's), divided among the worker processes, and at most --worker-memory].
    #[arg(long, env = "FNHOST_THREADS_MEMORY", value_parser = parse_size, value_name = "SIZE")]
    pub(super) threads_memory: Option<u64>,

    /// Run guests inside this process instead of worker processes: no crash
    /// isolation, no admin endpoint, no queue trigger (SIGHUP still redeploys). For embedding-like setups and benchmarks.
    #[arg(long, conflicts_with_all = ["workers", "admin", "worker_memory", "queue"])]
    pub(super) in_process: bool,

    /// Redeploy when the manifest or a component file changes (as POST /reload and SIGHUP do).
    #[arg(long, env = "FNHOST_WATCH", conflicts_with = "in_process")]
    pub(super) watch: bool,
}

impl ServeCommand {
    /// Resolves the settings into a [`HostConfig`].
    fn config(&self) -> HostConfig {
        let defaults = HostConfig::default();
        HostConfig {
            listen: self.listen,
            http: HttpLimits {
                max_body: self.max_body,
                header_read_timeout: self.header_timeout,
                write_timeout: self.write_timeout,
                ..HttpLimits::default()
            },
            invocation: InvocationLimits {
                timeout: self.timeout,
                max_memory: self.max_memory,
                max_output: self.max_guest_output,
            },
            execution: {
                let threads = self.threads.unwrap_or(ThreadCount::Auto);
                ExecutionConfig {
                    mode: self.mode,
                    yield_fuel: self.yield_fuel,
                    max_fuel: self.max_fuel,
                    threads,
                    queue_depth: self
                        .queue_depth
                        .map_or(threads.default_queue_depth(), |depth| depth as usize),
                    queue_timeout: self.queue_timeout,
                    instance_reuse: self.instance_reuse,
                    max_concurrent_reuse: self.max_concurrent_reuse,
                    load_shedding: self.load_shedding,
                }
            },
            grants: GuestGrants {
                env: self.env.clone(),
                dirs: self.dir.clone(),
                outbound: self.allow_outbound.clone(),
            },
            cache_dir: if self.no_cache {
                None
            } else {
                self.cache_dir.clone().or(defaults.cache_dir)
            },
            grace: self.grace,
            max_component_size: self.max_component_size,
        }
    }

    /// Serves until a signal, then drains: through worker processes, or in
    /// this process with `--in-process`. `matches` says which settings the
    /// user gave as flags or environment variables (they win over the
    /// manifest).
    pub fn execute(self, matches: &ArgMatches) -> anyhow::Result<ExitCode> {
        let given: Arc<HashSet<String>> = Arc::new(
            matches
                .ids()
                .filter(|id| {
                    matches!(
                        matches.value_source(id.as_str()),
                        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
                    )
                })
                .map(|id| id.as_str().to_string())
                .collect(),
        );
        let (command, functions) = self.read_app(&given, None)?;
        let reload = ReloadSource {
            manifest: command.manifest_path(),
            read: {
                let original = self.clone();
                // The queue keeps the data folder it opened, whatever a
                // later manifest says: grants stay away from that one.
                let data_dir = command.data_dir.clone();
                Arc::new(move || {
                    original
                        .read_app(&given, Some(&data_dir))
                        .map(|(_, functions)| functions)
                })
            },
        };
        command.run(functions, reload)
    }

    /// Reads and checks the app as the flags and the manifest say: the
    /// settings with the manifest's `[host]` applied, and the functions.
    fn read_app(
        &self,
        given: &HashSet<String>,
        running_data_dir: Option<&std::path::Path>,
    ) -> anyhow::Result<(ServeCommand, Vec<FunctionSpec>)> {
        let mut command = self.clone();
        let functions = command.functions(&|id| given.contains(id))?;
        for function in &functions {
            command.refuse_unsafe_dirs(function, &functions, running_data_dir)?;
        }
        Ok((command, functions))
    }

    /// The manifest the app comes from, if any.
    fn manifest_path(&self) -> Option<PathBuf> {
        match &self.path {
            None => Some(PathBuf::from(manifest::MANIFEST_FILE)),
            Some(path) if manifest::is_manifest(path) => Some(path.clone()),
            Some(_) => None,
        }
    }

    /// Serves `functions` as these settings say, until a signal.
    fn run(self, functions: Vec<FunctionSpec>, reload: ReloadSource) -> anyhow::Result<ExitCode> {
        let config = self.config();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(fnhost::config::cores())
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        if self.in_process {
            self.serve_in_process(runtime, config, functions, reload)
        } else {
            self.supervise(runtime, config, functions, reload)
        }
    }

    /// The app to serve: the manifest's functions (its `[host]` settings
    /// applied to `self` where no flag or variable set them), or the one
    /// component, which takes every path.
    fn functions(&mut self, explicit: &dyn Fn(&str) -> bool) -> anyhow::Result<Vec<FunctionSpec>> {
        let path = match self.path.clone() {
            Some(path) => path,
            None => {
                let default = PathBuf::from(manifest::MANIFEST_FILE);
                if !default.exists() {
                    anyhow::bail!(
                        "no component or manifest given, and there is no {} here (try `fnhost serve app.wasm`)",
                        manifest::MANIFEST_FILE
                    );
                }
                default
            }
        };
        if !manifest::is_manifest(&path) {
            return Ok(vec![FunctionSpec {
                name: fnhost::app::name_from_path(&path),
                component: path,
                route: Some(Route::everything()),
                queue: self.queue.clone(),
                config: self.config(),
                max_concurrent: None,
                implicit_route: self.queue.is_some(),
            }]);
        }
        let manifest = manifest::load(&path)?;
        if self.queue.is_some() {
            anyhow::bail!(
                "--queue: {} is a manifest; give the function its queue there (`queue = \"NAME\"`)",
                path.display()
            );
        }
        crate::cli::app::apply_host(self, &manifest.host, explicit);
        if self.in_process && (manifest.host.workers.is_some() || manifest.host.admin.is_some()) {
            anyhow::bail!(
                "{}: --in-process runs no worker processes and no admin endpoint; drop `workers` and `admin` from [host]",
                path.display()
            );
        }
        Ok(manifest
            .functions
            .iter()
            .map(|entry| {
                let mut settings = self.clone();
                crate::cli::app::apply_function(&mut settings, &manifest.host.functions, explicit);
                crate::cli::app::apply_function(&mut settings, &entry.settings, explicit);
                FunctionSpec {
                    name: entry.name.clone(),
                    component: entry.component.clone(),
                    route: entry.route.clone(),
                    queue: entry.queue.clone(),
                    config: settings.config(),
                    max_concurrent: entry
                        .settings
                        .max_concurrent
                        .or(manifest.host.functions.max_concurrent),
                    implicit_route: false,
                }
            })
            .collect())
    }

    /// Refuses `function`'s `--dir` grants that would hand its guests the
    /// host: fnhost's own folders or any function's component file.
    fn refuse_unsafe_dirs(
        &self,
        function: &FunctionSpec,
        functions: &[FunctionSpec],
        running_data_dir: Option<&std::path::Path>,
    ) -> anyhow::Result<()> {
        let config = &function.config;
        let mut protected: Vec<(&std::path::Path, &str)> = functions
            .iter()
            .map(|f| (f.component.as_path(), "component file"))
            .collect();
        // A guest that could rewrite the manifest could grant itself more.
        let manifest = self.manifest_path();
        if let Some(manifest) = &manifest {
            protected.push((manifest.as_path(), "manifest"));
        }
        // The data folder holds the embedded queue store, when there is a queue.
        if functions.iter().any(|f| f.queue.is_some()) {
            protected.push((self.data_dir.as_path(), "data folder"));
            protected.extend(running_data_dir.map(|dir| (dir, "data folder")));
        }
        if let Some(cache) = &config.cache_dir {
            protected.push((cache.as_path(), "compile cache"));
        }
        if let Err((path, reason)) =
            fnhost::config::refuse_unsafe_dirs(&config.grants.dirs, &protected)
        {
            if let Some(manifest) = &manifest {
                anyhow::bail!(
                    "{}: function {}: dir {}: {reason}",
                    manifest.display(),
                    function.name,
                    path.display()
                );
            }
            anyhow::bail!("--dir {}: {reason}", path.display());
        }
        Ok(())
    }

    /// Checks the components, binds, and runs the supervisor.
    fn supervise(
        self,
        runtime: tokio::runtime::Runtime,
        host: HostConfig,
        functions: Vec<FunctionSpec>,
        reload: ReloadSource,
    ) -> anyhow::Result<ExitCode> {
        // The supervisor checks what needs no compiling (each file exists,
        // is a component, fits the caps) before any process starts; the
        // first worker reports the rest (no handler, link errors) before
        // any port opens, and the supervisor exits 2.
        let queue = fnhost::app::queue_function(&functions).map(|index| QueueBinding {
            spec: functions[index]
                .queue
                .clone()
                .expect("the queue function has a queue"),
            data_dir: self.data_dir.clone(),
            settings: QueueSettings {
                batch_size: self.batch_size as usize,
                new_batch_threshold: self
                    .new_batch_threshold
                    .map_or(self.batch_size as usize / 2, |n| n as usize),
                visibility_timeout: self.visibility_timeout,
                max_dequeue_count: self.max_dequeue_count,
            },
        });
        let listen = host.listen;
        let capped = functions.iter().any(|f| f.max_concurrent.is_some());
        let handoff = self.connection_handoff && !(capped && self.workers.max > 1);
        if self.connection_handoff && !handoff {
            tracing::info!(
                "requests are forwarded to the workers, not their connections handed over: a max_concurrent cap over more than one worker needs every call to pass the supervisor"
            );
        }
        let config = SupervisorConfig {
            functions,
            host,
            workers: self.workers,
            scale_cooldown: self.scale_cooldown,
            queue,
            limits: WorkerLimits {
                memory: self.worker_memory,
                threads_memory: self.threads_memory,
            },
            log_filter: std::env::var("RUST_LOG")
                .unwrap_or_else(|_| DEFAULT_LOG_FILTER.to_string()),
            reload: Some(reload),
            watch: self.watch,
            handoff,
        };
        runtime.block_on(Supervisor::run(
            config,
            listen,
            self.admin,
            shutdown_signal(),
        ))
    }

    /// Loads the functions into this process, binds, serves until a
    /// signal, drains.
    fn serve_in_process(
        self,
        runtime: tokio::runtime::Runtime,
        config: HostConfig,
        functions: Vec<FunctionSpec>,
        reload: ReloadSource,
    ) -> anyhow::Result<ExitCode> {
        if let Some(function) = functions.iter().find(|f| f.queue.is_some()) {
            anyhow::bail!(
                "function {}: --in-process has no queue trigger; serve the app with worker processes",
                function.name
            );
        }
        fnhost::exec::memory_budget::configure(fnhost::exec::memory_budget::BudgetSettings {
            explicit: self.threads_memory,
            processes: 1,
            worker_memory: None,
        });
        let what = fnhost::supervisor::describe_functions(&functions);
        let single = functions.len() == 1;
        let app = {
            let _entered = runtime.enter();
            Arc::new(
                AppHost::build(functions, config.http.clone(), config.grace).map_err(|e| {
                    if single {
                        anyhow::anyhow!("{}", e.error)
                    } else {
                        anyhow::anyhow!("{e}")
                    }
                })?,
            )
        };
        for (spec, load) in app.describe() {
            if single {
                tracing::info!("{load}");
            } else {
                tracing::info!("function {}: {load}", spec.name);
            }
        }
        runtime.spawn(reload_in_process_on_hangup(app.clone(), reload));
        runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("--listen {}: cannot bind", config.listen))?;
            let address = listener.local_addr()?;
            tracing::info!("serving {what} on http://{address} in process");
            let drained = app.serve(listener, shutdown_signal()).await;
            fnhost::exec::flush_guest_output(std::time::Duration::from_secs(1));
            if drained {
                tracing::info!("drained; exiting");
            } else {
                tracing::warn!("grace period over with requests still in flight; exiting");
            }
            Ok(ExitCode::SUCCESS)
        })
    }
}

/// `SIGHUP` with `--in-process`: reads the app again and swaps it in;
/// calls already running finish on the old version. A version that fails
/// to read or load is refused with one line, and the old one keeps serving.
async fn reload_in_process_on_hangup(app: Arc<AppHost>, source: ReloadSource) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hangup) = signal(SignalKind::hangup()) else {
        return;
    };
    while hangup.recv().await.is_some() {
        let (app, read) = (app.clone(), source.read.clone());
        // Reading and compiling can take seconds: off the runtime's threads.
        let outcome = tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
            let functions = read()?;
            let what = fnhost::supervisor::describe_functions(&functions);
            app.reload(functions).map_err(|e| anyhow::anyhow!("{e}"))?;
            Ok(what)
        })
        .await;
        match outcome {
            Ok(Ok(what)) => tracing::info!("redeployed: {what} is serving"),
            Ok(Err(error)) => tracing::error!("redeploy (SIGHUP) refused: {error:#}"),
            Err(error) => tracing::error!("redeploy (SIGHUP) failed: {error}"),
        }
    }
}

/// Parses `--visibility-timeout`: a duration of at least
/// [`MIN_VISIBILITY_TIMEOUT`].
fn parse_visibility(text: &str) -> Result<Duration, String> {
    let duration = parse_duration(text)?;
    if duration < MIN_VISIBILITY_TIMEOUT {
        return Err(format!(
            "`{text}` is shorter than {} s (a message could be fetched again while it runs)",
            MIN_VISIBILITY_TIMEOUT.as_secs()
        ));
    }
    Ok(duration)
}

/// Parses `--queue`.
fn parse_queue(text: &str) -> Result<QueueSpec, String> {
    QueueSpec::parse(text).map_err(|e| e.to_string())
}

/// Resolves on the first SIGINT or SIGTERM. A second signal while draining
/// exits at once, for the operator who does not want to wait.
async fn shutdown_signal() {
    wait_for_signal().await;
    tracing::info!("shutdown signal received (send another to exit immediately)");
    tokio::spawn(async {
        wait_for_signal().await;
        tracing::warn!("second signal: exiting without waiting for in-flight requests");
        std::process::exit(130);
    });
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut interrupt = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
}

/// A duration that is more than zero (a zero wait would refuse every call).
fn parse_nonzero_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        duration if duration.is_zero() => Err(format!("`{text}` must be more than zero")),
        duration => Ok(duration),
    }
}
