//! The scale controller's policy: how many workers the signals ask for.
//!
//! With `--workers MIN..MAX` the supervisor evaluates this every second:
//!
//! - **queue length**: Azure's rule, one worker per
//!   `batch-size + new-batch-threshold` messages waiting:
//!   `ceil(length / (batch + threshold))`;
//! - **message age**: the oldest message older than [`MAX_MESSAGE_AGE`]
//!   means the workers are not keeping up: one more than now;
//! - **HTTP concurrency**: more than [`HTTP_IN_FLIGHT_PER_WORKER`] requests
//!   in flight per worker: one more than now.
//!
//! The largest of these, within `MIN..MAX`, is the target. The controller
//! grows to it at once and shrinks to it only after it has stayed lower for
//! the cool-down (`--scale-cooldown`), so a brief lull does not stop
//! workers that are about to be needed again.

use std::time::Duration;

/// The oldest message may wait this long before another worker is added.
pub const MAX_MESSAGE_AGE: Duration = Duration::from_secs(10);
/// HTTP requests in flight per worker before another worker is added.
pub const HTTP_IN_FLIGHT_PER_WORKER: usize = 100;
/// Default time the target must stay lower before workers are stopped.
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(60);

/// The bounds and pace of scaling.
#[derive(Clone, Debug)]
pub struct ScalePolicy {
    /// Fewest workers.
    pub min: usize,
    /// Most workers.
    pub max: usize,
    /// How long the target must stay lower before shrinking.
    pub cooldown: Duration,
    /// The queue trigger's batch size (0 without a queue).
    pub batch_size: usize,
    /// The queue trigger's new-batch threshold.
    pub new_batch_threshold: usize,
}

/// What the controller sees at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ScaleInputs {
    /// Workers now.
    pub workers: usize,
    /// Messages in the queue (in flight included).
    pub queue_length: u64,
    /// Age of the oldest message.
    pub oldest_age: Option<Duration>,
    /// HTTP requests in flight.
    pub http_in_flight: usize,
}

impl std::fmt::Display for ScaleInputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "workers {}, queue length {}, oldest message {:.1} s, HTTP in flight {}",
            self.workers,
            self.queue_length,
            self.oldest_age.map_or(0.0, |age| age.as_secs_f64()),
            self.http_in_flight
        )
    }
}

impl ScalePolicy {
    /// The workers `inputs` ask for, within the bounds, and which signal
    /// decided it.
    pub fn target(&self, inputs: &ScaleInputs) -> (usize, &'static str) {
        let per_worker = (self.batch_size + self.new_batch_threshold).max(1);
        let by_length = (inputs.queue_length as usize).div_ceil(per_worker);
        let mut target = (by_length, "queue length");
        if inputs.oldest_age.is_some_and(|age| age > MAX_MESSAGE_AGE)
            && inputs.workers + 1 > target.0
        {
            target = (inputs.workers + 1, "message age");
        }
        if inputs.http_in_flight > HTTP_IN_FLIGHT_PER_WORKER * inputs.workers.max(1)
            && inputs.workers + 1 > target.0
        {
            target = (inputs.workers + 1, "HTTP concurrency");
        }
        if target.0 < self.min {
            target = (self.min, "minimum");
        }
        if target.0 > self.max {
            target = (self.max, "maximum");
        }
        target
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> ScalePolicy {
        ScalePolicy {
            min: 1,
            max: 4,
            cooldown: DEFAULT_COOLDOWN,
            batch_size: 16,
            new_batch_threshold: 8,
        }
    }

    #[test]
    fn the_target_follows_queue_length_age_and_http_within_bounds() {
        let policy = policy();
        let idle = ScaleInputs {
            workers: 2,
            ..ScaleInputs::default()
        };
        assert_eq!(policy.target(&idle), (1, "minimum"));
        let backlog = ScaleInputs {
            workers: 1,
            queue_length: 49,
            ..ScaleInputs::default()
        };
        // ceil(49 / (16 + 8)) = 3
        assert_eq!(policy.target(&backlog), (3, "queue length"));
        let huge = ScaleInputs {
            queue_length: 10_000,
            ..backlog.clone()
        };
        assert_eq!(policy.target(&huge), (4, "maximum"));
        let old = ScaleInputs {
            workers: 2,
            queue_length: 1,
            oldest_age: Some(Duration::from_secs(11)),
            ..ScaleInputs::default()
        };
        assert_eq!(policy.target(&old), (3, "message age"));
        let busy = ScaleInputs {
            workers: 2,
            http_in_flight: 201,
            ..ScaleInputs::default()
        };
        assert_eq!(policy.target(&busy), (3, "HTTP concurrency"));
    }
}
