//! The queue trigger: feeds a component's queue handler from a [`Queue`],
//! with the semantics of Azure Functions' queue trigger.
//!
//! - It fetches up to `--batch-size` messages per ready worker, and fetches
//!   again once the messages in flight drop to `--new-batch-threshold` per
//!   worker, so at most `batch-size + new-batch-threshold` run per worker.
//! - A fetched message is invisible for `--visibility-timeout`, renewed
//!   every third of it while its handler runs, so no second consumer takes
//!   it meanwhile: never two concurrent executions of one message.
//! - `ok` deletes the message. A failure (the handler's `err`, a trap, a
//!   timeout, a lost worker) makes it visible again at once, so a message
//!   whose worker died is retried immediately rather than after the
//!   visibility timeout; the timeout is the fallback when the whole host
//!   dies. After `--max-dequeue-count` failed deliveries it moves to
//!   `<queue>-poison` with its body and attempt count.
//! - On shutdown it stops fetching and waits for the messages in flight.
//!
//! Delivery is therefore at-least-once: a message whose handler succeeded
//! but whose acknowledgement was lost (the host died in between) runs again.

use crate::invocation::{Dispatch, FailureKind, InvocationId, QueueInvocation};
use crate::queue::{Delivery, MAX_MESSAGE_BYTES, Queue};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::Notify;

/// Default messages fetched per worker (`--batch-size`), as Azure's.
pub const DEFAULT_BATCH_SIZE: usize = 16;
/// Largest `--batch-size`.
pub const MAX_BATCH_SIZE: usize = 1024;
/// Default visibility timeout (`--visibility-timeout`).
pub const DEFAULT_VISIBILITY_TIMEOUT: Duration = Duration::from_secs(30);
/// Default failed deliveries before the poison queue (`--max-dequeue-count`).
pub const DEFAULT_MAX_DEQUEUE_COUNT: u32 = 5;
/// Shortest `--visibility-timeout`: renewals run every third of it, and a
/// shorter one would let the same message be fetched again while it runs.
pub const MIN_VISIBILITY_TIMEOUT: Duration = Duration::from_secs(1);
/// Shortest wait between polls of an empty queue.
const POLL_MIN: Duration = Duration::from_millis(20);
/// Longest wait between polls of an empty queue.
const POLL_MAX: Duration = Duration::from_secs(1);
/// Wait after a failed fetch before the next.
const RETRY_AFTER_ERROR: Duration = Duration::from_secs(1);

/// How the trigger fetches and retries.
#[derive(Clone, Debug)]
pub struct QueueSettings {
    /// Messages fetched at once per worker.
    pub batch_size: usize,
    /// In-flight messages per worker at which the next batch is fetched.
    pub new_batch_threshold: usize,
    /// How long a fetched message stays invisible (renewed while it runs).
    pub visibility_timeout: Duration,
    /// Failed deliveries before a message moves to the poison queue.
    pub max_dequeue_count: u32,
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self {
            batch_size: DEFAULT_BATCH_SIZE,
            new_batch_threshold: DEFAULT_BATCH_SIZE / 2,
            visibility_timeout: DEFAULT_VISIBILITY_TIMEOUT,
            max_dequeue_count: DEFAULT_MAX_DEQUEUE_COUNT,
        }
    }
}

/// Feeds one queue to a dispatch.
pub struct QueueTrigger {
    queue: Queue,
    dispatch: Arc<dyn Dispatch>,
    settings: QueueSettings,
    workers: Arc<dyn Fn() -> usize + Send + Sync>,
    in_flight: Arc<AtomicUsize>,
    finished: Arc<Notify>,
}

impl QueueTrigger {
    /// A trigger feeding `queue` to `dispatch`; `workers` says how many
    /// workers are ready now (the batch bounds are per worker).
    pub fn new(
        queue: Queue,
        dispatch: Arc<dyn Dispatch>,
        settings: QueueSettings,
        workers: Arc<dyn Fn() -> usize + Send + Sync>,
    ) -> Self {
        Self {
            queue,
            dispatch,
            settings,
            workers,
            in_flight: Arc::default(),
            finished: Arc::default(),
        }
    }

    /// Messages being handled now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Fetches and dispatches until `shutdown` resolves, then waits up to
    /// `grace` for the messages in flight. Returns whether they finished.
    pub async fn run(&self, shutdown: impl Future<Output = ()>, grace: Duration) -> bool {
        tokio::pin!(shutdown);
        let mut idle_wait = POLL_MIN;
        loop {
            // Registered before in_flight is read, so a finish in between
            // is not missed.
            let finished = self.finished.notified();
            tokio::pin!(finished);
            finished.as_mut().enable();
            let workers = (self.workers)();
            let in_flight = self.in_flight();
            let wait = if workers == 0 {
                // No worker to run them (one is restarting): fetching now
                // would only count deliveries that cannot happen.
                Some(POLL_MIN)
            } else if in_flight > self.settings.new_batch_threshold * workers {
                // Enough running: wait for one to finish.
                None
            } else {
                let room = (self.settings.batch_size + self.settings.new_batch_threshold) * workers
                    - in_flight;
                let wanted = room.min(self.settings.batch_size * workers);
                let received = tokio::select! {
                    received = self.queue.receive(wanted, self.settings.visibility_timeout) => received,
                    () = &mut shutdown => break,
                };
                match received {
                    Ok(deliveries) if deliveries.is_empty() => {
                        let wait = idle_wait;
                        idle_wait = (idle_wait * 2).min(POLL_MAX);
                        Some(wait)
                    }
                    Ok(deliveries) => {
                        idle_wait = POLL_MIN;
                        for delivery in deliveries {
                            self.start(delivery);
                        }
                        Some(Duration::ZERO)
                    }
                    Err(error) => {
                        tracing::warn!("queue {}: fetch failed: {error}", self.queue.name());
                        Some(RETRY_AFTER_ERROR)
                    }
                }
            };
            tokio::select! {
                () = &mut shutdown => break,
                () = finished, if wait.is_none() => {}
                () = tokio::time::sleep(wait.unwrap_or_default()), if wait.is_some() => {}
            }
        }
        tracing::info!(
            "queue {}: stopped fetching; waiting for {} message(s) in flight",
            self.queue.name(),
            self.in_flight()
        );
        let drained = async {
            loop {
                let finished = self.finished.notified();
                tokio::pin!(finished);
                finished.as_mut().enable();
                if self.in_flight() == 0 {
                    break;
                }
                finished.await;
            }
        };
        tokio::time::timeout(grace, drained).await.is_ok()
    }

    /// Runs one delivery in its own task.
    fn start(&self, delivery: Delivery) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let queue = self.queue.clone();
        if delivery.message.size() > MAX_MESSAGE_BYTES {
            // Another producer (Redis) sent more than a worker may be given.
            let (in_flight, finished) = (self.in_flight.clone(), self.finished.clone());
            tokio::spawn(async move {
                let reason = format!(
                    "the message has {} bytes (body, id and attributes), more than {MAX_MESSAGE_BYTES}",
                    delivery.message.size()
                );
                tracing::warn!(
                    "message {}: {reason}; moving it to {}",
                    delivery.message.id,
                    queue.poison_name()
                );
                if let Err(error) = queue.poison(&delivery, &reason).await {
                    tracing::warn!("message {}: {error}", delivery.message.id);
                }
                in_flight.fetch_sub(1, Ordering::Relaxed);
                finished.notify_waiters();
            });
            return;
        }
        let call = self.dispatch.dispatch_queue(QueueInvocation {
            id: InvocationId::next(),
            message: delivery.message.clone(),
        });
        let settings = self.settings.clone();
        let in_flight = self.in_flight.clone();
        let finished = self.finished.clone();
        let workers = self.workers.clone();
        tokio::spawn(async move {
            handle(&queue, call, &delivery, &settings, &*workers).await;
            in_flight.fetch_sub(1, Ordering::Relaxed);
            finished.notify_waiters();
        });
    }
}

/// Waits for one delivery's outcome, renewing its invisibility meanwhile,
/// then completes, retries or poisons it.
async fn handle(
    queue: &Queue,
    call: std::pin::Pin<Box<dyn Future<Output = crate::invocation::QueueResult> + Send>>,
    delivery: &Delivery,
    settings: &QueueSettings,
    workers: &(dyn Fn() -> usize + Send + Sync),
) {
    let renew_every = (settings.visibility_timeout / 3).max(Duration::from_millis(100));
    tokio::pin!(call);
    let result = loop {
        tokio::select! {
            result = &mut call => break result,
            () = tokio::time::sleep(renew_every) => {
                if let Err(error) = queue.renew(delivery, settings.visibility_timeout).await {
                    tracing::warn!("message {}: cannot renew its visibility: {error}", delivery.message.id);
                }
            }
        }
    };
    let message = &delivery.message;
    let outcome = match result {
        Ok(()) => queue.complete(delivery).await,
        Err(error) if error.kind == FailureKind::Capacity && workers() == 0 => {
            // No worker was ready (one was restarting): it never reached a
            // handler, so it is not an attempt. Capacity refusals inside a
            // worker count like any failure, so they cannot loop forever.
            tracing::debug!(
                "message {}: no capacity ({}); released",
                message.id,
                error.detail
            );
            queue.release_uncounted(delivery).await
        }
        Err(error) => {
            let reason = format!("{}: {}", error.kind, error.detail);
            if message.dequeue_count >= settings.max_dequeue_count {
                tracing::warn!(
                    "message {} failed delivery {} of {} ({reason}); moving it to {}",
                    message.id,
                    message.dequeue_count,
                    settings.max_dequeue_count,
                    queue.poison_name()
                );
                queue.poison(delivery, &reason).await
            } else {
                let level_is_worker = error.kind == FailureKind::WorkerLost;
                tracing::warn!(
                    "message {} failed delivery {} of {} ({reason}); {}",
                    message.id,
                    message.dequeue_count,
                    settings.max_dequeue_count,
                    if level_is_worker {
                        "released at once for another worker"
                    } else {
                        "released for a retry"
                    }
                );
                queue.abandon(delivery, &reason).await
            }
        }
    };
    if let Err(error) = outcome {
        // The visibility timeout will bring it back.
        tracing::warn!("message {}: {error}", message.id);
    }
}
