//! Queue messages through the component's `fnhost:function/queue-handler`
//! (wit/queue.wit), each on a fresh instance, in the component's lane:
//!
//! - async lane: a future on the tokio runtime, fuel-metered with the same
//!   yield points and fair share as HTTP calls;
//! - sync lane: a blocking call on tokio's blocking pool with an epoch
//!   deadline. The queue trigger bounds how many messages a worker runs at
//!   once (`--batch-size` plus `--new-batch-threshold`), so this pool stays
//!   as small as that.
//!
//! A handler's `err` is [`FailureKind::Rejected`]; traps, timeouts and
//! memory failures are classified as for HTTP.

use super::async_lane::{new_async_store, tokio_workers};
use super::fair::{Fair, FairShare};
use super::state::StoreState;
use super::sync_lane::ticks;
use super::{ExecSettings, classify, new_state};
use crate::config::Origin;
use crate::invocation::{FailureKind, InvocationError, QueueInvocation, QueueMessage, QueueResult};
use std::sync::Arc;
use wasmtime::Store;
use wasmtime::component::InstancePre;

/// Host bindings of wit/queue.wit.
mod bindings {
    /// For the async lane (`call_async`).
    pub mod asynchronous {
        wasmtime::component::bindgen!({
            path: "../wit/queue.wit",
            world: "queue-function",
            exports: { default: async },
        });
    }

    /// For the sync lane (blocking calls).
    pub mod synchronous {
        wasmtime::component::bindgen!({
            path: "../wit/queue.wit",
            world: "queue-function",
        });
    }
}

use bindings::asynchronous::QueueFunctionPre as AsyncPre;
use bindings::synchronous::QueueFunctionPre as SyncPre;

enum Pre {
    Async(AsyncPre<StoreState>),
    Sync(SyncPre<StoreState>),
}

/// Runs queue messages of one component.
pub struct QueueRunner {
    pre: Pre,
    settings: ExecSettings,
    outbound: Arc<[Origin]>,
    share: FairShare,
}

impl QueueRunner {
    /// A runner for `instance_pre` (linked for `lane`).
    pub fn new(
        instance_pre: InstancePre<StoreState>,
        lane: crate::config::Lane,
        settings: ExecSettings,
    ) -> wasmtime::Result<Self> {
        let pre = match lane {
            crate::config::Lane::Async => Pre::Async(AsyncPre::new(instance_pre)?),
            crate::config::Lane::Sync => Pre::Sync(SyncPre::new(instance_pre)?),
        };
        Ok(Self {
            pre,
            outbound: settings.grants.outbound.clone().into(),
            settings,
            share: FairShare::for_workers(tokio_workers()),
        })
    }

    /// Runs one delivery to completion.
    pub async fn run(self: Arc<Self>, invocation: QueueInvocation) -> QueueResult {
        let timeout = self.settings.limits.timeout;
        let timed_out = move || {
            InvocationError::new(
                FailureKind::Timeout,
                format!("ran past its {} ms timeout", timeout.as_millis()),
            )
        };
        match &self.pre {
            Pre::Async(_) => {
                // The timeout lives inside the task: at the deadline the
                // guest's future is dropped, so it cannot go on running
                // beside a redelivery of the same message.
                let runner = self.clone();
                let task = tokio::spawn(async move {
                    match tokio::time::timeout(timeout, runner.run_async(invocation)).await {
                        Ok(result) => result,
                        Err(_) => Err(timed_out()),
                    }
                });
                task.await.unwrap_or_else(|e| {
                    Err(InvocationError::new(
                        FailureKind::Trap,
                        format!("the call failed: {e}"),
                    ))
                })
            }
            Pre::Sync(_) => {
                // A blocking call cannot be cancelled; its epoch deadline
                // traps it at `--timeout`. The answer waits for the call to
                // return, so the message is never released while it runs;
                // a call stuck in a host call past the deadline is ended by
                // the supervisor recycling the worker.
                let runner = self.clone();
                let task = tokio::task::spawn_blocking(move || {
                    let before = super::profile::thread_cpu_time();
                    let result = runner.run_sync(invocation);
                    let cpu = super::profile::thread_cpu_time() - before;
                    runner
                        .settings
                        .profile
                        .record(cpu, std::time::Duration::ZERO);
                    result
                });
                task.await.unwrap_or_else(|e| {
                    Err(InvocationError::new(
                        FailureKind::Trap,
                        format!("the call failed: {e}"),
                    ))
                })
            }
        }
    }

    async fn run_async(&self, invocation: QueueInvocation) -> QueueResult {
        let Pre::Async(pre) = &self.pre else {
            unreachable!("run_async is only called for the async lane")
        };
        let mut store = new_async_store(pre.engine(), &self.settings, &self.outbound)?;
        store.data_mut().begin(invocation.id);
        let message = async_message(invocation.message);
        let result = {
            let mut call = std::pin::pin!(Fair::new(
                async {
                    let instance = pre.instantiate_async(&mut store).await?;
                    instance
                        .fnhost_function_queue_handler()
                        .call_handle(&mut store, &message)
                        .await
                },
                self.share.clone(),
            ));
            let result = (&mut call).await;
            self.settings
                .profile
                .record(call.guest_time(), std::time::Duration::ZERO);
            result
        };
        let exceeded = store.data().limiter.exceeded();
        handler_outcome(result, exceeded)
    }

    fn run_sync(&self, invocation: QueueInvocation) -> QueueResult {
        let Pre::Sync(pre) = &self.pre else {
            unreachable!("run_sync is only called for the sync lane")
        };
        let mut state = new_state(&self.settings, &self.outbound)?;
        state.begin(invocation.id);
        let mut store = Store::new(pre.engine(), state);
        store.limiter(|state| &mut state.limiter);
        store.set_epoch_deadline(ticks(self.settings.limits.timeout));
        if let Some(budget) = self.settings.execution.max_fuel {
            store
                .set_fuel(budget)
                .map_err(|e| InvocationError::new(FailureKind::Trap, format!("{e:#}")))?;
        }
        let message = sync_message(invocation.message);
        let result = pre.instantiate(&mut store).and_then(|instance| {
            instance
                .fnhost_function_queue_handler()
                .call_handle(&mut store, &message)
        });
        let exceeded = store.data().limiter.exceeded();
        handler_outcome(result, exceeded)
    }
}

/// The message in the async binding's type.
fn async_message(
    message: QueueMessage,
) -> bindings::asynchronous::exports::fnhost::function::queue_handler::Message {
    bindings::asynchronous::exports::fnhost::function::queue_handler::Message {
        id: message.id,
        body: message.body.to_vec(),
        dequeue_count: message.dequeue_count,
        enqueued_at: message.enqueued_at_ms,
        attributes: message.attributes,
    }
}

/// The message in the sync binding's type (the same record, generated twice).
fn sync_message(
    message: QueueMessage,
) -> bindings::synchronous::exports::fnhost::function::queue_handler::Message {
    bindings::synchronous::exports::fnhost::function::queue_handler::Message {
        id: message.id,
        body: message.body.to_vec(),
        dequeue_count: message.dequeue_count,
        enqueued_at: message.enqueued_at_ms,
        attributes: message.attributes,
    }
}

fn handler_outcome(
    result: wasmtime::Result<Result<(), String>>,
    memory_exceeded: bool,
) -> QueueResult {
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(reason)) => Err(InvocationError::new(FailureKind::Rejected, reason)),
        Err(error) => Err(classify(&error, memory_exceeded)),
    }
}
