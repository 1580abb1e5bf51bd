//! The embedded durable queue: one SQLite database (`<data-dir>/queues.sqlite3`)
//! holding every embedded queue, through rusqlite.
//!
//! SQLite rather than a pure-Rust store such as redb because several
//! processes must use the file at once: the host's queue trigger, and
//! `fnhost queue send` / `stats` run from a shell while it serves. SQLite
//! serialises writers across processes with file locks; redb allows one
//! process per file. WAL mode with `synchronous=NORMAL`: a committed send or
//! acknowledgement survives `kill -9` of any process (the WAL is on disk
//! before the commit returns); a power cut may lose the last transactions.
//!
//! A message row carries `visible_at` (ms): receiving it sets that to now
//! plus the visibility timeout, adds one to `dequeue_count` and bumps
//! `lease`, all in one `BEGIN IMMEDIATE` transaction, so two consumers never
//! take the same message while it is invisible. Completing, abandoning,
//! renewing or poisoning names the lease: a consumer whose lease expired
//! (and whose message was taken by another) cannot delete it.

use super::{Delivery, QueueError, QueueStats, now_ms};
use crate::invocation::QueueMessage;
use bytes::Bytes;
use rusqlite::{Connection, params};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// File name of the database inside the data folder.
pub const DATABASE_FILE: &str = "queues.sqlite3";
/// How long a statement waits for another process's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS messages (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    id            TEXT    NOT NULL UNIQUE,
    queue         TEXT    NOT NULL,
    body          BLOB    NOT NULL,
    attributes    TEXT    NOT NULL,
    enqueued_at   INTEGER NOT NULL,
    visible_at    INTEGER NOT NULL,
    dequeue_count INTEGER NOT NULL DEFAULT 0,
    lease         INTEGER NOT NULL DEFAULT 0,
    last_error    TEXT
);
CREATE INDEX IF NOT EXISTS messages_by_visibility ON messages (queue, visible_at, seq);
CREATE INDEX IF NOT EXISTS messages_by_age ON messages (queue, enqueued_at);
";

/// The embedded queues of one data folder.
#[derive(Clone)]
pub struct EmbeddedStore {
    connection: Arc<Mutex<Connection>>,
}

impl EmbeddedStore {
    /// Opens (creating if needed) the database in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, QueueError> {
        let fail = |reason: String| QueueError::Open {
            location: data_dir.display().to_string(),
            reason,
        };
        create_private_dir(data_dir).map_err(|e| fail(e.to_string()))?;
        let path = data_dir.join(DATABASE_FILE);
        let connection = Connection::open(&path).map_err(|e| fail(e.to_string()))?;
        connection
            .busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| fail(e.to_string()))?;
        connection
            .execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;")
            .map_err(|e| fail(e.to_string()))?;
        connection
            .execute_batch(SCHEMA)
            .map_err(|e| fail(e.to_string()))?;
        Ok(Self {
            connection: Arc::new(Mutex::new(connection)),
        })
    }

    /// Runs `work` on the connection on tokio's blocking pool.
    async fn with<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, QueueError> {
        let connection = self.connection.clone();
        tokio::task::spawn_blocking(move || {
            let mut connection = connection.lock().unwrap_or_else(|e| e.into_inner());
            work(&mut connection)
        })
        .await
        .map_err(|e| QueueError::Backend(format!("the queue task failed: {e}")))?
        .map_err(|e| QueueError::Backend(format!("sqlite: {e}")))
    }

    /// Adds a message to `queue`.
    pub async fn send(
        &self,
        queue: &str,
        id: String,
        body: Bytes,
        attributes: Vec<(String, String)>,
    ) -> Result<String, QueueError> {
        let queue = queue.to_string();
        let attributes = serde_json::to_string(&attributes).expect("pairs of strings serialize");
        self.with(move |connection| {
            let now = now_ms();
            connection.execute(
                "INSERT INTO messages (id, queue, body, attributes, enqueued_at, visible_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
                params![id, queue, &body[..], attributes, now as i64],
            )?;
            Ok(id)
        })
        .await
    }

    /// Adds several messages to `queue` in one transaction.
    pub async fn send_batch(
        &self,
        queue: &str,
        messages: Vec<(String, Bytes)>,
    ) -> Result<(), QueueError> {
        let queue = queue.to_string();
        self.with(move |connection| {
            let now = now_ms() as i64;
            let transaction = connection.transaction()?;
            {
                let mut insert = transaction.prepare_cached(
                    "INSERT INTO messages (id, queue, body, attributes, enqueued_at, visible_at)
                     VALUES (?1, ?2, ?3, '[]', ?4, ?4)",
                )?;
                for (id, body) in &messages {
                    insert.execute(params![id, queue, &body[..], now])?;
                }
            }
            transaction.commit()
        })
        .await
    }

    /// Takes up to `max` visible messages of `queue`, hiding them for
    /// `visibility`.
    pub async fn receive(
        &self,
        queue: &str,
        max: usize,
        visibility: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        let queue = queue.to_string();
        self.with(move |connection| {
            let now = now_ms() as i64;
            let hidden_until = now + visibility.as_millis() as i64;
            let transaction =
                connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let mut deliveries = Vec::new();
            {
                let mut select = transaction.prepare_cached(
                    "SELECT seq, id, body, attributes, enqueued_at, dequeue_count, lease
                     FROM messages WHERE queue = ?1 AND visible_at <= ?2
                     ORDER BY seq LIMIT ?3",
                )?;
                let mut update = transaction.prepare_cached(
                    "UPDATE messages SET visible_at = ?2, dequeue_count = dequeue_count + 1,
                     lease = lease + 1 WHERE seq = ?1",
                )?;
                let rows = select.query_map(params![queue, now, max as i64], |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, Vec<u8>>(2)?,
                        row.get::<_, String>(3)?,
                        row.get::<_, i64>(4)?,
                        row.get::<_, i64>(5)?,
                        row.get::<_, i64>(6)?,
                    ))
                })?;
                let rows: Vec<_> = rows.collect::<rusqlite::Result<_>>()?;
                for (seq, id, body, attributes, enqueued_at, dequeue_count, lease) in rows {
                    update.execute(params![seq, hidden_until])?;
                    deliveries.push(Delivery {
                        message: QueueMessage {
                            id,
                            body: Bytes::from(body),
                            dequeue_count: (dequeue_count + 1) as u32,
                            enqueued_at_ms: enqueued_at as u64,
                            attributes: serde_json::from_str(&attributes).unwrap_or_default(),
                        },
                        receipt: format!("{seq}:{}", lease + 1),
                    });
                }
            }
            transaction.commit()?;
            Ok(deliveries)
        })
        .await
    }

    /// Deletes a handled message (if this delivery still holds its lease).
    pub async fn complete(&self, delivery: &Delivery) -> Result<bool, QueueError> {
        let (seq, lease) = parse_receipt(&delivery.receipt)?;
        self.with(move |connection| {
            let deleted = connection.execute(
                "DELETE FROM messages WHERE seq = ?1 AND lease = ?2",
                params![seq, lease],
            )?;
            Ok(deleted == 1)
        })
        .await
    }

    /// Makes a message visible again at once (a failed attempt, or a lost
    /// worker), recording why.
    pub async fn abandon(&self, delivery: &Delivery, reason: &str) -> Result<(), QueueError> {
        let (seq, lease) = parse_receipt(&delivery.receipt)?;
        let reason = reason.to_string();
        self.with(move |connection| {
            connection.execute(
                "UPDATE messages SET visible_at = ?3, last_error = ?4 WHERE seq = ?1 AND lease = ?2",
                params![seq, lease, now_ms() as i64, reason],
            )?;
            Ok(())
        })
        .await
    }

    /// Makes a message visible again at once without counting the delivery
    /// (it never reached a handler: no worker had room).
    pub async fn release_uncounted(&self, delivery: &Delivery) -> Result<(), QueueError> {
        let (seq, lease) = parse_receipt(&delivery.receipt)?;
        self.with(move |connection| {
            connection.execute(
                "UPDATE messages SET visible_at = ?3, dequeue_count = MAX(dequeue_count - 1, 0)
                 WHERE seq = ?1 AND lease = ?2",
                params![seq, lease, now_ms() as i64],
            )?;
            Ok(())
        })
        .await
    }

    /// Keeps a message hidden for another `visibility` (a long handler).
    pub async fn renew(&self, delivery: &Delivery, visibility: Duration) -> Result<(), QueueError> {
        let (seq, lease) = parse_receipt(&delivery.receipt)?;
        self.with(move |connection| {
            let until = now_ms() as i64 + visibility.as_millis() as i64;
            connection.execute(
                "UPDATE messages SET visible_at = ?3 WHERE seq = ?1 AND lease = ?2",
                params![seq, lease, until],
            )?;
            Ok(())
        })
        .await
    }

    /// Moves a message to `poison_queue`, keeping its body and attempt count.
    pub async fn poison(
        &self,
        delivery: &Delivery,
        poison_queue: &str,
        reason: &str,
    ) -> Result<(), QueueError> {
        let (seq, lease) = parse_receipt(&delivery.receipt)?;
        let (poison_queue, reason) = (poison_queue.to_string(), reason.to_string());
        self.with(move |connection| {
            connection.execute(
                "UPDATE messages SET queue = ?3, visible_at = ?4, last_error = ?5
                 WHERE seq = ?1 AND lease = ?2",
                params![seq, lease, poison_queue, now_ms() as i64, reason],
            )?;
            Ok(())
        })
        .await
    }

    /// Length, in-flight count and oldest age of `queue`, and the length of
    /// `poison_queue`.
    pub async fn stats(&self, queue: &str, poison_queue: &str) -> Result<QueueStats, QueueError> {
        let (queue, poison_queue) = (queue.to_string(), poison_queue.to_string());
        self.with(move |connection| {
            let now = now_ms() as i64;
            // The oldest age is over waiting (visible) messages: one that
            // is running long is not a backlog.
            let (length, in_flight, oldest): (i64, i64, Option<i64>) = connection.query_row(
                "SELECT COUNT(*), COALESCE(SUM(visible_at > ?2), 0),
                        MIN(CASE WHEN visible_at <= ?2 THEN enqueued_at END)
                 FROM messages WHERE queue = ?1",
                params![queue, now],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )?;
            let poison: i64 = connection.query_row(
                "SELECT COUNT(*) FROM messages WHERE queue = ?1",
                params![poison_queue],
                |row| row.get(0),
            )?;
            Ok(QueueStats {
                length: length as u64,
                in_flight: in_flight as u64,
                oldest_age: oldest.map(|at| Duration::from_millis((now - at).max(0) as u64)),
                poison: poison as u64,
            })
        })
        .await
    }

    /// The messages of `queue` (for tests and `fnhost queue stats --list`).
    pub async fn peek(&self, queue: &str, max: usize) -> Result<Vec<QueueMessage>, QueueError> {
        let queue = queue.to_string();
        self.with(move |connection| {
            let mut select = connection.prepare(
                "SELECT id, body, attributes, enqueued_at, dequeue_count FROM messages
                 WHERE queue = ?1 ORDER BY seq LIMIT ?2",
            )?;
            let rows = select.query_map(params![queue, max as i64], |row| {
                Ok(QueueMessage {
                    id: row.get(0)?,
                    body: Bytes::from(row.get::<_, Vec<u8>>(1)?),
                    attributes: serde_json::from_str(&row.get::<_, String>(2)?).unwrap_or_default(),
                    enqueued_at_ms: row.get::<_, i64>(3)? as u64,
                    dequeue_count: row.get::<_, i64>(4)? as u32,
                })
            })?;
            rows.collect()
        })
        .await
    }
}

fn parse_receipt(receipt: &str) -> Result<(i64, i64), QueueError> {
    receipt
        .split_once(':')
        .and_then(|(seq, lease)| Some((seq.parse().ok()?, lease.parse().ok()?)))
        .ok_or_else(|| QueueError::Backend(format!("malformed receipt {receipt:?}")))
}

/// Creates `dir` (and parents) with mode 0700 if missing.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}
