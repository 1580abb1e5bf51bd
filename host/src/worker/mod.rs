//! The worker process: `fnhost worker`, started by the supervisor, never by
//! hand. It hardens itself ([`harden`]), reads its settings from the
//! channel on fd 3, loads the
//! component into its own engine and lanes, then runs invocations the
//! supervisor sends until told to shut down or the channel closes.

use crate::Host;
use crate::component::one_line;
use crate::invocation::{BodyError, HttpInvocation, InvocationId};
use crate::ipc::{self, ChannelBody, ToSupervisor, ToWorker, WorkerInit, WorkerReady};
use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use http_body_util::{BodyExt, Empty};
use hyper::body::Body as _;
use std::collections::HashMap;
use std::io::Read;
use std::os::fd::RawFd;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::AbortHandle;
use tokio_util::codec::Decoder;

mod connections;
pub mod harden;
mod reports;

/// The file descriptor of the worker's end of the channel.
pub const CHANNEL_FD: RawFd = 3;
/// The file descriptor of the worker's end of the connection channel.
pub const CONNECTIONS_FD: RawFd = 4;
/// The file descriptor of the worker's connection table.
pub const TABLE_FD: RawFd = 5;
/// How often a worker reports its statistics.
const STATS_INTERVAL: Duration = Duration::from_secs(1);

/// How long a worker told to shut down waits for invocations still running.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(3);
/// Longest failure detail sent to the supervisor (the log line's reason).
const MAX_DETAIL_BYTES: usize = 4096;
/// Largest response header section a guest may send (names plus values).
const MAX_RESPONSE_HEADER_BYTES: usize = 256 << 10;

/// Exit code of a worker that could not load the component.
pub const EXIT_START_FAILED: u8 = 2;
/// Exit code of a worker whose channel carried something it cannot read.
pub const EXIT_PROTOCOL: u8 = 3;

/// Runs the worker until shutdown. Logging is set up here from the filter
/// the supervisor sends, as the worker's environment is empty.
pub fn run() -> anyhow::Result<ExitCode> {
    let mut channel = harden::take_channel()?;
    let handoff = harden::take_handoff_fds(&channel)?;
    let init = read_init(&mut channel)?;
    harden::harden(harden::Hardening {
        supervisor: init.supervisor_pid,
        memory: init.memory_limit,
    })?;
    crate::exec::memory_budget::configure(crate::exec::memory_budget::BudgetSettings {
        explicit: init.threads_memory,
        processes: init.worker_processes,
        worker_memory: init.memory_limit,
    });
    init_logging(&init.log_filter);
    let sender_channel = channel.try_clone()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(init.runtime_threads.max(1))
        .enable_all()
        .build()?;
    // On a runtime thread, not this one: the channel's messages and the
    // invocations then share the runtime's threads without extra wake-ups.
    runtime.block_on(async {
        tokio::spawn(serve(init, channel, sender_channel, handoff))
            .await
            .map_err(|e| anyhow::anyhow!("the worker's main task failed: {e}"))?
    })
}

/// Reads the `Init` message with blocking reads (the runtime's size is in it).
fn read_init(channel: &mut UnixStream) -> anyhow::Result<WorkerInit> {
    let mut codec = ipc::MessageCodec::<ToWorker, ()>::default();
    let mut buffer = BytesMut::with_capacity(4096);
    let mut scratch = [0u8; 4096];
    loop {
        if let Some(message) = codec.decode(&mut buffer)? {
            let ToWorker::Init(init) = message else {
                anyhow::bail!("the supervisor's first message was not Init");
            };
            return Ok(*init);
        }
        let read = channel.read(&mut scratch)?;
        if read == 0 {
            anyhow::bail!("the supervisor closed the channel before sending Init");
        }
        buffer.extend_from_slice(&scratch[..read]);
    }
}

/// The log filter when `RUST_LOG` is not set: fnhost at info, the rest at
/// warn, except wasmtime's compiler, whose warnings about a component
/// (a malformed name section, found by the fuzz sweep) come before the
/// one-line error that refuses it and say nothing the error does not.
pub const DEFAULT_LOG_FILTER: &str = "fnhost=info,wasmtime_environ=error,warn";

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .init();
}

/// Invocations running in this worker: how to feed each one's request body
/// and how to stop it.
#[derive(Default)]
struct Running {
    invocations: Mutex<HashMap<u64, RunningInvocation>>,
}

struct RunningInvocation {
    body: Option<UnboundedSender<Result<Bytes, BodyError>>>,
    task: Option<AbortHandle>,
    /// Response body bytes the worker may still send ([`ipc::RESPONSE_WINDOW`]).
    window: Arc<Semaphore>,
}

impl Running {
    fn len(&self) -> usize {
        self.invocations.lock().expect("running map").len()
    }

    fn feed(&self, id: u64, item: Result<Bytes, BodyError>) {
        let invocations = self.invocations.lock().expect("running map");
        if let Some(body) = invocations.get(&id).and_then(|r| r.body.as_ref()) {
            let _ = body.send(item);
        }
    }

    fn end_body(&self, id: u64) {
        if let Some(running) = self.invocations.lock().expect("running map").get_mut(&id) {
            running.body = None;
        }
    }

    /// The supervisor handed `bytes` more of `id`'s response to its client.
    fn credit(&self, id: u64, bytes: u32) {
        if let Some(running) = self.invocations.lock().expect("running map").get(&id) {
            // Never past the window: credits are for bytes this worker sent.
            let room = ipc::RESPONSE_WINDOW.saturating_sub(running.window.available_permits());
            running.window.add_permits((bytes as usize).min(room));
        }
    }

    fn finish(&self, id: u64) {
        self.invocations.lock().expect("running map").remove(&id);
    }

    fn cancel(&self, id: u64) {
        let removed = self.invocations.lock().expect("running map").remove(&id);
        if let Some(task) = removed.and_then(|r| r.task) {
            task.abort();
        }
    }
}

async fn serve(
    init: WorkerInit,
    channel: UnixStream,
    sender_channel: UnixStream,
    (connections_fd, table_fd): (std::os::fd::OwnedFd, std::os::fd::OwnedFd),
) -> anyhow::Result<ExitCode> {
    channel.set_nonblocking(true)?;
    sender_channel.set_nonblocking(true)?;
    let mut reader = ipc::reader::<_, ToWorker>(tokio::net::UnixStream::from_std(channel)?);
    let (to_supervisor, writer) =
        ipc::spawn_writer::<_, ToSupervisor>(tokio::net::UnixStream::from_std(sender_channel)?);

    if init.protocol != ipc::PROTOCOL_VERSION {
        let message = format!(
            "worker speaks IPC protocol {}, the supervisor {} (was the binary replaced?)",
            ipc::PROTOCOL_VERSION,
            init.protocol
        );
        return Ok(start_failed(to_supervisor, writer, message).await);
    }
    let reports = reports::Reports::new();
    let limits = init
        .functions
        .first()
        .map(|function| function.config.http.clone())
        .unwrap_or_default();
    let first = match load_version(init.slot, init.generation, init.functions, &reports) {
        Ok(version) => version,
        Err(message) => return Ok(start_failed(to_supervisor, writer, message).await),
    };
    let connections = match handoff_channel(connections_fd, table_fd) {
        Ok((channel, table)) => connections::Connections::start(
            channel,
            table,
            limits,
            reports.clone(),
            first.router.clone(),
        ),
        Err(error) => {
            let message = format!("cannot take the handed connections' channel: {error}");
            return Ok(start_failed(to_supervisor, writer, message).await);
        }
    };
    let _ = to_supervisor.send(ToSupervisor::Ready(Box::new(WorkerReady {
        protocol: ipc::PROTOCOL_VERSION,
    })));
    reports.send_from(to_supervisor.clone());
    // Each loaded version's functions' profiles, for the statistics report.
    let profiles: Profiles = Arc::default();
    first.publish(init.generation, &profiles);
    let stats = to_supervisor.clone();
    let stats_profiles = profiles.clone();
    let stats_task = tokio::spawn(async move {
        let mut ticker = tokio::time::interval(STATS_INTERVAL);
        loop {
            ticker.tick().await;
            if stats.send(stats_message(&stats_profiles)).is_err() {
                return;
            }
        }
    });

    // The app versions loaded, by number; invocations name one.
    let mut versions: HashMap<u64, Version> = HashMap::from([(init.generation, first)]);
    // Versions being loaded for a redeploy report back here.
    let (loaded_sender, mut loaded) =
        tokio::sync::mpsc::unbounded_channel::<(u64, Result<Version, String>)>();
    let running = Arc::new(Running::default());
    let queue_calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut writer = writer;
    loop {
        let next = tokio::select! {
            next = ipc::next_message(&mut reader) => next,
            Some((generation, result)) = loaded.recv() => {
                let failure = match result {
                    Ok(version) => {
                        version.publish(generation, &profiles);
                        versions.insert(generation, version);
                        None
                    }
                    Err(message) => Some(message),
                };
                let _ = to_supervisor.send(ToSupervisor::Loaded { generation, failure });
                continue;
            }
            _ = &mut writer => {
                // A message that could not be encoded (or a dead socket):
                // the supervisor would wait for answers that never come.
                tracing::error!("worker {}: cannot write to the supervisor; exiting", init.slot);
                return Ok(ExitCode::from(EXIT_PROTOCOL));
            }
        };
        let message = match next {
            Ok(Some(message)) => message,
            // The supervisor is gone; nobody is waiting for our answers.
            Ok(None) => return Ok(ExitCode::SUCCESS),
            Err(error) => {
                tracing::error!(
                    "worker {}: unreadable message from the supervisor: {error}",
                    init.slot
                );
                return Ok(ExitCode::from(EXIT_PROTOCOL));
            }
        };
        match message {
            ToWorker::Invoke(head) => {
                let id = head.id;
                let Some((dispatch, timeout)) = versions
                    .get(&head.generation)
                    .and_then(|version| version.function(head.function))
                else {
                    tracing::error!(
                        "worker {}: an invocation of function {} of version {}, which it does not have",
                        init.slot,
                        head.function,
                        head.generation
                    );
                    return Ok(ExitCode::from(EXIT_PROTOCOL));
                };
                let (body_sender, body) = if head.body_empty {
                    (
                        None,
                        Empty::new().map_err(|never| match never {}).boxed_unsync(),
                    )
                } else {
                    let (sender, body) = ChannelBody::new();
                    (
                        Some(sender),
                        body.with_length(head.body_length).boxed_unsync(),
                    )
                };
                let window = Arc::new(Semaphore::new(ipc::RESPONSE_WINDOW));
                let mut invocations = running.invocations.lock().expect("running map");
                let task = tokio::spawn(invoke(
                    dispatch,
                    *head,
                    body,
                    Response {
                        to_supervisor: to_supervisor.clone(),
                        window: window.clone(),
                        deadline: tokio::time::Instant::now() + timeout,
                    },
                    running.clone(),
                ));
                invocations.insert(
                    id,
                    RunningInvocation {
                        body: body_sender,
                        task: Some(task.abort_handle()),
                        window,
                    },
                );
            }
            ToWorker::RequestBody { id, chunk } => running.feed(id, Ok(chunk)),
            ToWorker::RequestEnd { id } => running.end_body(id),
            ToWorker::RequestAbort {
                id,
                reason,
                too_large,
            } => {
                let error = match too_large {
                    Some(limit) => BodyError::TooLarge { limit },
                    None => BodyError::Transport(reason),
                };
                running.feed(id, Err(error));
                running.end_body(id);
            }
            ToWorker::Cancel { id } => running.cancel(id),
            ToWorker::ResponseCredit { id, bytes } => running.credit(id, bytes),
            ToWorker::InvokeQueue {
                id,
                generation,
                function,
                message,
            } => {
                let Some((dispatch, _)) = versions
                    .get(&generation)
                    .and_then(|version| version.function(function))
                else {
                    tracing::error!(
                        "worker {}: a queue message for function {function} of version {generation}, which it does not have",
                        init.slot
                    );
                    return Ok(ExitCode::from(EXIT_PROTOCOL));
                };
                let call = dispatch.dispatch_queue(crate::invocation::QueueInvocation {
                    id: InvocationId::from_u64(id),
                    message,
                });
                let to_supervisor = to_supervisor.clone();
                let queue_calls = queue_calls.clone();
                queue_calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::spawn(async move {
                    let failure = call.await.err().map(|e| (e.kind, short(e.detail)));
                    let _ = to_supervisor.send(ToSupervisor::QueueDone { id, failure });
                    queue_calls.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                });
            }
            ToWorker::Load {
                generation,
                functions,
            } => {
                // Compiling can take seconds: off the runtime's threads,
                // while the running versions keep serving.
                let slot = init.slot;
                let report = loaded_sender.clone();
                let reports = reports.clone();
                tokio::task::spawn_blocking(move || {
                    let loaded = load_version(slot, generation, functions, &reports);
                    let _ = report.send((generation, loaded));
                });
            }
            ToWorker::Release { generation } => {
                // In-flight invocations hold their own handles on it.
                profiles.lock().expect("profiles").remove(&generation);
                if versions.remove(&generation).is_some() {
                    tracing::info!("worker {}: released app version {generation}", init.slot);
                }
            }
            ToWorker::ServeVersion { generation } => match versions.get(&generation) {
                Some(version) => connections.serve_version(version.router.clone()),
                // Released already (a later redeploy overtook it): the
                // connections keep the version they have.
                None => tracing::warn!(
                    "worker {}: told to serve app version {generation}, which it no longer has",
                    init.slot
                ),
            },
            ToWorker::ReleaseConnections => connections.release_all(),
            ToWorker::Flush { token } => {
                reports.flush(&to_supervisor);
                let _ = to_supervisor.send(ToSupervisor::Flushed { token });
            }
            ToWorker::Shutdown => {
                tracing::info!("worker {}: shutting down", init.slot);
                // The supervisor drained first; whatever still runs gets a
                // moment, and every answer is flushed before the exit.
                let deadline = std::time::Instant::now() + SHUTDOWN_WAIT;
                while (running.len() > 0
                    || connections.open() > 0
                    || queue_calls.load(std::sync::atomic::Ordering::Relaxed) > 0)
                    && std::time::Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                stats_task.abort();
                let _ = stats_task.await;
                // The last calls' output, then the counts that include it.
                crate::exec::flush_guest_output(Duration::from_secs(1));
                reports.flush(&to_supervisor);
                let _ = to_supervisor.send(stats_message(&profiles));
                drop(to_supervisor);
                drop(running);
                let _ = tokio::time::timeout(Duration::from_secs(1), writer).await;
                return Ok(ExitCode::SUCCESS);
            }
            ToWorker::Init(_) => {
                tracing::error!("worker {}: a second Init from the supervisor", init.slot);
                return Ok(ExitCode::from(EXIT_PROTOCOL));
            }
        }
    }
}

/// One app version loaded in this worker: a host per function, and the
/// router handed connections use.
struct Version {
    hosts: Vec<Host>,
    router: Arc<crate::app::dispatch::AppDispatch>,
}

/// The connection channel and table from their descriptors.
fn handoff_channel(
    channel: std::os::fd::OwnedFd,
    table: std::os::fd::OwnedFd,
) -> std::io::Result<(
    crate::handoff::fdpass::ConnectionChannel,
    crate::handoff::table::ConnectionTable,
)> {
    Ok((
        crate::handoff::fdpass::ConnectionChannel::new(channel)?,
        crate::handoff::table::ConnectionTable::open(table)?,
    ))
}

/// The profiles of each loaded version's functions, by version.
type Profiles = Arc<Mutex<HashMap<u64, Vec<Arc<crate::exec::profile::Profile>>>>>;

/// The periodic statistics report.
fn stats_message(profiles: &Profiles) -> ToSupervisor {
    let profiles = profiles
        .lock()
        .expect("profiles")
        .iter()
        .flat_map(|(&generation, functions)| {
            functions
                .iter()
                .enumerate()
                .map(move |(index, profile)| ipc::FunctionProfile {
                    generation,
                    function: index as u32,
                    profile: profile.snapshot(),
                })
        })
        .collect();
    ToSupervisor::Stats {
        instances: crate::exec::live_instances(),
        async_stalls: crate::exec::async_stalls(),
        guest_output_dropped: crate::exec::guest_output_dropped(),
        profiles,
    }
}

impl Version {
    /// Makes this version's profiles part of the statistics report.
    fn publish(&self, generation: u64, profiles: &Profiles) {
        let functions = self.hosts.iter().map(|host| host.profile()).collect();
        profiles
            .lock()
            .expect("profiles")
            .insert(generation, functions);
    }

    /// Function `index`'s dispatch and timeout.
    fn function(&self, index: u32) -> Option<(Arc<dyn crate::Dispatch>, Duration)> {
        let host = self.hosts.get(index as usize)?;
        Some((host.dispatch(), host.config().invocation.timeout))
    }
}

/// Loads every function of app version `generation`, each into its own
/// host, and routes them for handed connections; the first failure is the
/// one line returned.
fn load_version(
    slot: usize,
    generation: u64,
    functions: Vec<ipc::FunctionInit>,
    reports: &Arc<reports::Reports>,
) -> Result<Version, String> {
    let routes: Vec<(crate::app::Route, usize)> = functions
        .iter()
        .enumerate()
        .filter_map(|(index, function)| function.route.clone().map(|route| (route, index)))
        .collect();
    let router = crate::app::Router::new(&routes)
        .map_err(|_| "the app's routes overlap (the supervisor checked them)".to_string())?;
    let mut hosts = Vec::with_capacity(functions.len());
    let mut entries = Vec::with_capacity(functions.len());
    for (index, function) in functions.into_iter().enumerate() {
        let host = Host::builder(function.config)
            .component(&function.component)
            .name(function.name.clone())
            .build_for(function.http_bound, function.queue_bound)
            .map_err(|error| one_line(&error))?;
        tracing::info!(
            "worker {slot} (pid {}): function {}: {}",
            std::process::id(),
            function.name,
            host.describe_load()
        );
        entries.push(crate::app::dispatch::FunctionDispatch {
            name: function.name.as_str().into(),
            dispatch: Arc::new(reports::Reported {
                inner: host.dispatch(),
                generation,
                function: index as u32,
                reports: reports.clone(),
            }),
            max_concurrent: function.max_concurrent,
        });
        hosts.push(host);
    }
    let router = Arc::new(crate::app::dispatch::AppDispatch::new(
        router, entries, None,
    ));
    Ok(Version { hosts, router })
}

/// Reports a start failure and waits until the writer has sent it.
async fn start_failed(
    to_supervisor: UnboundedSender<ToSupervisor>,
    writer: tokio::task::JoinHandle<()>,
    message: String,
) -> ExitCode {
    tracing::debug!("start failed: {message}");
    let _ = to_supervisor.send(ToSupervisor::StartFailed { message });
    drop(to_supervisor);
    let _ = writer.await;
    ExitCode::from(EXIT_START_FAILED)
}

/// Where an invocation's answer goes: the channel to the supervisor, and
/// the window that paces its response body.
struct Response {
    to_supervisor: UnboundedSender<ToSupervisor>,
    window: Arc<Semaphore>,
    /// The invocation's deadline: past it, waiting for the window ends the
    /// response (a client that reads, but too slowly, cannot hold the guest
    /// past `--timeout` either).
    deadline: tokio::time::Instant,
}

impl Response {
    /// Sends one body chunk once the window has room for it: a client that
    /// stops reading stops the guest's body here, not in the supervisor's
    /// memory. False, with the body aborted, when the deadline passed first.
    async fn chunk(&self, id: u64, chunk: Bytes) -> bool {
        let bytes = u32::try_from(chunk.len()).unwrap_or(u32::MAX);
        match tokio::time::timeout_at(self.deadline, self.window.acquire_many(bytes)).await {
            Ok(Ok(permits)) => permits.forget(),
            Ok(Err(_closed)) => {}
            Err(_) => {
                let _ = self.to_supervisor.send(ToSupervisor::ResponseAbort {
                    id,
                    detail:
                        "the client had not taken the response body by the invocation's deadline"
                            .to_string(),
                });
                return false;
            }
        }
        let _ = self
            .to_supervisor
            .send(ToSupervisor::ResponseBody { id, chunk });
        true
    }
}

/// Runs one invocation and streams its outcome back.
async fn invoke(
    dispatch: Arc<dyn crate::Dispatch>,
    head: ipc::InvokeHead,
    body: crate::invocation::Body,
    out: Response,
    running: Arc<Running>,
) {
    let to_supervisor = &out.to_supervisor;
    let id = head.id;
    let request = match build_request(head, body) {
        Ok(request) => request,
        Err(detail) => {
            running.finish(id);
            let _ = to_supervisor.send(ToSupervisor::Failed {
                id,
                kind: crate::FailureKind::Trap,
                detail: format!("malformed request from the supervisor: {detail}"),
            });
            return;
        }
    };
    let invocation = HttpInvocation {
        id: InvocationId::from_u64(id),
        request,
    };
    let response = match dispatch.dispatch_http(invocation).await {
        Ok(response) => response,
        Err(error) => {
            running.finish(id);
            let _ = to_supervisor.send(ToSupervisor::Failed {
                id,
                kind: error.kind,
                detail: short(error.detail),
            });
            return;
        }
    };
    let (parts, mut body) = response.into_parts();
    let header_bytes: usize = parts
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if header_bytes > MAX_RESPONSE_HEADER_BYTES {
        running.finish(id);
        let _ = to_supervisor.send(ToSupervisor::Failed {
            id,
            kind: crate::FailureKind::Trap,
            detail: format!(
                "the guest's response headers exceed {MAX_RESPONSE_HEADER_BYTES} bytes"
            ),
        });
        return;
    }
    let body_length = body.size_hint().exact();
    // Most responses are complete by the time the head is: send what is
    // ready with the head, in one message.
    let mut body_start = BytesMut::new();
    let mut body_complete = false;
    let mut failed = None;
    while body_start.len() < ipc::MAX_CHUNK {
        match body.frame().now_or_never() {
            Some(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    body_start.extend_from_slice(&data);
                }
            }
            Some(Some(Err(error))) => {
                failed = Some(error.to_string());
                break;
            }
            Some(None) => {
                body_complete = true;
                break;
            }
            None => break,
        }
    }
    let mut body_start = body_start.freeze();
    let rest = body_start.split_off(body_start.len().min(ipc::MAX_CHUNK));
    out.window.forget_permits(body_start.len());
    let _ = to_supervisor.send(ToSupervisor::ResponseHead {
        id,
        status: parts.status.as_u16(),
        headers: ipc::headers_to_wire(&parts.headers),
        body_length,
        body_start,
        body_complete: body_complete && failed.is_none() && rest.is_empty(),
    });
    for chunk in ipc::chunks(rest.clone()) {
        if !out.chunk(id, chunk).await {
            running.finish(id);
            return;
        }
    }
    if let Some(detail) = failed {
        let _ = to_supervisor.send(ToSupervisor::ResponseAbort {
            id,
            detail: short(detail),
        });
    } else if body_complete {
        if !rest.is_empty() {
            let _ = to_supervisor.send(ToSupervisor::ResponseEnd { id });
        }
    } else {
        stream_body(id, body, &out).await;
    }
    running.finish(id);
}

/// Streams the rest of a response body, chunk by chunk, then its end.
async fn stream_body(id: u64, mut body: crate::invocation::Body, out: &Response) {
    let to_supervisor = &out.to_supervisor;
    loop {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    for chunk in ipc::chunks(data) {
                        if !out.chunk(id, chunk).await {
                            return;
                        }
                    }
                }
            }
            Some(Err(error)) => {
                let _ = to_supervisor.send(ToSupervisor::ResponseAbort {
                    id,
                    detail: short(error.to_string()),
                });
                return;
            }
            None => {
                let _ = to_supervisor.send(ToSupervisor::ResponseEnd { id });
                return;
            }
        }
    }
}

/// `detail` cut to [`MAX_DETAIL_BYTES`] (a guest's error text can be long).
fn short(mut detail: String) -> String {
    if detail.len() > MAX_DETAIL_BYTES {
        let mut cut = MAX_DETAIL_BYTES;
        while !detail.is_char_boundary(cut) {
            cut -= 1;
        }
        detail.truncate(cut);
        detail.push('…');
    }
    detail
}

fn build_request(
    head: ipc::InvokeHead,
    body: crate::invocation::Body,
) -> Result<http::Request<crate::invocation::Body>, String> {
    let method = http::Method::from_bytes(head.method.as_bytes())
        .map_err(|_| format!("invalid method {:?}", head.method))?;
    let uri: http::Uri = head
        .uri
        .parse()
        .map_err(|_| format!("invalid target {:?}", head.uri))?;
    let mut request = http::Request::new(body);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.headers_mut() = ipc::headers_from_wire(head.headers)?;
    Ok(request)
}
