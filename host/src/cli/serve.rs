//! `fnhost serve`: load a component and serve it over HTTP until a signal.

use anyhow::Context;
use clap::Args;
use fnhost::Host;
use fnhost::config::Lane;
use fnhost::config::parse::{
    parse_dir_grant, parse_duration, parse_env_pair, parse_origin, parse_size,
};
use fnhost::config::{
    DEFAULT_LISTEN, DEFAULT_MAX_CONCURRENT_REUSE, DEFAULT_QUEUE_DEPTH_PER_THREAD,
    DEFAULT_YIELD_FUEL, DirGrant, ExecutionConfig, GuestGrants, HostConfig, HttpLimits,
    InvocationLimits, MAX_THREADS, Mode, Origin, default_threads,
};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Settings of `fnhost serve`. Each flag also reads the environment variable
/// named in its help; a flag wins over the variable.
#[derive(Args)]
pub struct ServeCommand {
    /// The component to serve (a .wasm file exporting wasi:http/incoming-handler@0.2.x).
    component: PathBuf,

    /// Address of the HTTP trigger; port 0 picks a free port.
    #[arg(long, env = "FNHOST_LISTEN", default_value = DEFAULT_LISTEN, value_name = "ADDR")]
    listen: SocketAddr,

    /// Largest request body (413 beyond).
    #[arg(long, env = "FNHOST_MAX_BODY", default_value = "100MiB", value_parser = parse_size, value_name = "SIZE")]
    max_body: u64,

    /// Time a client has to send a complete request head before the connection is closed.
    #[arg(long, env = "FNHOST_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration, value_name = "DUR")]
    header_timeout: Duration,

    /// Wall clock per invocation, response body included (504 beyond).
    #[arg(long, env = "FNHOST_TIMEOUT", default_value = "30s", value_parser = parse_duration, value_name = "DUR")]
    timeout: Duration,

    /// Execution lane: auto reads the component's marker (async without one).
    #[arg(
        long,
        env = "FNHOST_MODE",
        default_value = "auto",
        value_name = "auto|async|sync"
    )]
    mode: Mode,

    /// Fuel units between yield points in the async lane (about 1 unit per wasm instruction).
    #[arg(long, env = "FNHOST_YIELD_FUEL", default_value_t = DEFAULT_YIELD_FUEL, value_parser = clap::value_parser!(u64).range(1_000..), value_name = "N")]
    yield_fuel: u64,

    /// CPU budget per invocation in fuel units (504 beyond); none by default.
    #[arg(long, env = "FNHOST_MAX_FUEL", value_parser = clap::value_parser!(u64).range(1..), value_name = "N")]
    max_fuel: Option<u64>,

    /// Threads of the sync lane, or auto [default: min(32, cores + 4)].
    #[arg(long, env = "FNHOST_THREADPOOL_THREAD_COUNT", value_parser = parse_threads, value_name = "N|auto")]
    threads: Option<usize>,

    /// Calls that may wait for a sync-lane thread; beyond, 503 with Retry-After [default: 64 × threads].
    #[arg(long, env = "FNHOST_QUEUE_DEPTH", value_parser = clap::value_parser!(u64).range(1..=1_000_000), value_name = "N")]
    queue_depth: Option<u64>,

    /// Calls one instance may serve before it is replaced [default: 1 in the sync lane (a fresh instance per call), 128 for WASIp3 components].
    #[arg(long, env = "FNHOST_INSTANCE_REUSE", value_parser = clap::value_parser!(u32).range(1..), value_name = "N")]
    instance_reuse: Option<u32>,

    /// Calls one WASIp3 instance may run at once.
    #[arg(long, env = "FNHOST_MAX_CONCURRENT_REUSE", default_value_t = DEFAULT_MAX_CONCURRENT_REUSE, value_parser = clap::value_parser!(u32).range(1..), value_name = "N")]
    max_concurrent_reuse: u32,

    /// Linear memory per instance (500 with fnhost-error: memory beyond).
    #[arg(long, env = "FNHOST_MAX_MEMORY", default_value = "128MiB", value_parser = parse_size, value_name = "SIZE")]
    max_memory: u64,

    /// Origin the guest may send HTTP requests to, e.g. https://api.example.com (repeatable; none by default).
    #[arg(long = "allow-outbound", env = "FNHOST_ALLOW_OUTBOUND", value_delimiter = ',', value_parser = parse_origin, value_name = "URL")]
    allow_outbound: Vec<Origin>,

    /// Environment variable the guest sees (repeatable; none by default).
    #[arg(long = "env", value_parser = parse_env_pair, value_name = "K=V")]
    env: Vec<(String, String)>,

    /// Host directory the guest may use, at GUEST path (repeatable; none by default).
    #[arg(long = "dir", value_parser = parse_dir_grant, value_name = "HOST::GUEST")]
    dir: Vec<DirGrant>,

    /// Time in-flight requests get to finish after SIGTERM/SIGINT.
    #[arg(long, env = "FNHOST_GRACE", default_value = "30s", value_parser = parse_duration, value_name = "DUR")]
    grace: Duration,

    /// Folder of the compile cache [default: $XDG_CACHE_HOME/fnhost or ~/.cache/fnhost].
    #[arg(long, env = "FNHOST_CACHE_DIR", value_name = "DIR")]
    cache_dir: Option<PathBuf>,

    /// Compile the component on every start; neither read nor write the cache.
    #[arg(long)]
    no_cache: bool,
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
                ..HttpLimits::default()
            },
            invocation: InvocationLimits {
                timeout: self.timeout,
                max_memory: self.max_memory,
            },
            execution: {
                let threads = self.threads.unwrap_or_else(default_threads);
                ExecutionConfig {
                    mode: self.mode,
                    yield_fuel: self.yield_fuel,
                    max_fuel: self.max_fuel,
                    threads,
                    queue_depth: self
                        .queue_depth
                        .map_or(threads * DEFAULT_QUEUE_DEPTH_PER_THREAD, |depth| {
                            depth as usize
                        }),
                    instance_reuse: self.instance_reuse,
                    max_concurrent_reuse: self.max_concurrent_reuse,
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
        }
    }

    /// Loads the component, binds, serves until a signal, drains.
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let config = self.config();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        let host = {
            let _entered = runtime.enter();
            Host::builder(config.clone())
                .component(&self.component)
                .build()?
        };
        let summary = host.summary();
        let lane_source = match (config.execution.mode, summary.lane_marker) {
            _ if summary.wasip3 => "WASIp3 components always run in it",
            (Mode::Auto, Some(_)) => "from the component's marker",
            (Mode::Auto, None) => "no marker: the default",
            _ => "from --mode",
        };
        tracing::info!(
            "loaded {} in {} ms ({}; {}; {} allocator); {} lane ({lane_source}){}",
            summary.path.display(),
            summary.load_time.as_millis(),
            summary.handler.describe(),
            if summary.from_cache {
                "compile cache hit"
            } else {
                "compiled"
            },
            summary.allocator,
            summary.lane,
            match summary.lane {
                Lane::Sync => format!(
                    ", {} threads, queue depth {}",
                    config.execution.threads, config.execution.queue_depth
                ),
                Lane::Async if summary.wasip3 => format!(
                    ", up to {} calls at once per instance",
                    config.execution.max_concurrent_reuse
                ),
                Lane::Async => format!(", yield every {} fuel", config.execution.yield_fuel),
            },
        );
        runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("--listen {}: cannot bind", config.listen))?;
            let address = listener.local_addr()?;
            tracing::info!("serving {} on http://{address}", self.component.display());
            let drained = host.serve(listener, shutdown_signal()).await;
            if drained {
                tracing::info!("drained; exiting");
            } else {
                tracing::warn!("grace period over with requests still in flight; exiting");
            }
            Ok(ExitCode::SUCCESS)
        })
    }
}

/// Parses `--threads`: a count from 1 to [`MAX_THREADS`], or `auto`
/// (`min(32, cores + 4)` for now; a later version sizes it from the
/// measured workload).
fn parse_threads(text: &str) -> Result<usize, String> {
    if text == "auto" {
        return Ok(default_threads());
    }
    match text.parse::<usize>() {
        Ok(n) if (1..=MAX_THREADS).contains(&n) => Ok(n),
        _ => Err(format!(
            "`{text}` is not a thread count from 1 to {MAX_THREADS} or auto"
        )),
    }
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
