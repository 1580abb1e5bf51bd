//! The app as the supervisor serves it: numbered versions (a redeploy
//! makes the next one), the current one swapped atomically, and what
//! `GET /functions` shows.

use super::pool::{FunctionLive, FunctionPool, WorkerPool};
use crate::app::{AppDispatch, FunctionSpec};
use crate::ipc::FunctionInit;
use serde::Serialize;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock, RwLock};

/// One version of the app: its functions, their routing and counts.
pub struct Generation {
    /// The version's number, counted from 1 for the app the host started with.
    pub id: u64,
    /// Its functions.
    pub functions: Vec<FunctionSpec>,
    /// Each function's lane and counts.
    pub live: Vec<Arc<FunctionLive>>,
    /// Each function's component version (first 12 hex digits of its
    /// SHA-256), hashed off the start-up path: a 20 MB CPython component
    /// takes about 12 ms.
    pub versions: Vec<Arc<OnceLock<String>>>,
    /// Routes its invocations to the workers that have it loaded.
    pub app: Arc<AppDispatch>,
}

impl Generation {
    /// Version `id` of the app: reads each component (the size and memory
    /// caps, its lane marker, its hash) and builds the routing. Errors are
    /// one line naming the file or the routes.
    pub fn new(
        id: u64,
        functions: Vec<FunctionSpec>,
        pool: &Arc<WorkerPool>,
    ) -> anyhow::Result<Self> {
        let mut live = Vec::with_capacity(functions.len());
        let mut versions = Vec::with_capacity(functions.len());
        for function in &functions {
            let file = crate::component::read_checked(
                &function.component,
                function.config.max_component_size,
                function.config.invocation.max_memory,
            )?;
            let lane = file.lane(function.config.execution.mode);
            live.push(Arc::new(FunctionLive::new(&function.name, lane)));
            let version = Arc::new(OnceLock::new());
            let (slot, bytes) = (version.clone(), file.bytes);
            tokio::task::spawn_blocking(move || slot.set(crate::app::content_version(&bytes)));
            versions.push(version);
        }
        let app = crate::app::app_dispatch(&functions, |index, function| {
            Arc::new(FunctionPool::new(
                pool.clone(),
                id,
                index as u32,
                live[index].clone(),
                function.config.invocation.timeout,
            ))
        })
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(Self {
            id,
            functions,
            live,
            versions,
            app: Arc::new(app),
        })
    }

    /// What a worker needs to load this version.
    pub fn inits(&self) -> Vec<FunctionInit> {
        self.functions
            .iter()
            .map(|function| FunctionInit {
                name: function.name.clone(),
                component: function.component.clone(),
                config: function.config.clone(),
                http_bound: function.needs_http(),
                queue_bound: function.queue.is_some(),
                route: function.route.clone(),
                max_concurrent: function.max_concurrent,
            })
            .collect()
    }

    /// One row per function for `GET /functions`.
    pub fn status(&self) -> Vec<FunctionStatus> {
        self.functions
            .iter()
            .enumerate()
            .map(|(index, spec)| {
                let live = &self.live[index];
                let execution = &spec.config.execution;
                FunctionStatus {
                    name: spec.name.clone(),
                    app_version: self.id,
                    component: spec.component.display().to_string(),
                    version: self.versions[index]
                        .get()
                        .cloned()
                        .unwrap_or_else(|| "hashing".to_string()),
                    route: spec.route.as_ref().map(ToString::to_string),
                    queue: spec.queue.as_ref().map(|q| q.name().to_string()),
                    lane: live.lane.to_string(),
                    settings: FunctionSettingsView {
                        mode: format!("{:?}", execution.mode).to_lowercase(),
                        timeout_ms: spec.config.invocation.timeout.as_millis() as u64,
                        max_memory: spec.config.invocation.max_memory,
                        max_fuel: execution.max_fuel,
                        threads: execution.threads.to_string(),
                        load_shedding: execution.load_shedding,
                        instance_reuse: execution.instance_reuse,
                        max_concurrent: spec.max_concurrent,
                    },
                    running: self.app.running(index),
                    completed: live.completed.load(Ordering::Relaxed),
                    failures: live.failures.load(Ordering::Relaxed),
                    profile: ProfileView::of(live),
                }
            })
            .collect()
    }
}

impl crate::app::dispatch::AppVersion for Generation {
    fn router(&self) -> &AppDispatch {
        &self.app
    }
}

/// The version new invocations go to; a redeploy replaces it. A clone
/// sees the same version.
#[derive(Clone)]
pub struct Current(Arc<RwLock<Arc<Generation>>>);

impl Current {
    /// Starts at `generation`.
    pub fn new(generation: Arc<Generation>) -> Self {
        Self(Arc::new(RwLock::new(generation)))
    }

    /// The current version.
    pub fn get(&self) -> Arc<Generation> {
        self.0.read().expect("current version").clone()
    }

    /// Makes `generation` current; returns the one it replaces.
    pub fn replace(&self, generation: Arc<Generation>) -> Arc<Generation> {
        std::mem::replace(&mut *self.0.write().expect("current version"), generation)
    }

    /// The supervisor's dispatch: each invocation goes to the version
    /// current when it arrives.
    pub fn dispatch(&self) -> CurrentDispatch {
        crate::app::dispatch::CurrentVersion(self.0.clone())
    }
}

/// The supervisor's dispatch (see [`Current::dispatch`]).
pub type CurrentDispatch = crate::app::dispatch::CurrentVersion<Generation>;

/// A row of `GET /functions`.
#[derive(Debug, Serialize)]
pub struct FunctionStatus {
    /// The function's name.
    pub name: String,
    /// The app version it belongs to (1 at start; each redeploy attempt
    /// takes the next number, so a refused one leaves a gap).
    pub app_version: u64,
    /// Its component file.
    pub component: String,
    /// The component's version: the first 12 hex digits of its SHA-256
    /// (`hashing` for the moment after it loads).
    pub version: String,
    /// Its HTTP route, if any.
    pub route: Option<String>,
    /// The queue that feeds it, if any.
    pub queue: Option<String>,
    /// The lane it runs in.
    pub lane: String,
    /// Its settings.
    pub settings: FunctionSettingsView,
    /// Invocations holding a slot of its `max_concurrent` cap now (`None`
    /// without a cap).
    pub running: Option<usize>,
    /// Invocations of this version finished, any outcome, across workers.
    pub completed: u64,
    /// Of those, the ones that failed.
    pub failures: u64,
    /// What its calls cost, and what that says about how to run it.
    pub profile: ProfileView,
}

/// A function's profile as `GET /functions` and `fnhost top` show it.
#[derive(Debug, Serialize)]
pub struct ProfileView {
    /// Calls the workers measured.
    pub calls: u64,
    /// Mean time from dispatch to the end of the response, in ms.
    pub mean_wall_ms: f64,
    /// Mean CPU per call on the worker's threads, in ms.
    pub mean_cpu_ms: f64,
    /// Mean time waiting for a sync-lane thread, in ms.
    pub mean_queued_ms: f64,
    /// CPU over the time a call was being served (wall minus queued).
    pub cpu_share: f64,
    /// Calls running now.
    pub in_flight: usize,
    /// Sync-lane threads running now, summed over the workers (0 in the
    /// async lane).
    pub sync_threads: u64,
    /// Changes `--threads auto` made to them (each is in the log with
    /// its reason).
    pub thread_changes: u64,
    /// The most calls that ran at once.
    pub peak_in_flight: usize,
    /// `io-bound`, `cpu-bound`, `mixed`, or `unknown` before any call.
    pub class: &'static str,
    /// The seed's advice for a function of this class, computed for this
    /// machine: sync-lane threads per worker ...
    pub advised_threads: usize,
    /// ... and worker processes.
    pub advised_workers: usize,
}

/// CPU share at or above which a function is CPU-bound.
pub const CPU_BOUND_SHARE: f64 = 0.6;
/// CPU share at or below which a function is I/O-bound.
pub const IO_BOUND_SHARE: f64 = 0.25;

impl ProfileView {
    fn of(live: &FunctionLive) -> Self {
        let measured = *live.profile.lock().expect("profile");
        let completed = live.completed.load(Ordering::Relaxed);
        let per_call = |total: u64, calls: u64| {
            if calls == 0 {
                0.0
            } else {
                total as f64 / calls as f64 / 1e6
            }
        };
        let mean_wall_ms = per_call(live.wall_ns.load(Ordering::Relaxed), completed);
        let mean_cpu_ms = per_call(measured.cpu_ns, measured.calls);
        let mean_queued_ms = per_call(measured.queued_ns, measured.calls);
        let mean_descheduled_ms = per_call(measured.descheduled_ns, measured.calls);
        // Served: neither queued for a thread nor ready without a core.
        let served_ms = (mean_wall_ms - mean_queued_ms - mean_descheduled_ms).max(f64::EPSILON);
        let cpu_share = (mean_cpu_ms / served_ms).min(1.0);
        let class = if measured.calls == 0 || completed == 0 {
            "unknown"
        } else if cpu_share >= CPU_BOUND_SHARE {
            "cpu-bound"
        } else if cpu_share <= IO_BOUND_SHARE {
            "io-bound"
        } else {
            "mixed"
        };
        let (advised_threads, advised_workers) = advice(class, crate::config::cores());
        Self {
            calls: measured.calls,
            mean_wall_ms,
            mean_cpu_ms,
            mean_queued_ms,
            cpu_share,
            in_flight: live.in_flight.load(Ordering::Relaxed),
            sync_threads: measured.sync_threads,
            thread_changes: measured.thread_changes,
            peak_in_flight: live.peak_in_flight.load(Ordering::Relaxed),
            class,
            advised_threads,
            advised_workers,
        }
    }
}

/// Azure's advice for Python apps, for `cores` cores: I/O-bound, threads
/// `cores + 4` in one worker; CPU-bound, one thread in each of `cores`
/// workers (at most 10, as `FUNCTIONS_WORKER_PROCESS_COUNT`); mixed, both.
pub fn advice(class: &str, cores: usize) -> (usize, usize) {
    let workers = cores.clamp(1, 10);
    match class {
        "cpu-bound" => (1, workers),
        "mixed" => (cores + 4, workers),
        _ => (cores + 4, 1),
    }
}

/// The settings `GET /functions` shows for a function.
#[derive(Debug, Serialize)]
pub struct FunctionSettingsView {
    /// `mode`: auto, async or sync.
    pub mode: String,
    /// `timeout` in milliseconds.
    pub timeout_ms: u64,
    /// `max_memory` in bytes.
    pub max_memory: u64,
    /// `max_fuel`, if set.
    pub max_fuel: Option<u64>,
    /// Sync-lane threads: `auto` or a count.
    pub threads: String,
    /// `load_shedding`: on or off.
    pub load_shedding: bool,
    /// `instance_reuse`, if set.
    pub instance_reuse: Option<u32>,
    /// `max_concurrent`, if set.
    pub max_concurrent: Option<usize>,
}

/// What a host serves, for its start-up line: the component served alone,
/// or the app's function names.
pub fn describe_functions(functions: &[FunctionSpec]) -> String {
    match functions {
        [only] if only.route == Some(crate::app::Route::everything()) => {
            only.component.display().to_string()
        }
        _ => format!(
            "functions {}",
            functions
                .iter()
                .map(|function| match (&function.route, &function.queue) {
                    (Some(route), Some(queue)) => {
                        format!("{} ({route}, queue {})", function.name, queue.name())
                    }
                    (Some(route), None) => format!("{} ({route})", function.name),
                    (None, Some(queue)) => format!("{} (queue {})", function.name, queue.name()),
                    (None, None) => function.name.clone(),
                })
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}
