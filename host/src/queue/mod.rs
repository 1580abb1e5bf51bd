//! Queues that feed the queue trigger: the embedded durable queue (SQLite
//! in `--data-dir`, the default) and Redis Streams (`redis://HOST:PORT/STREAM`,
//! for hosts on many machines).
//!
//! Both give the trigger the same operations with Azure Storage queue
//! semantics: `receive` hides messages for a visibility timeout and counts
//! the delivery, `complete` deletes, `abandon` makes visible again at once,
//! `renew` extends the timeout, `poison` moves a message to `<queue>-poison`
//! with its body and attempt count.

pub mod embedded;
pub mod redis_streams;

use crate::invocation::QueueMessage;
use bytes::Bytes;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Default folder of the embedded queue (`--data-dir`).
pub const DEFAULT_DATA_DIR: &str = ".fnhost";
/// Suffix of the poison queue's name.
pub const POISON_SUFFIX: &str = "-poison";
/// Largest message body, in bytes (Azure Storage queues allow 64 KiB,
/// SQS 256 KiB). Larger ones are refused on send; one that arrives through
/// Redis from another producer goes straight to the poison queue.
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// Why a queue operation failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The queue's store could not be opened.
    #[error("cannot open the queue store at {location}: {reason}")]
    Open {
        /// The folder or URL.
        location: String,
        /// Why.
        reason: String,
    },
    /// A queue name or URL is not valid.
    #[error("{0}")]
    Name(String),
    /// A message body over [`MAX_MESSAGE_BYTES`].
    #[error("a message may have at most {MAX_MESSAGE_BYTES} bytes; this one has {0}")]
    TooLarge(usize),
    /// The store failed an operation.
    #[error("{0}")]
    Backend(String),
}

/// One received message and the handle that acknowledges it.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// The message as the handler sees it.
    pub message: QueueMessage,
    /// Backend-specific: which row and lease, or which stream entry.
    pub receipt: String,
}

/// What `fnhost queue stats` and `GET /queues/{q}` report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Messages in the queue, in flight included.
    pub length: u64,
    /// Messages received and not yet completed or released.
    pub in_flight: u64,
    /// Age of the oldest message waiting to be handled (not in flight), if any.
    pub oldest_age: Option<Duration>,
    /// Messages in the poison queue.
    pub poison: u64,
}

impl QueueStats {
    /// The stats as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "length": self.length,
            "in_flight": self.in_flight,
            "oldest_age_seconds": self.oldest_age.map_or(0.0, |age| age.as_secs_f64()),
            "poison": self.poison,
        })
    }
}

/// Where a queue lives, from `--queue`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueueSpec {
    /// An embedded queue of this name.
    Embedded(String),
    /// A Redis stream.
    Redis {
        /// `redis://HOST:PORT` (plus any database path).
        url: String,
        /// The stream's key.
        stream: String,
    },
}

impl QueueSpec {
    /// Parses `NAME` or `redis://HOST:PORT/STREAM`.
    pub fn parse(text: &str) -> Result<Self, QueueError> {
        if let Some(rest) = text.strip_prefix("redis://") {
            let (address, stream) = rest.rsplit_once('/').ok_or_else(|| {
                QueueError::Name(format!("{text}: expected redis://HOST:PORT/STREAM"))
            })?;
            if address.is_empty() || !valid_name(stream) {
                return Err(QueueError::Name(format!(
                    "{text}: expected redis://HOST:PORT/STREAM with a stream name of letters, digits, '-', '_' or '.'"
                )));
            }
            return Ok(Self::Redis {
                url: format!("redis://{address}"),
                stream: stream.to_string(),
            });
        }
        if !valid_name(text) {
            return Err(QueueError::Name(format!(
                "`{text}` is not a queue name (1-128 letters, digits, '-', '_' or '.'; or redis://HOST:PORT/STREAM)"
            )));
        }
        Ok(Self::Embedded(text.to_string()))
    }

    /// The queue's name (the stream's, for Redis).
    pub fn name(&self) -> &str {
        match self {
            Self::Embedded(name) => name,
            Self::Redis { stream, .. } => stream,
        }
    }
}

fn valid_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// An open queue.
#[derive(Clone)]
pub enum Queue {
    /// In the embedded store.
    Embedded {
        /// The store.
        store: embedded::EmbeddedStore,
        /// The queue's name.
        name: String,
    },
    /// A Redis stream with a consumer group.
    Redis(redis_streams::RedisQueue),
}

impl Queue {
    /// Opens the queue `spec` names; embedded queues live in `data_dir`.
    pub async fn open(spec: &QueueSpec, data_dir: &Path) -> Result<Self, QueueError> {
        Ok(match spec {
            QueueSpec::Embedded(name) => Self::Embedded {
                store: embedded::EmbeddedStore::open(data_dir)?,
                name: name.clone(),
            },
            QueueSpec::Redis { url, stream } => {
                Self::Redis(redis_streams::RedisQueue::connect(url, stream).await?)
            }
        })
    }

    /// The same store, another queue in it (the poison queue, say).
    pub fn sibling(&self, name: &str) -> Self {
        match self {
            Self::Embedded { store, .. } => Self::Embedded {
                store: store.clone(),
                name: name.to_string(),
            },
            Self::Redis(queue) => Self::Redis(queue.sibling(name)),
        }
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        match self {
            Self::Embedded { name, .. } => name,
            Self::Redis(queue) => queue.stream(),
        }
    }

    /// The name of its poison queue.
    pub fn poison_name(&self) -> String {
        format!("{}{POISON_SUFFIX}", self.name())
    }

    /// Adds a message; returns its id.
    pub async fn send(
        &self,
        body: Bytes,
        attributes: Vec<(String, String)>,
    ) -> Result<String, QueueError> {
        if body.len() > MAX_MESSAGE_BYTES {
            return Err(QueueError::TooLarge(body.len()));
        }
        match self {
            Self::Embedded { store, name } => {
                store.send(name, new_message_id(), body, attributes).await
            }
            Self::Redis(queue) => queue.send(body, attributes).await,
        }
    }

    /// Adds several messages at once (one transaction or round trip);
    /// returns their ids.
    pub async fn send_batch(&self, bodies: Vec<Bytes>) -> Result<Vec<String>, QueueError> {
        if let Some(big) = bodies.iter().find(|b| b.len() > MAX_MESSAGE_BYTES) {
            return Err(QueueError::TooLarge(big.len()));
        }
        match self {
            Self::Embedded { store, name } => {
                let messages: Vec<(String, Bytes)> =
                    bodies.into_iter().map(|b| (new_message_id(), b)).collect();
                let ids = messages.iter().map(|(id, _)| id.clone()).collect();
                store.send_batch(name, messages).await?;
                Ok(ids)
            }
            Self::Redis(queue) => queue.send_batch(bodies).await,
        }
    }

    /// Takes up to `max` visible messages, hidden for `visibility`.
    pub async fn receive(
        &self,
        max: usize,
        visibility: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        match self {
            Self::Embedded { store, name } => store.receive(name, max, visibility).await,
            Self::Redis(queue) => queue.receive(max, visibility).await,
        }
    }

    /// Acknowledges a handled message.
    pub async fn complete(&self, delivery: &Delivery) -> Result<(), QueueError> {
        match self {
            Self::Embedded { store, .. } => {
                if !store.complete(delivery).await? {
                    tracing::warn!(
                        "message {}: its lease expired before it was acknowledged; it may run again",
                        delivery.message.id
                    );
                }
                Ok(())
            }
            Self::Redis(queue) => queue.complete(delivery).await,
        }
    }

    /// Releases a message for another attempt at once.
    pub async fn abandon(&self, delivery: &Delivery, reason: &str) -> Result<(), QueueError> {
        match self {
            Self::Embedded { store, .. } => store.abandon(delivery, reason).await,
            Self::Redis(queue) => queue.abandon(delivery).await,
        }
    }

    /// Releases a message that never reached a handler, without counting
    /// the delivery toward the poison rule.
    pub async fn release_uncounted(&self, delivery: &Delivery) -> Result<(), QueueError> {
        match self {
            Self::Embedded { store, .. } => store.release_uncounted(delivery).await,
            Self::Redis(queue) => queue.release_uncounted(delivery).await,
        }
    }

    /// Keeps a message hidden for another `visibility`.
    pub async fn renew(&self, delivery: &Delivery, visibility: Duration) -> Result<(), QueueError> {
        match self {
            Self::Embedded { store, .. } => store.renew(delivery, visibility).await,
            Self::Redis(queue) => queue.renew(delivery).await,
        }
    }

    /// Moves a message to the poison queue.
    pub async fn poison(&self, delivery: &Delivery, reason: &str) -> Result<(), QueueError> {
        let poison = self.poison_name();
        match self {
            Self::Embedded { store, .. } => store.poison(delivery, &poison, reason).await,
            Self::Redis(queue) => queue.poison(delivery, &poison, reason).await,
        }
    }

    /// Length, in flight, oldest age, poison count.
    pub async fn stats(&self) -> Result<QueueStats, QueueError> {
        let poison = self.poison_name();
        match self {
            Self::Embedded { store, name } => store.stats(name, &poison).await,
            Self::Redis(queue) => queue.stats(&poison).await,
        }
    }

    /// Up to `max` messages, oldest first, without receiving them.
    pub async fn peek(&self, max: usize) -> Result<Vec<QueueMessage>, QueueError> {
        match self {
            Self::Embedded { store, name } => store.peek(name, max).await,
            Self::Redis(queue) => queue.peek(max).await,
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A message id unique across processes: time, process id, counter.
pub fn new_message_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{:016x}-{:06x}-{:06x}",
        nanos as u64,
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed) & 0xff_ffff
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_specs_parse_names_and_redis_urls() {
        assert_eq!(
            QueueSpec::parse("jobs").unwrap(),
            QueueSpec::Embedded("jobs".into())
        );
        assert_eq!(
            QueueSpec::parse("redis://127.0.0.1:6379/jobs").unwrap(),
            QueueSpec::Redis {
                url: "redis://127.0.0.1:6379".into(),
                stream: "jobs".into()
            }
        );
        for bad in ["", "a b", "../x", "redis://host", "redis:///s"] {
            assert!(QueueSpec::parse(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn the_embedded_queue_hides_counts_completes_and_poisons() {
        let dir = std::env::temp_dir().join(format!("fnhost-queue-unit-{}", new_message_id()));
        let queue = Queue::open(&QueueSpec::Embedded("q".into()), &dir)
            .await
            .unwrap();
        let id = queue
            .send(Bytes::from_static(b"one"), vec![])
            .await
            .unwrap();
        queue
            .send(Bytes::from_static(b"two"), vec![])
            .await
            .unwrap();

        let first = queue.receive(1, Duration::from_secs(60)).await.unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].message.id, id);
        assert_eq!(first[0].message.dequeue_count, 1);
        // Hidden while in flight: the next receive gets the other one only.
        let second = queue.receive(10, Duration::from_secs(60)).await.unwrap();
        assert_eq!(second.len(), 1);
        assert_eq!(&second[0].message.body[..], b"two");
        let stats = queue.stats().await.unwrap();
        assert_eq!((stats.length, stats.in_flight), (2, 2));

        queue.abandon(&first[0], "failed").await.unwrap();
        let again = queue.receive(10, Duration::from_secs(60)).await.unwrap();
        assert_eq!(again[0].message.dequeue_count, 2);
        // The old lease can no longer touch the message.
        queue.complete(&first[0]).await.unwrap();
        assert_eq!(queue.stats().await.unwrap().length, 2);

        queue.complete(&again[0]).await.unwrap();
        queue.poison(&second[0], "bad").await.unwrap();
        let stats = queue.stats().await.unwrap();
        assert_eq!((stats.length, stats.poison), (0, 1));
        let poisoned = queue.sibling(&queue.poison_name()).peek(10).await.unwrap();
        assert_eq!(&poisoned[0].body[..], b"two");
        assert_eq!(poisoned[0].dequeue_count, 1);
        let _ = std::fs::remove_dir_all(dir);
    }
}
