//! A sync-lane thread's work: keep an instance warm, run calls on it with
//! wasmtime's synchronous API, and replace it when it may not serve more.

use super::crew::Crew;
use super::deadline::{DeadlineBody, ticks};
use super::{Job, Work};
use crate::component::one_line;
use crate::config::Origin;
use crate::exec::profile;
use crate::exec::reuse::{Ended, Replay, ReusePolicy};
use crate::exec::state::StoreState;
use crate::exec::{
    Answer, ExecSettings, body_error_to_wasi, call_outcome, classify, host_response, new_state,
};
use crate::invocation::{Body, FailureKind, InvocationError, InvocationId};
use http_body_util::BodyExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use wasmtime::Store;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::sync::{Proxy, ProxyPre};

/// What every sync-lane thread shares: the component and how to run it.
pub(super) struct Runner {
    pre: ProxyPre<StoreState>,
    settings: ExecSettings,
    outbound: Arc<[Origin]>,
    /// Calls one instance serves before it is replaced.
    reuse: ReusePolicy,
    /// The most linear memory one instance has held after a call, in bytes.
    largest_memory: AtomicU64,
}

/// A pre-created instance and the calls it has served.
struct Warm {
    store: Store<StoreState>,
    proxy: Proxy,
    calls: u32,
}

impl Runner {
    /// A runner of `pre`'s instances, each for up to `reuse` calls.
    pub(super) fn new(pre: ProxyPre<StoreState>, settings: ExecSettings, reuse: u32) -> Self {
        Self {
            outbound: settings.grants.outbound.clone().into(),
            pre,
            settings,
            reuse: ReusePolicy::new(reuse),
            largest_memory: AtomicU64::new(0),
        }
    }

    /// The most linear memory one instance has held after a call, in bytes.
    pub(super) fn largest_memory(&self) -> u64 {
        self.largest_memory.load(Ordering::Relaxed)
    }

    /// Where the function's calls are counted.
    pub(super) fn profile(&self) -> &profile::Profile {
        &self.settings.profile
    }

    /// The function's name, for log lines.
    pub(super) fn function(&self) -> Arc<str> {
        self.settings.function.clone()
    }

    /// A thread's loop: keep an instance warm, take a call, run it, until
    /// the lane stops or the crew has more threads than it wants.
    pub(super) fn serve(&self, crew: &Crew) {
        let mut warm: Option<Warm> = None;
        // Load shedding counts a call's time ready without a core as
        // waiting: read around each call, only when shedding is on.
        let run_delay = self
            .settings
            .shedder
            .is_some()
            .then(profile::OwnRunDelay::open);
        loop {
            if warm.is_none() {
                match self.prepare() {
                    Ok(instance) => warm = Some(instance),
                    Err(error) => tracing::warn!("cannot pre-create an instance: {error}"),
                }
            }
            let job = match crew.next_work() {
                None => return,
                Some(Work::Retire) if crew.retire_one() => return,
                Some(Work::Retire) => continue,
                Some(Work::Call(job)) => job,
            };
            if job.respond.is_closed() || !job.claim.start() {
                continue;
            }
            if Instant::now() >= job.deadline {
                let _ = job.respond.send(Err(InvocationError::new(
                    FailureKind::Timeout,
                    "timed out waiting in the sync lane's queue",
                )));
                continue;
            }
            // Reuse may have stopped since this instance served its last call.
            let warm_usable = warm.take().filter(|w| w.calls < self.reuse.limit());
            let instance = match warm_usable.map_or_else(|| self.prepare(), Ok) {
                Ok(instance) => instance,
                Err(error) => {
                    let _ = job.respond.send(Err(error));
                    continue;
                }
            };
            let id = job.id;
            let started = Instant::now();
            let queued = started.saturating_duration_since(job.enqueued);
            let cpu_before = profile::thread_cpu_time();
            let delay_before = run_delay.as_ref().map(profile::OwnRunDelay::now);
            crew.load.running.fetch_add(1, Ordering::Relaxed);
            // A panic in a host call must cost one call, not the thread: the
            // caller sees its answer channel close and gets a 500.
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run(instance, job)))
            {
                Ok(next) => warm = next,
                Err(_) => {
                    tracing::error!("[{id}] the host panicked while running this call");
                    warm = None;
                }
            }
            crew.load.running.fetch_sub(1, Ordering::Relaxed);
            let cpu = profile::thread_cpu_time() - cpu_before;
            let busy = started.elapsed();
            self.settings.profile.record(cpu, queued);
            if let (Some(shedder), Some(own), Some(before)) =
                (&self.settings.shedder, &run_delay, delay_before)
            {
                // While `--threads auto` can still add threads, a queue is
                // its to remove, not load to shed.
                let growing = crew.load.can_grow.load(Ordering::Relaxed);
                let queued = if growing { Duration::ZERO } else { queued };
                let descheduled = own.now().saturating_sub(before).min(busy);
                shedder.record(queued + descheduled, busy - descheduled);
            }
            crew.load.record(busy, cpu, queued);
            if crew.retire_one() {
                return;
            }
        }
    }

    /// A new store and instance, ready for a call.
    fn prepare(&self) -> Result<Warm, InvocationError> {
        let state = new_state(&self.settings, &self.outbound)?;
        let mut store = Store::new(self.pre.engine(), state);
        store.limiter(|state| &mut state.limiter);
        // Instantiation runs guest start code: it gets a full deadline too.
        store.set_epoch_deadline(ticks(self.settings.limits.timeout));
        if let Some(budget) = self.settings.execution.max_fuel {
            store
                .set_fuel(budget)
                .map_err(|e| InvocationError::new(FailureKind::Trap, one_line(&e)))?;
        }
        let proxy = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| classify(&e, store.data().limiter.exceeded()))?;
        Ok(Warm {
            store,
            proxy,
            calls: 0,
        })
    }

    /// Runs one job on `instance`; returns the instance that may serve the
    /// next job, if any. A call that failed on a reused instance before it
    /// could have had effects runs again on a fresh one.
    fn run(&self, instance: Warm, job: Job) -> Option<Warm> {
        let Job {
            id,
            request,
            deadline,
            respond,
            claim: _,
            enqueued: _,
        } = job;
        // The response head goes to the caller as soon as the guest sets it;
        // the guest may keep writing the body on this thread afterwards.
        let answer = Answer::from_sender(respond);
        let reused = instance.calls > 0;
        let (request, replay) = Replay::keep_if(reused, request);
        let ended = self.call_on(instance, id, request, deadline, &answer);
        let failure = match ended.result {
            Ok(()) => {
                self.reuse.record(reused, None);
                return ended.instance;
            }
            Err(failure) => failure,
        };
        if answer.abandoned() {
            // The client went away while the guest answered, and the guest
            // failed writing to it: the client's doing, not the instance's,
            // so it is no evidence against reuse (exec/answer.rs).
            answer.report(id, failure);
            return None;
        }
        let dirs = !self.settings.grants.dirs.is_empty();
        // Only within the call's deadline.
        let replay = replay.filter(|_| Instant::now() < deadline);
        let answered = answer.is_answered();
        let again =
            self.reuse
                .run_again(id, reused, replay, &failure, answered, ended.outbound, dirs);
        let Some(request) = again else {
            answer.report(id, failure);
            return None;
        };
        let ended = match self.prepare() {
            Ok(fresh) => self.call_on(fresh, id, request, deadline, &answer),
            Err(error) => {
                answer.report(id, error);
                return None;
            }
        };
        match ended.result {
            Ok(()) => {
                self.reuse.confirmed_by_retry(&failure);
                // Kept before reuse stopped: not any more.
                ended
                    .instance
                    .filter(|fresh| fresh.calls < self.reuse.limit())
            }
            Err(error) => {
                self.reuse.record(false, Some(error.kind));
                answer.report(id, error);
                None
            }
        }
    }

    /// Runs one call on `instance`, within `deadline`.
    fn call_on(
        &self,
        mut instance: Warm,
        id: InvocationId,
        request: http::Request<Body>,
        deadline: Instant,
        answer: &Answer,
    ) -> Ended<Warm> {
        let store = &mut instance.store;
        store.data_mut().begin(id);
        let remaining = deadline.saturating_duration_since(Instant::now());
        store.set_epoch_deadline(ticks(remaining));
        if let Some(budget) = self.settings.execution.max_fuel
            && let Err(error) = store.set_fuel(budget)
        {
            return Ended::failed(InvocationError::new(FailureKind::Trap, one_line(&error)));
        }

        // A guest blocked reading the request body is inside a host call,
        // where the epoch deadline cannot reach it; the body itself ends
        // with an error at the deadline, so a client that stops sending
        // cannot hold this thread.
        let request = request.map(|body| {
            DeadlineBody::new(body, deadline)
                .map_err(body_error_to_wasi)
                .boxed_unsync()
        });
        let resources = {
            let mut http = store.data_mut().http();
            let incoming = http.new_incoming_request(Scheme::Http, request);
            let sender = answer.clone();
            let outparam = http.new_response_outparam_from_callback(move |response| {
                sender.send(match response {
                    Ok(response) => Ok(host_response(response)),
                    // Past the deadline an error answer is what the
                    // deadline caused (the request body ends there).
                    Err(code) if Instant::now() >= deadline => Err(InvocationError::new(
                        FailureKind::Timeout,
                        format!("ran past its deadline (the guest answered {code:?})"),
                    )),
                    Err(code) => Err(InvocationError::new(
                        FailureKind::Trap,
                        format!("the guest answered with error code {code:?}"),
                    )),
                });
            });
            incoming.and_then(|incoming| Ok((incoming, outparam?)))
        };
        let (incoming, outparam) = match resources {
            Ok(resources) => resources,
            Err(error) => {
                return Ended::failed(InvocationError::new(FailureKind::Trap, one_line(&error)));
            }
        };

        let result = instance.proxy.wasi_http_incoming_handler().call_handle(
            &mut instance.store,
            incoming,
            outparam,
        );
        instance.calls += 1;
        self.largest_memory
            .fetch_max(instance.store.data().limiter.used(), Ordering::Relaxed);
        let outbound = instance.store.data().outbound_requests();
        let exceeded = instance.store.data().limiter.exceeded();
        let result = call_outcome(result, answer.is_answered(), exceeded);
        // A failed instance is never used again, nor one refused memory:
        // it is at its cap, even if the guest coped and answered.
        let keep = result.is_ok() && !exceeded && instance.calls < self.reuse.limit();
        Ended {
            instance: keep.then_some(instance),
            result,
            outbound,
        }
    }
}
