//! The host's counters, gauges and histograms, in the Prometheus text format
//! (through the Prometheus project's `prometheus-client` crate).
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `fnhost_invocations_total` | counter | function, lane, outcome |
//! | `fnhost_invocation_duration_seconds` | histogram | function, lane |
//! | `fnhost_in_flight` | gauge | |
//! | `fnhost_instances` | gauge | |
//! | `fnhost_workers` | gauge (ready workers) | |
//! | `fnhost_worker_restarts_total` | counter | |
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

type LatencyFamily = Family<FunctionLabels, Histogram, fn() -> Histogram>;

/// All of the host's metrics.
pub struct Metrics {
    registry: Registry,
    invocations: Family<OutcomeLabels, Counter>,
    latency: LatencyFamily,
    /// Invocations dispatched and not yet finished.
    pub in_flight: Gauge,
    /// Instances alive in the workers.
    pub instances: Gauge,
    /// Workers ready to take invocations.
    pub workers: Gauge,
    /// Worker processes started to replace one that failed or was recycled.
    pub worker_restarts: Counter,
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
        Self {
            registry,
            invocations,
            latency,
            in_flight,
            instances,
            workers,
            worker_restarts,
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
