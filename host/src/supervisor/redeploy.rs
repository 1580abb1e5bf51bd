//! Redeploys without dropping a request: `POST /reload`, `SIGHUP` and
//! `--watch` read the app again (the manifest, or the one component), load
//! the new version in every worker next to the running one, and only when
//! all have it, make it current. Invocations already running finish on
//! their version; workers drop the old one once nothing can send it new
//! work. A version that fails to load anywhere is dropped and the old one
//! keeps serving.

use super::Supervisor;
use super::app::Generation;
use super::pool::WorkerLink;
use crate::app::FunctionSpec;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Quiet time after a file change before `--watch` redeploys (editors and
/// copies write in several steps).
pub const WATCH_DEBOUNCE: Duration = Duration::from_millis(300);
/// Longest a retired version may stay loaded waiting for invocations that
/// picked it just before the switch (they hold it only until their
/// response head).
const RELEASE_WAIT: Duration = Duration::from_secs(60);

/// Reads the app again for a redeploy.
#[derive(Clone)]
pub struct ReloadSource {
    /// Reads and validates the app (manifest or component) as at start,
    /// with the same flags.
    pub read: Arc<dyn Fn() -> anyhow::Result<Vec<FunctionSpec>> + Send + Sync>,
    /// The manifest file, when the app comes from one (watched with the
    /// components).
    pub manifest: Option<PathBuf>,
}

impl std::fmt::Debug for ReloadSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadSource")
            .field("manifest", &self.manifest)
            .finish_non_exhaustive()
    }
}

impl Supervisor {
    /// Redeploys: returns the new version's number, or one line saying why
    /// the running version stays.
    pub async fn reload(self: &Arc<Self>) -> Result<u64, String> {
        let _one_at_a_time = self.reloading.lock().await;
        let source = self
            .config
            .reload
            .clone()
            .ok_or_else(|| "this host cannot reload".to_string())?;
        let old = self.current.get();
        // Never reused: a late answer about a refused version cannot be
        // taken for the next one.
        let id = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let pool = self.pool.clone();
        let generation = tokio::task::spawn_blocking(move || {
            let functions = (source.read)()?;
            Generation::new(id, functions, &pool)
        })
        .await
        .map_err(|e| format!("reading the app failed: {e}"))?
        .map_err(|e| format!("{e:#}"))?;
        if self.config.handoff
            && self.config.workers.max > 1
            && generation
                .functions
                .iter()
                .any(|f| f.max_concurrent.is_some())
        {
            return Err(
                "a redeploy cannot add a max_concurrent cap while connections are handed to several workers (restart the host, which then forwards every request)".into(),
            );
        }
        if queues(&generation.functions) != queues(&old.functions) {
            return Err(
                "a redeploy cannot change which function a queue feeds (restart the host)".into(),
            );
        }
        let generation = Arc::new(generation);
        let links: Vec<_> = self
            .pool
            .links()
            .into_iter()
            .filter(|link| !link.is_lost())
            .collect();
        if links.is_empty() {
            return Err("no worker is ready to load it; the running version stays".into());
        }
        let inits = generation.inits();
        let answers = links.iter().map(|link| {
            let answer = link.load(id, inits.clone());
            async move {
                match answer.await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(message)) => Err(message),
                    Err(_) => Err(format!(
                        "worker {} (pid {}) was lost while loading it",
                        link.slot, link.pid
                    )),
                }
            }
        });
        let outcome = tokio::time::timeout(
            super::WORKER_START_TIMEOUT,
            futures_util::future::join_all(answers),
        )
        .await;
        let failure = match outcome {
            Err(_) => Some(format!(
                "the workers did not load it within {} s",
                super::WORKER_START_TIMEOUT.as_secs()
            )),
            Ok(results) => results.into_iter().find_map(Result::err),
        };
        if let Some(message) = failure {
            for link in &links {
                link.release(id);
            }
            return Err(message);
        }
        {
            let mut versions = self.versions.lock().expect("versions");
            versions.retain(|_, version| version.strong_count() > 0);
            versions.insert(id, Arc::downgrade(&generation));
        }
        let old = self.current.replace(generation.clone());
        self.keep_counts(&old);
        let serving: Vec<_> = self
            .pool
            .links()
            .into_iter()
            .filter(|link| link.has_loaded(id))
            .collect();
        for link in &serving {
            link.serve_version(id);
        }
        // Done once every worker has switched its connections (a flush is
        // answered after the messages before it): a client's next request
        // on a connection it already has then gets the new version.
        futures_util::future::join_all(serving.iter().map(|link| link.flush())).await;
        tracing::info!(
            "redeployed: app version {id} ({}) is serving; version {} finishes what it runs",
            super::describe_functions(&generation.functions),
            old.id
        );
        // A worker that came up during the load has only the old version.
        for link in self.pool.links() {
            if !link.has_loaded(id) {
                self.catch_up(&link, old.id);
            }
        }
        let retired = (old.id, Arc::downgrade(&old));
        drop(old);
        tokio::spawn(release_when_unused(retired, self.pool.clone(), None));
        Ok(id)
    }

    /// Redeploys and logs the outcome (for SIGHUP and `--watch`).
    pub async fn reload_logged(self: &Arc<Self>, why: &str) {
        match self.reload().await {
            Ok(_) => {}
            Err(message) => tracing::error!("redeploy ({why}) refused: {message}"),
        }
    }

    /// Brings a worker that started on version `started_with` to the
    /// current version if a redeploy finished meanwhile.
    pub(super) fn catch_up(&self, link: &Arc<WorkerLink>, started_with: u64) {
        let current = self.current.get();
        if current.id == started_with {
            return;
        }
        let (current, inits) = (current.id, current.inits());
        let answer = link.load(current, inits);
        let link = link.clone();
        let retired = self
            .versions
            .lock()
            .expect("versions")
            .get(&started_with)
            .cloned()
            .unwrap_or_default();
        let pool = self.pool.clone();
        let versions = (*self.current).clone();
        let current_now = move || versions.get().id;
        tokio::spawn(async move {
            match answer.await {
                Ok(Ok(())) => {
                    // Unless a later redeploy has moved on meanwhile (it
                    // tells the workers itself).
                    if current_now() == current {
                        link.serve_version(current);
                    }
                    release_when_unused((started_with, retired), pool, Some(link)).await;
                }
                Ok(Err(message)) => {
                    // It would never be picked again: replace it, and its
                    // replacement starts on the current version.
                    tracing::error!(
                        "worker {} cannot load app version {current}: {message}; replacing it",
                        link.slot
                    );
                    link.recycle();
                }
                Err(_) => {}
            }
        });
    }

    /// Redeploys on SIGHUP until the host stops.
    pub(super) async fn reload_on_hangup(self: Arc<Self>) {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot install a SIGHUP handler; redeploy with POST /reload");
            return;
        };
        loop {
            tokio::select! {
                Some(()) = hangup.recv() => self.reload_logged("SIGHUP").await,
                () = self.stopped() => return,
            }
        }
    }

    /// `--watch`: redeploys when the manifest or a component file changes,
    /// once the files have been quiet for [`WATCH_DEBOUNCE`].
    pub(super) async fn watch_files(self: Arc<Self>) {
        use notify::Watcher;
        let (sender, mut changes) = tokio::sync::mpsc::unbounded_channel();
        let mut watcher = match notify::recommended_watcher(move |event| {
            let _ = sender.send(event);
        }) {
            Ok(watcher) => watcher,
            Err(error) => {
                tracing::error!("--watch: cannot watch files: {error}");
                return;
            }
        };
        let mut watched: Vec<PathBuf> = Vec::new();
        loop {
            let files = self.watched_files();
            // Folders, not files: a file replaced by a rename is a new file.
            let mut folders: Vec<PathBuf> = files
                .iter()
                .filter_map(|file| file.parent().map(PathBuf::from))
                .collect();
            folders.sort();
            folders.dedup();
            if folders != watched {
                for folder in &watched {
                    let _ = watcher.unwatch(folder);
                }
                for folder in &folders {
                    if let Err(error) = watcher.watch(folder, notify::RecursiveMode::NonRecursive) {
                        tracing::warn!("--watch: cannot watch {}: {error}", folder.display());
                    }
                }
                watched = folders;
            }
            // Wait for a change to one of the files, then for quiet.
            loop {
                let event = tokio::select! {
                    event = changes.recv() => event,
                    () = self.stopped() => return,
                };
                let Some(Ok(event)) = event else {
                    if event.is_none() {
                        return;
                    }
                    continue;
                };
                if event.paths.iter().any(|path| files.contains(path)) {
                    break;
                }
            }
            loop {
                match tokio::time::timeout(WATCH_DEBOUNCE, changes.recv()).await {
                    Ok(Some(_)) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            self.reload_logged("a watched file changed").await;
        }
    }

    /// The manifest and the current version's component files.
    fn watched_files(&self) -> Vec<PathBuf> {
        let generation = self.current.get();
        let manifest = self
            .config
            .reload
            .as_ref()
            .and_then(|source| source.manifest.clone());
        manifest
            .into_iter()
            .chain(generation.functions.iter().map(|f| f.component.clone()))
            .map(|path| std::path::absolute(&path).unwrap_or(path))
            .collect()
    }
}

/// Which function each queue feeds, by name (a redeploy keeps them).
fn queues(functions: &[FunctionSpec]) -> Vec<(String, String)> {
    functions
        .iter()
        .filter_map(|f| Some((f.name.clone(), f.queue.as_ref()?.name().to_string())))
        .collect()
}

/// Tells the workers (every one, or `only` that one) to drop version
/// `retired` once no invocation that picked it before the switch is still
/// on its way to a worker: each holds the version until its response head.
async fn release_when_unused(
    retired: (u64, Weak<Generation>),
    pool: Arc<super::pool::WorkerPool>,
    only: Option<Arc<WorkerLink>>,
) {
    let (id, version) = retired;
    let deadline = tokio::time::Instant::now() + RELEASE_WAIT;
    while version.strong_count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let links = match only {
        Some(link) => vec![link],
        None => pool.links(),
    };
    for link in links {
        if link.has_loaded(id) {
            link.release(id);
        }
    }
}
