//! Function apps: several named functions behind one host, each a
//! component with its own triggers and settings.
//!
//! The app is what flows from the manifest (`fnhost.toml`, read by
//! [`manifest`]) or a single component through the CLI, the supervisor,
//! the workers and the executors. Routing happens in one place,
//! [`AppDispatch`]: it picks the function for a request's path (404
//! `no-route` when none matches), holds the function's concurrency cap,
//! and hands the invocation to that function's own dispatch. Downstream,
//! each function has its own engine, lanes, stores and limits.

pub mod dispatch;
pub mod host;
pub mod manifest;
pub mod route;

pub use dispatch::{AppDispatch, FunctionDispatch};
pub use host::{AppError, AppHost};
pub use route::{Route, Router};

use crate::config::{DirGrant, HostConfig, Mode, Origin};
use crate::queue::QueueSpec;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Longest function name, in bytes.
pub const MAX_FUNCTION_NAME_LEN: usize = 64;

/// One function of an app, resolved: its settings are final.
#[derive(Clone, Debug)]
pub struct FunctionSpec {
    /// Its name in logs, metrics and `GET /functions`.
    pub name: String,
    /// The component file.
    pub component: PathBuf,
    /// The HTTP route it serves, if any.
    pub route: Option<Route>,
    /// The queue its queue handler is fed from, if any.
    pub queue: Option<QueueSpec>,
    /// The function's settings: the host's, with the function's own
    /// applied (`invocation`, `execution` and `grants` are per function;
    /// the rest is the same for every function).
    pub config: HostConfig,
    /// Invocations of this function that may run at once across the host;
    /// beyond, 503 `capacity` at once. `None`: no cap of its own.
    pub max_concurrent: Option<usize>,
    /// Whether the route was implied rather than asked for: a component
    /// served alone with `--queue` takes every path, and answers 404 there
    /// if it has no HTTP handler.
    pub implicit_route: bool,
}

impl FunctionSpec {
    /// Whether the component must export an HTTP handler.
    pub fn needs_http(&self) -> bool {
        self.route.is_some() && !self.implicit_route
    }
}

/// Checks a function name: 1 to [`MAX_FUNCTION_NAME_LEN`] bytes of ASCII
/// letters, digits, `-` and `_`, starting with a letter (it appears in
/// metric labels and log lines as is).
pub fn check_function_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= MAX_FUNCTION_NAME_LEN
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a function name (1 to {MAX_FUNCTION_NAME_LEN} letters, digits, - or _, starting with a letter)"
        ))
    }
}

/// The name a component served alone gets: its file stem, made a valid
/// function name.
pub fn name_from_path(path: &std::path::Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut name: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(MAX_FUNCTION_NAME_LEN)
        .collect();
    if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        name.insert(0, 'f');
        name.truncate(MAX_FUNCTION_NAME_LEN);
    }
    name
}

/// Settings a manifest may give a function, or every function from
/// `[host]`. Every field is optional: unset means the next source in line
/// decides (flag > environment > function > `[host]` > default). The
/// names are the long flags' with `-` turned into `_`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FunctionSettings {
    /// `mode`: the lane (`auto`, `async`, `sync`).
    pub mode: Option<Mode>,
    /// `timeout`.
    pub timeout: Option<Duration>,
    /// `max_memory`.
    pub max_memory: Option<u64>,
    /// `max_fuel`: CPU budget per invocation.
    pub max_fuel: Option<u64>,
    /// `yield_fuel`.
    pub yield_fuel: Option<u64>,
    /// `threads` of the sync lane.
    pub threads: Option<crate::config::ThreadCount>,
    /// `queue_depth` of the sync lane.
    pub queue_depth: Option<usize>,
    /// `queue_timeout` of the sync lane.
    pub queue_timeout: Option<Duration>,
    /// `instance_reuse`.
    pub instance_reuse: Option<u32>,
    /// `max_concurrent_reuse` (WASIp3).
    pub max_concurrent_reuse: Option<u32>,
    /// `load_shedding`.
    pub load_shedding: Option<bool>,
    /// `max_guest_output`.
    pub max_guest_output: Option<u64>,
    /// `env`: a table of variables the guest sees.
    pub env: Option<Vec<(String, String)>>,
    /// `dir`: `HOST::GUEST` grants; host paths relative to the manifest.
    pub dir: Option<Vec<DirGrant>>,
    /// `allow_outbound`: origins the guest may call.
    pub allow_outbound: Option<Vec<Origin>>,
    /// `max_concurrent`: invocations of the function at once (503 beyond).
    pub max_concurrent: Option<usize>,
}

/// The `[host]` table: host-wide settings, plus defaults for every
/// function.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HostSettings {
    /// `listen`.
    pub listen: Option<SocketAddr>,
    /// `admin`.
    pub admin: Option<SocketAddr>,
    /// `workers`: `N` or `MIN..MAX`.
    pub workers: Option<crate::supervisor::WorkerCount>,
    /// `scale_cooldown`.
    pub scale_cooldown: Option<Duration>,
    /// `data_dir`, relative to the manifest.
    pub data_dir: Option<PathBuf>,
    /// `cache_dir`, relative to the manifest.
    pub cache_dir: Option<PathBuf>,
    /// `grace`.
    pub grace: Option<Duration>,
    /// `max_body`.
    pub max_body: Option<u64>,
    /// `header_timeout`.
    pub header_timeout: Option<Duration>,
    /// `write_timeout`.
    pub write_timeout: Option<Duration>,
    /// `max_component_size`.
    pub max_component_size: Option<u64>,
    /// `worker_memory`.
    pub worker_memory: Option<u64>,
    /// Defaults for every function (the same keys a `[[function]]` takes).
    pub functions: FunctionSettings,
}

/// One `[[function]]` of a manifest, as written (paths made absolute).
#[derive(Clone, Debug, PartialEq)]
pub struct FunctionEntry {
    /// `name`.
    pub name: String,
    /// `component`, relative to the manifest's folder.
    pub component: PathBuf,
    /// `route`.
    pub route: Option<Route>,
    /// `queue`: a name in the embedded store or a `redis://` URL.
    pub queue: Option<QueueSpec>,
    /// The function's own settings.
    pub settings: FunctionSettings,
}

/// The router over the functions' routes, by index.
pub fn router(functions: &[FunctionSpec]) -> Result<Router, String> {
    let routes: Vec<(Route, usize)> = functions
        .iter()
        .enumerate()
        .filter_map(|(index, function)| function.route.clone().map(|route| (route, index)))
        .collect();
    Router::new(&routes).map_err(|overlap| {
        let (first, second) = (&functions[overlap.first], &functions[overlap.second]);
        format!(
            "the route {} of function {} overlaps the route {} of function {}",
            second
                .route
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            second.name,
            first
                .route
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            first.name
        )
    })
}

/// The index of the function a queue feeds, if any (an app has at most one).
pub fn queue_function(functions: &[FunctionSpec]) -> Option<usize> {
    functions
        .iter()
        .position(|function| function.queue.is_some())
}

/// The app's [`AppDispatch`], each function's invocations going to what
/// `run` makes for it (its index and spec).
pub fn app_dispatch(
    functions: &[FunctionSpec],
    mut run: impl FnMut(usize, &FunctionSpec) -> std::sync::Arc<dyn crate::Dispatch>,
) -> Result<AppDispatch, String> {
    let router = router(functions)?;
    let entries = functions
        .iter()
        .enumerate()
        .map(|(index, function)| FunctionDispatch {
            name: function.name.as_str().into(),
            dispatch: run(index, function),
            max_concurrent: function.max_concurrent,
        })
        .collect();
    Ok(AppDispatch::new(router, entries, queue_function(functions)))
}

/// A component's version as `GET /functions` shows it: the first 12 hex
/// digits of the SHA-256 of its bytes.
pub fn content_version(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .take(6)
        .map(|byte| format!("{byte:02x}"))
        .collect()
}
