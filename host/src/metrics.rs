//! The host's counters, gauges and histograms, in the Prometheus text format
//! (through the Prometheus project's `prometheus-client` crate).
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `fnhost_invocations_total` | counter | function, lane, outcome |
//! | `fnhost_invocation_duration_seconds` | histogram | function, lane |
//! | `fnhost_function_cpu_seconds_total` | counter (CPU the calls took on the workers' threads; `exec/profile.rs`) | function, lane |
//! | `fnhost_function_queued_seconds_total` | counter (time calls waited for a sync-lane thread) | function, lane |
//! | `fnhost_function_sync_threads` | gauge (sync-lane threads running now, summed over the workers; `--threads auto` changes it) | function, lane |
//! | `fnhost_in_flight` | gauge | |
//! | `fnhost_instances` | gauge | |
//! | `fnhost_workers` | gauge (ready workers) | |
//! | `fnhost_worker_restarts_total` | counter | |
//! | `fnhost_async_stalls_total` | counter (WASIp3 instances whose guest held its event loop 100 ms; see `exec/stall.rs`) | |
//! | `fnhost_guest_output_dropped_lines_total` | counter (guest output lines dropped because the host's stdout or stderr did not keep up) | |
//! | `fnhost_queue_length` | gauge (messages, in flight included) | queue |
//! | `fnhost_queue_oldest_age_seconds` | gauge | queue |
//! | `fnhost_queue_in_flight` | gauge | queue |
//! | `fnhost_queue_poison` | gauge (messages in `<queue>-poison`) | queue |
//! | `fnhost_scale_target_workers` | gauge (what the scale controller asks for) | |
//!
//! `outcome` is `ok` (the guest answered, whatever its status) or a failure
//! class (`trap`, `timeout`, `memory`, `capacity`, `worker-lost`), or
//! `cancelled` when the client went away first. The duration runs from
//! dispatch to the end of the response body.

use crate::config::Lane;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::time::Duration;

/// Labels of an invocation count.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    function: String,
    lane: String,
    outcome: String,
}

/// Labels of an invocation latency.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FunctionLabels {
    function: String,
    lane: String,
}

/// Labels of a queue gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    queue: String,
}

type LatencyFamily = Family<FunctionLabels, Histogram, fn() -> Histogram>;
type SecondsFamily = Family<FunctionLabels, Counter<f64, std::sync::atomic::AtomicU64>>;

/// All of the host's metrics.
pub struct Metrics {
    registry: Registry,
    invocations: Family<OutcomeLabels, Counter>,
    latency: LatencyFamily,
    cpu: SecondsFamily,
    queued: SecondsFamily,
    sync_threads: Family<FunctionLabels, Gauge>,
    /// Invocations dispatched and not yet finished.
    pub in_flight: Gauge,
    /// Instances alive in the workers.
    pub instances: Gauge,
    /// Workers ready to take invocations.
    pub workers: Gauge,
    /// Worker processes started to replace one that failed or was recycled.
    pub worker_restarts: Counter,
    /// WASIp3 instances whose guest held its event loop past the stall
    /// threshold (their new calls went to other instances).
    pub async_stalls: Counter,
    /// Guest output lines dropped because the host's stdio was behind.
    pub guest_output_dropped: Counter,
    /// Workers the scale controller asks for.
    pub scale_target: Gauge,
    queue_length: Family<QueueLabels, Gauge>,
    queue_oldest_age: Family<QueueLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    queue_in_flight: Family<QueueLabels, Gauge>,
    queue_poison: Family<QueueLabels, Gauge>,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms to about 33 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 17))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("fnhost");
        let invocations = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "invocations",
            "Invocations by function, lane and outcome",
            invocations.clone(),
        );
        let latency = LatencyFamily::new_with_constructor(latency_histogram);
        registry.register(
            "invocation_duration_seconds",
            "Time from dispatch to the end of the response",
            latency.clone(),
        );
        let cpu = SecondsFamily::default();
        registry.register(
            "function_cpu_seconds",
            "CPU the function's calls took on the workers' threads",
            cpu.clone(),
        );
        let queued = SecondsFamily::default();
        registry.register(
            "function_queued_seconds",
            "Time the function's calls waited for a sync-lane thread",
            queued.clone(),
        );
        let sync_threads = Family::<FunctionLabels, Gauge>::default();
        registry.register(
            "function_sync_threads",
            "Sync-lane threads the function runs now, over all workers",
            sync_threads.clone(),
        );
        let in_flight = Gauge::default();
        registry.register("in_flight", "Invocations running now", in_flight.clone());
        let instances = Gauge::default();
        registry.register(
            "instances",
            "Guest instances alive in the workers, warm or running",
            instances.clone(),
        );
        let workers = Gauge::default();
        registry.register(
            "workers",
            "Worker processes ready for invocations",
            workers.clone(),
        );
        let worker_restarts = Counter::default();
        registry.register(
            "worker_restarts",
            "Worker processes started to replace one that exited",
            worker_restarts.clone(),
        );
        let async_stalls = Counter::default();
        registry.register(
            "async_stalls",
            "WASIp3 instances whose guest ran 100 ms without handing control back to its event loop",
            async_stalls.clone(),
        );
        let guest_output_dropped = Counter::default();
        registry.register(
            "guest_output_dropped_lines",
            "Guest output lines dropped because the host's stdout or stderr did not keep up",
            guest_output_dropped.clone(),
        );
        let scale_target = Gauge::default();
        registry.register(
            "scale_target_workers",
            "Workers the scale controller asks for",
            scale_target.clone(),
        );
        let queue_length = Family::<QueueLabels, Gauge>::default();
        registry.register(
            "queue_length",
            "Messages in the queue, in flight included",
            queue_length.clone(),
        );
        let queue_oldest_age =
            Family::<QueueLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "queue_oldest_age_seconds",
            "Age of the oldest message waiting in the queue (not in flight)",
            queue_oldest_age.clone(),
        );
        let queue_in_flight = Family::<QueueLabels, Gauge>::default();
        registry.register(
            "queue_in_flight",
            "Messages received and not yet completed or released",
            queue_in_flight.clone(),
        );
        let queue_poison = Family::<QueueLabels, Gauge>::default();
        registry.register(
            "queue_poison",
            "Messages in the poison queue",
            queue_poison.clone(),
        );
        Self {
            registry,
            invocations,
            latency,
            cpu,
            queued,
            sync_threads,
            in_flight,
            instances,
            workers,
            worker_restarts,
            async_stalls,
            guest_output_dropped,
            scale_target,
            queue_length,
            queue_oldest_age,
            queue_in_flight,
            queue_poison,
        }
    }
}

impl Metrics {
    /// Records one finished invocation.
    pub fn record(&self, function: &str, lane: Lane, outcome: &str, duration: Duration) {
        self.invocations
            .get_or_create(&OutcomeLabels {
                function: function.to_string(),
                lane: lane.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
        self.latency
            .get_or_create(&FunctionLabels {
                function: function.to_string(),
                lane: lane.to_string(),
            })
            .observe(duration.as_secs_f64());
    }

    /// Counts `durations.len()` invocations of one function with one
    /// outcome at once: the label lookups once, not once per call.
    pub fn record_batch(&self, function: &str, lane: Lane, outcome: &str, durations: &[Duration]) {
        self.invocations
            .get_or_create(&OutcomeLabels {
                function: function.to_string(),
                lane: lane.to_string(),
                outcome: outcome.to_string(),
            })
            .inc_by(durations.len() as u64);
        let latency = self.latency.get_or_create(&FunctionLabels {
            function: function.to_string(),
            lane: lane.to_string(),
        });
        for duration in durations {
            latency.observe(duration.as_secs_f64());
        }
    }

    /// Adds what a worker measured of a function's calls.
    pub fn record_profile(&self, function: &str, lane: Lane, cpu: Duration, queued: Duration) {
        let labels = FunctionLabels {
            function: function.to_string(),
            lane: lane.to_string(),
        };
        self.cpu.get_or_create(&labels).inc_by(cpu.as_secs_f64());
        self.queued
            .get_or_create(&labels)
            .inc_by(queued.as_secs_f64());
    }

    /// Sets how many sync-lane threads `function` runs now.
    pub fn set_sync_threads(&self, function: &str, threads: u64) {
        let labels = FunctionLabels {
            function: function.to_string(),
            lane: Lane::Sync.to_string(),
        };
        self.sync_threads
            .get_or_create(&labels)
            .set(i64::try_from(threads).unwrap_or(i64::MAX));
    }

    /// Sets the gauges of queue `name`.
    pub fn set_queue(&self, name: &str, stats: &crate::queue::QueueStats) {
        let labels = QueueLabels {
            queue: name.to_string(),
        };
        self.queue_length
            .get_or_create(&labels)
            .set(stats.length as i64);
        self.queue_oldest_age
            .get_or_create(&labels)
            .set(stats.oldest_age.map_or(0.0, |age| age.as_secs_f64()));
        self.queue_in_flight
            .get_or_create(&labels)
            .set(stats.in_flight as i64);
        self.queue_poison
            .get_or_create(&labels)
            .set(stats.poison as i64);
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_invocations_appear_in_the_text_format() {
        let metrics = Metrics::default();
        metrics.record("hello", Lane::Async, "ok", Duration::from_millis(3));
        metrics.record("hello", Lane::Async, "trap", Duration::from_millis(1));
        metrics.worker_restarts.inc();
        let text = metrics.encode();
        assert!(
            text.contains(
                r#"fnhost_invocations_total{function="hello",lane="async",outcome="ok"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains("fnhost_invocation_duration_seconds_bucket"));
        assert!(text.contains("fnhost_worker_restarts_total 1"));
    }
}
