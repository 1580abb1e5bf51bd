//! What a worker tells the supervisor about the connections handed to it:
//! each finished invocation (the supervisor's metrics and counts) and each
//! connection that ended or was given back, batched into one
//! [`ToSupervisor::Served`] every few milliseconds so the supervisor wakes
//! at most 200 times a second, not once per request.

use crate::invocation::{
    BodyEnd, Dispatch, DispatchResult, HttpInvocation, QueueInvocation, QueueResult, on_body_end,
};
use crate::ipc::{Completion, Outcome, ToSupervisor};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio::sync::mpsc::UnboundedSender;

/// How long a report waits for more to say before it is sent.
const REPORT_DELAY: Duration = Duration::from_millis(5);

#[derive(Default)]
struct Batch {
    completions: Vec<Completion>,
    closed: Vec<u32>,
    released: Vec<u32>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.completions.is_empty() && self.closed.is_empty() && self.released.is_empty()
    }
}

/// The batch being filled; [`Reports::send_from`] starts the task that
/// sends it.
#[derive(Default)]
pub struct Reports {
    batch: Mutex<Batch>,
    wake: Notify,
    hurry: Notify,
}

impl Reports {
    /// An empty batch (nothing is sent before [`Self::send_from`]).
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Sends each batch to `to_supervisor`, [`REPORT_DELAY`] after its
    /// first entry, until the channel closes. Started once the worker is
    /// ready: a worker that fails to start has no sender left open but the
    /// one that reports the failure.
    pub fn send_from(self: &Arc<Self>, to_supervisor: UnboundedSender<ToSupervisor>) {
        let reports = self.clone();
        tokio::spawn(async move {
            loop {
                reports.wake.notified().await;
                tokio::select! {
                    () = tokio::time::sleep(REPORT_DELAY) => {}
                    () = reports.hurry.notified() => {}
                }
                if !reports.flush(&to_supervisor) {
                    return;
                }
            }
        });
    }

    fn add(&self, fill: impl FnOnce(&mut Batch)) {
        let mut batch = self.batch.lock().expect("report batch");
        let was_empty = batch.is_empty();
        fill(&mut batch);
        drop(batch);
        if was_empty {
            self.wake.notify_one();
        }
    }

    /// Sends the batch now, not after the delay: the supervisor counts
    /// open connections to place new ones.
    fn hurry(&self) {
        self.hurry.notify_one();
    }

    /// An invocation of `function` of version `generation` ended.
    pub fn completed(&self, generation: u64, function: u32, outcome: Outcome, started: Instant) {
        let wall_ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.add(|batch| {
            batch.completions.push(Completion {
                generation,
                function,
                outcome,
                wall_ns,
            })
        });
    }

    /// Connection `index` ended; its socket is shut down.
    pub fn closed(&self, index: u32) {
        self.add(|batch| batch.closed.push(index));
        self.hurry();
    }

    /// Connection `index` is given back at a request boundary.
    pub fn released(&self, index: u32) {
        self.add(|batch| batch.released.push(index));
        self.hurry();
    }

    /// Sends what is in the batch now; false once the supervisor is gone.
    pub fn flush(&self, to_supervisor: &UnboundedSender<ToSupervisor>) -> bool {
        let batch = std::mem::take(&mut *self.batch.lock().expect("report batch"));
        if batch.is_empty() {
            return !to_supervisor.is_closed();
        }
        to_supervisor
            .send(ToSupervisor::Served {
                completions: batch.completions,
                closed: batch.closed,
                released: batch.released,
            })
            .is_ok()
    }
}

/// One function's dispatch on handed connections: reports how each call
/// ended.
pub struct Reported {
    /// The function's own dispatch (its lane).
    pub inner: Arc<dyn Dispatch>,
    /// Its app version.
    pub generation: u64,
    /// Its index in the version.
    pub function: u32,
    /// Where the outcome goes.
    pub reports: Arc<Reports>,
}

impl Dispatch for Reported {
    fn dispatch_http(
        &self,
        invocation: HttpInvocation,
    ) -> Pin<Box<dyn Future<Output = DispatchResult> + Send + 'static>> {
        let started = Instant::now();
        let call = self.inner.dispatch_http(invocation);
        let (reports, generation, function) =
            (self.reports.clone(), self.generation, self.function);
        Box::pin(async move {
            match call.await {
                Ok(response) => Ok(on_body_end(response, move |end| {
                    let outcome = match end {
                        BodyEnd::Finished => Outcome::Ok,
                        BodyEnd::Failed => Outcome::Failed(crate::FailureKind::Trap),
                        BodyEnd::Dropped => Outcome::Cancelled,
                    };
                    reports.completed(generation, function, outcome, started);
                })),
                Err(error) => {
                    reports.completed(generation, function, Outcome::Failed(error.kind), started);
                    Err(error)
                }
            }
        })
    }

    fn dispatch_queue(
        &self,
        invocation: QueueInvocation,
    ) -> Pin<Box<dyn Future<Output = QueueResult> + Send + 'static>> {
        self.inner.dispatch_queue(invocation)
    }
}
