//! Validated host settings.
//!
//! The CLI (and later the manifest) collects what the user typed; this module
//! holds the resolved [`HostConfig`] every other part of the host reads. An
//! embedder builds a `HostConfig` directly: `HostConfig::default()` is a
//! locked-down host (no environment, no directories, no outbound HTTP).

pub mod parse;

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default HTTP trigger address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default request body limit (`--max-body`): 100 MiB.
pub const DEFAULT_MAX_BODY: u64 = 100 << 20;
/// Default wall-clock limit per invocation (`--timeout`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default linear-memory limit per instance (`--max-memory`): 128 MiB.
pub const DEFAULT_MAX_MEMORY: u64 = 128 << 20;
/// Default cap on a component file's size (`--max-component-size`):
/// 64 MiB, three times the largest componentize-py component seen (20 MB;
/// componentize-js's are about 13 MB). Checked before anything is read or
/// compiled.
pub const DEFAULT_MAX_COMPONENT_SIZE: u64 = 64 << 20;
/// Default cap on what one invocation may write to stdout and stderr
/// together (`--max-guest-output`): 1 MiB; beyond it the output is cut,
/// with one marker line.
pub const DEFAULT_MAX_GUEST_OUTPUT: u64 = 1 << 20;
/// Default time in-flight requests get to finish on shutdown (`--grace`).
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);
/// Default fuel between yield points in the async lane (`--yield-fuel`):
/// about 170 µs of guest work on the benchmark machine; see
/// docs/performance.md for the measurement that chose it.
pub const DEFAULT_YIELD_FUEL: u64 = 1_000_000;
/// Default depth of the sync lane's queue (`--queue-depth`), per thread.
pub const DEFAULT_QUEUE_DEPTH_PER_THREAD: usize = 64;
/// Most threads the sync lane may have (`--threads`).
pub const MAX_THREADS: usize = 1024;
/// Most threads `--threads auto` grows a sync lane to: the top of the
/// bench's sweep, a quarter of the instance pool (each thread keeps a
/// warm instance).
pub const AUTO_MAX_THREADS: usize = 256;

/// Everything a host needs to serve, resolved and validated.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HostConfig {
    /// Address of the HTTP trigger.
    pub listen: SocketAddr,
    /// Limits on what clients may send.
    pub http: HttpLimits,
    /// Limits on each invocation.
    pub invocation: InvocationLimits,
    /// Which lane runs guests, and how each lane is sized.
    pub execution: ExecutionConfig,
    /// What guests may see and reach.
    pub grants: GuestGrants,
    /// Where compiled components are cached; `None` compiles on every start.
    pub cache_dir: Option<PathBuf>,
    /// How long in-flight requests may run after a shutdown signal.
    pub grace: Duration,
    /// Largest component file the host reads, in bytes.
    pub max_component_size: u64,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.parse().expect("the default address parses"),
            http: HttpLimits::default(),
            invocation: InvocationLimits::default(),
            execution: ExecutionConfig::default(),
            grants: GuestGrants::default(),
            cache_dir: default_cache_dir(),
            grace: DEFAULT_GRACE,
            max_component_size: DEFAULT_MAX_COMPONENT_SIZE,
        }
    }
}

/// Limits on what an HTTP client may send; over a limit the host answers
/// 413, 414 or 431 without running the guest.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HttpLimits {
    /// Largest request body in bytes (413 beyond).
    pub max_body: u64,
    /// Most header fields in a request (431 beyond).
    pub max_headers: usize,
    /// Largest header section in bytes, names plus values (431 beyond).
    pub max_header_bytes: usize,
    /// Longest request target in bytes (414 beyond).
    pub max_uri_len: usize,
    /// Time a client has to send a complete request head (the connection is
    /// closed after it; this is what stops slow-loris clients).
    pub header_read_timeout: Duration,
    /// Longest a write to a client may wait (a client that stops reading
    /// its response); the connection is closed beyond it.
    pub write_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_body: DEFAULT_MAX_BODY,
            max_headers: 100,
            max_header_bytes: 64 << 10,
            max_uri_len: 8 << 10,
            header_read_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
        }
    }
}

/// Limits that apply to every invocation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InvocationLimits {
    /// Wall clock per invocation, response body included (504 beyond).
    pub timeout: Duration,
    /// Linear memory per instance in bytes (500 `memory` beyond).
    pub max_memory: u64,
    /// Bytes one invocation may write to stdout and stderr together; the
    /// rest is dropped after one marker line.
    pub max_output: u64,
}

impl Default for InvocationLimits {
    fn default() -> Self {
        Self {
            timeout: DEFAULT_TIMEOUT,
            max_memory: DEFAULT_MAX_MEMORY,
            max_output: DEFAULT_MAX_GUEST_OUTPUT,
        }
    }
}

/// The execution lane requested with `--mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// Use the lane the component's marker asks for; async without a marker.
    Auto,
    /// Always the async lane.
    Async,
    /// Always the sync lane.
    Sync,
}

impl std::str::FromStr for Mode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "auto" => Ok(Self::Auto),
            "async" => Ok(Self::Async),
            "sync" => Ok(Self::Sync),
            other => Err(format!("`{other}` is not a mode (use auto, async or sync)")),
        }
    }
}

impl Mode {
    /// The lane to use for a component whose marker says `marker`.
    pub fn resolve(self, marker: Option<Lane>) -> Lane {
        match self {
            Self::Auto => marker.unwrap_or(Lane::Async),
            Self::Async => Lane::Async,
            Self::Sync => Lane::Sync,
        }
    }
}

/// The two ways fnhost runs a guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Lane {
    /// As a future on the tokio event loop, yielding every `--yield-fuel`.
    Async,
    /// On a thread of the bounded sync-lane pool, with the synchronous API.
    Sync,
}

impl std::fmt::Display for Lane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Async => "async",
            Self::Sync => "sync",
        })
    }
}

/// How guests are executed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExecutionConfig {
    /// Which lane (`--mode`).
    pub mode: Mode,
    /// Fuel between yield points in the async lane (`--yield-fuel`).
    pub yield_fuel: u64,
    /// CPU budget per invocation in fuel units (`--max-fuel`); none by default.
    pub max_fuel: Option<u64>,
    /// Threads of the sync lane (`--threads`).
    pub threads: ThreadCount,
    /// Calls that may wait for a sync-lane thread before 503 (`--queue-depth`).
    pub queue_depth: usize,
    /// Longest a call waits for a sync-lane thread before 503 `capacity`
    /// (`--queue-timeout`); `None`: [`default_queue_timeout`] of the
    /// invocation timeout.
    pub queue_timeout: Option<Duration>,
    /// Calls one instance may serve before it is replaced
    /// (`--instance-reuse`), for HTTP calls in either lane (queue messages
    /// always get a fresh instance). Unset: decided from the component's
    /// initial memory (`exec/reuse.rs`), with 1 for small WASIp2
    /// components and [`DEFAULT_P3_INSTANCE_REUSE`] for small WASIp3 ones.
    pub instance_reuse: Option<u32>,
    /// Calls one WASIp3 instance may run at once (`--max-concurrent-reuse`).
    pub max_concurrent_reuse: u32,
    /// Whether calls beyond an adaptive limit are refused with 503 so the
    /// admitted ones keep their latency (`--load-shedding`; `exec/shed.rs`).
    #[serde(default)]
    pub load_shedding: bool,
}

/// How long a call may wait for a sync-lane thread by default: 5 s, or
/// half of `timeout` when that is shorter, so a call that waited still has
/// time to run.
pub fn default_queue_timeout(timeout: Duration) -> Duration {
    (timeout / 2).min(Duration::from_secs(5))
}

/// Calls a WASIp3 instance serves by default before it is replaced, unless
/// its initial memory is large (`exec/reuse.rs`).
pub const DEFAULT_P3_INSTANCE_REUSE: u32 = 128;
/// Calls a WASIp3 instance runs at once by default.
pub const DEFAULT_MAX_CONCURRENT_REUSE: u32 = 16;

impl Default for ExecutionConfig {
    fn default() -> Self {
        let threads = ThreadCount::Auto;
        Self {
            mode: Mode::Auto,
            yield_fuel: DEFAULT_YIELD_FUEL,
            max_fuel: None,
            threads,
            queue_depth: threads.default_queue_depth(),
            queue_timeout: None,
            instance_reuse: None,
            max_concurrent_reuse: DEFAULT_MAX_CONCURRENT_REUSE,
            load_shedding: false,
        }
    }
}

/// The sync lane's starting thread count: `min(32, cores + 4)`, the default
/// of Python's `ThreadPoolExecutor` that Azure Functions' Python worker uses.
pub fn default_threads() -> usize {
    (cores() + 4).min(32)
}

/// How many threads a sync lane has (`--threads`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ThreadCount {
    /// Sized while serving, from 1 to [`AUTO_MAX_THREADS`], starting at
    /// [`default_threads`] (`exec/thread_control.rs`).
    Auto,
    /// Exactly this many.
    Fixed(usize),
}

impl ThreadCount {
    /// Threads the lane starts with.
    pub fn initial(self) -> usize {
        match self {
            Self::Auto => default_threads(),
            Self::Fixed(threads) => threads,
        }
    }

    /// `--queue-depth` when it is not given: [`DEFAULT_QUEUE_DEPTH_PER_THREAD`]
    /// per starting thread.
    pub fn default_queue_depth(self) -> usize {
        self.initial() * DEFAULT_QUEUE_DEPTH_PER_THREAD
    }

    /// Reads `auto` or a count from 1 to [`MAX_THREADS`], as `--threads`
    /// and the manifest's `threads` take it.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text == "auto" {
            return Ok(Self::Auto);
        }
        match text.parse::<usize>() {
            Ok(n) if (1..=MAX_THREADS).contains(&n) => Ok(Self::Fixed(n)),
            _ => Err(format!(
                "`{text}` is not a thread count from 1 to {MAX_THREADS} or auto"
            )),
        }
    }
}

impl std::fmt::Display for ThreadCount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Fixed(threads) => write!(f, "{threads}"),
        }
    }
}

/// CPUs this process may use, asked once: each
/// `std::thread::available_parallelism` call reads the cgroup files again
/// (0.1-0.4 ms each, and start-up made seven of them).
pub fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// What a guest is granted. The default grants nothing.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct GuestGrants {
    /// Environment variables the guest sees (`--env K=V`).
    pub env: Vec<(String, String)>,
    /// Host directories preopened for the guest (`--dir HOST::GUEST`).
    pub dirs: Vec<DirGrant>,
    /// Origins the guest may send HTTP requests to (`--allow-outbound`).
    pub outbound: Vec<Origin>,
}

/// Refuses a directory grant that would hand a guest the host itself: `/`,
/// or a directory that contains or lies inside one of fnhost's own
/// folders (`protected`, each with what it holds): the compile cache holds
/// native code fnhost runs, and the data folder holds the queue store.
/// The component file is protected the same way (a guest could rewrite
/// what every new worker loads), and grants may not overlap: a guest could
/// replace the inner one with a symlink through the outer one, and the
/// next instance would open wherever it points.
/// Paths are compared after resolving symlinks and `..`; a protected
/// folder that does not exist yet is compared by its nearest existing
/// ancestor plus the rest.
pub fn refuse_unsafe_dirs(
    dirs: &[DirGrant],
    protected: &[(&Path, &str)],
) -> Result<(), (PathBuf, String)> {
    let resolved: Vec<PathBuf> = dirs.iter().map(|grant| resolve(&grant.host)).collect();
    for (index, grant) in dirs.iter().enumerate() {
        let host = &resolved[index];
        if let Some(other) = (0..index).find(|&earlier| {
            resolved[earlier].starts_with(host) || host.starts_with(&resolved[earlier])
        }) {
            return Err((
                grant.host.clone(),
                format!(
                    "refused: it overlaps --dir {} (a guest could swap one for a link through the other)",
                    dirs[other].host.display()
                ),
            ));
        }
        if host.parent().is_none() {
            return Err((
                grant.host.clone(),
                "refused: that hands guests the host's whole filesystem".into(),
            ));
        }
        for (folder, holds) in protected {
            let folder = resolve(folder);
            let relation = if folder.starts_with(host) {
                "contains"
            } else if host.starts_with(&folder) {
                "is inside"
            } else {
                continue;
            };
            return Err((
                grant.host.clone(),
                format!(
                    "refused: it {relation} fnhost's {holds} ({})",
                    folder.display()
                ),
            ));
        }
    }
    Ok(())
}

/// `path` made absolute, with symlinks and `..` resolved as far as it exists.
fn resolve(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            return rest.iter().rev().fold(real, |acc, part| acc.join(part));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => return absolute,
        }
    }
}

/// A host directory the guest may use, and the path it sees it at.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DirGrant {
    /// The directory on the host.
    pub host: PathBuf,
    /// The path inside the guest.
    pub guest: String,
}

/// An HTTP origin: scheme, host and port, as in `https://api.example.com:443`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Origin {
    /// `http` or `https`.
    pub scheme: String,
    /// Host name or IP literal, lower-case.
    pub host: String,
    /// Port, with the scheme's default filled in.
    pub port: u16,
}

impl Origin {
    /// Whether `uri` points at this origin.
    pub fn matches(&self, uri: &http::Uri) -> bool {
        let scheme = uri.scheme_str().unwrap_or("https");
        let default_port = if scheme == "https" { 443 } else { 80 };
        let Some(authority) = uri.authority() else {
            return false;
        };
        scheme.eq_ignore_ascii_case(&self.scheme)
            && authority.host().eq_ignore_ascii_case(&self.host)
            && authority.port_u16().unwrap_or(default_port) == self.port
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
    }
}

/// The compile cache folder used when none is configured:
/// `$XDG_CACHE_HOME/fnhost`, else `$HOME/.cache/fnhost`, else none.
pub fn default_cache_dir() -> Option<PathBuf> {
    let non_empty = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(xdg) = non_empty("XDG_CACHE_HOME") {
        return Some(PathBuf::from(xdg).join("fnhost"));
    }
    non_empty("HOME").map(|home| PathBuf::from(home).join(".cache").join("fnhost"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_match_only_their_scheme_host_and_port() {
        let origin = parse::parse_origin("http://127.0.0.1:9000").unwrap();
        assert!(origin.matches(&"http://127.0.0.1:9000/x?y".parse().unwrap()));
        assert!(!origin.matches(&"http://127.0.0.1:9001/".parse().unwrap()));
        assert!(!origin.matches(&"https://127.0.0.1:9000/".parse().unwrap()));
        assert!(!origin.matches(&"http://localhost:9000/".parse().unwrap()));
        let https = parse::parse_origin("https://example.com").unwrap();
        assert!(https.matches(&"https://EXAMPLE.com/".parse().unwrap()));
        assert!(!https.matches(&"http://example.com/".parse().unwrap()));
    }

    #[test]
    fn the_default_config_grants_nothing() {
        let config = HostConfig::default();
        assert!(config.grants.env.is_empty());
        assert!(config.grants.dirs.is_empty());
        assert!(config.grants.outbound.is_empty());
        assert_eq!(config.http.max_body, 100 << 20);
    }
}
