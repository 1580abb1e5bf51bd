//! A Redis stream as a queue, for hosts on many machines
//! (`--queue redis://HOST:PORT/STREAM`), through the redis crate.
//!
//! - Every host joins the consumer group `fnhost` (created with the stream
//!   if missing) as its own consumer (`<hostname>-<pid>`).
//! - `receive` first claims entries other consumers left pending longer
//!   than the visibility timeout (`XAUTOCLAIM`: the owner died, or its
//!   worker did), then reads new ones (`XREADGROUP >`). The delivery count
//!   is Redis's own (`XPENDING`'s times-delivered), so the poison rule holds
//!   across hosts.
//! - `complete` acknowledges and deletes the entry (`XACK` + `XDEL`).
//! - `abandon` makes an entry claimable at once: `XCLAIM … IDLE <large>
//!   JUSTID` sets its idle time past the visibility timeout without counting
//!   a delivery, and the next `receive` claims it.
//! - `renew` resets the idle time (`XCLAIM … JUSTID`).
//! - `poison` copies the entry to `<stream>-poison` with its attempt count
//!   and the last error, then acknowledges and deletes it.
//! - Each of those four runs in one Lua script that first checks, with
//!   `XPENDING`, that this consumer still owns the entry: a host whose
//!   visibility lapsed (and whose message another host claimed) cannot
//!   acknowledge, renew, release or poison the other host's delivery.
//!
//! An entry's fields: `body` (bytes), `enqueued_at` (ms), and `attr:<key>`
//! for each attribute. The message id is the entry id.

use super::{Delivery, QueueError, QueueStats, now_ms};
use crate::invocation::QueueMessage;
use bytes::Bytes;
use redis::Value;
use redis::aio::ConnectionManager;
use std::time::Duration;

/// The consumer group every fnhost host joins.
pub const GROUP: &str = "fnhost";
/// Longest wait for a Redis connection or answer.
const REDIS_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle time given to an abandoned entry so the next receive claims it.
const ABANDONED_IDLE_MS: u64 = 1 << 40;

/// One stream of one Redis server.
#[derive(Clone)]
pub struct RedisQueue {
    connection: ConnectionManager,
    stream: String,
    consumer: String,
    /// Where the next `XAUTOCLAIM` scan resumes (Redis returns it), so
    /// stale entries deep in the pending list are reached too.
    claim_cursor: std::sync::Arc<std::sync::Mutex<String>>,
}

/// Acts on an entry only if this consumer still owns it (Redis hands a
/// stale entry to another consumer once its idle time passes the
/// visibility timeout; the former owner must then neither acknowledge,
/// renew, release nor poison it). KEYS[1] = stream, KEYS[2] = its poison
/// stream; ARGV = group, id, consumer, action, then the action's arguments.
const OWNED_ACTION: &str = r"
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #pending == 0 or pending[1][2] ~= ARGV[3] then return 0 end
local action = ARGV[4]
if action == 'ack' then
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
  redis.call('XDEL', KEYS[1], ARGV[2])
elseif action == 'renew' then
  redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2], 'JUSTID')
elseif action == 'release' then
  redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2], 'IDLE', ARGV[5], 'RETRYCOUNT', ARGV[6], 'JUSTID')
elseif action == 'poison' then
  local fields = {}
  for i = 5, #ARGV do fields[#fields + 1] = ARGV[i] end
  redis.call('XADD', KEYS[2], '*', unpack(fields))
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
  redis.call('XDEL', KEYS[1], ARGV[2])
end
return 1
";

fn backend(error: redis::RedisError) -> QueueError {
    QueueError::Backend(format!("redis: {error}"))
}

impl RedisQueue {
    /// Connects and makes sure the stream and the consumer group exist.
    pub async fn connect(url: &str, stream: &str) -> Result<Self, QueueError> {
        let fail = |reason: String| QueueError::Open {
            location: format!("{url}/{stream}"),
            reason,
        };
        let client = redis::Client::open(url).map_err(|e| fail(e.to_string()))?;
        // Every command gets an answer or an error within the timeout, so
        // an unreachable server cannot hang the trigger or a drain.
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(REDIS_TIMEOUT)
            .set_response_timeout(REDIS_TIMEOUT);
        let connection = tokio::time::timeout(
            Duration::from_secs(10),
            ConnectionManager::new_with_config(client, config),
        )
        .await
        .map_err(|_| fail("no answer within 10 s".to_string()))?
        .map_err(|e| fail(e.to_string()))?;
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "host".to_string());
        let queue = Self {
            connection,
            stream: stream.to_string(),
            consumer: format!("{host}-{}", std::process::id()),
            claim_cursor: std::sync::Arc::new(std::sync::Mutex::new("0-0".to_string())),
        };
        queue
            .ensure_group()
            .await
            .map_err(|e| fail(e.to_string()))?;
        Ok(queue)
    }

    async fn ensure_group(&self) -> Result<(), QueueError> {
        let created: redis::RedisResult<Value> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.stream)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut self.connection.clone())
            .await;
        match created {
            Ok(_) => Ok(()),
            Err(error) if error.code() == Some("BUSYGROUP") => Ok(()),
            Err(error) => Err(backend(error)),
        }
    }

    /// The stream's key.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// Another stream on the same server.
    pub fn sibling(&self, stream: &str) -> Self {
        Self {
            stream: stream.to_string(),
            claim_cursor: std::sync::Arc::new(std::sync::Mutex::new("0-0".to_string())),
            ..self.clone()
        }
    }

    /// Appends an entry; returns its id.
    pub async fn send(
        &self,
        body: Bytes,
        attributes: Vec<(String, String)>,
    ) -> Result<String, QueueError> {
        let mut command = redis::cmd("XADD");
        command
            .arg(&self.stream)
            .arg("*")
            .arg("body")
            .arg(&body[..])
            .arg("enqueued_at")
            .arg(now_ms());
        for (key, value) in &attributes {
            command.arg(format!("attr:{key}")).arg(value);
        }
        command
            .query_async(&mut self.connection.clone())
            .await
            .map_err(backend)
    }

    /// Appends several entries in one round trip; returns their ids.
    pub async fn send_batch(&self, bodies: Vec<Bytes>) -> Result<Vec<String>, QueueError> {
        let mut pipe = redis::pipe();
        let now = now_ms();
        for body in &bodies {
            pipe.cmd("XADD")
                .arg(&self.stream)
                .arg("*")
                .arg("body")
                .arg(&body[..])
                .arg("enqueued_at")
                .arg(now);
        }
        pipe.query_async(&mut self.connection.clone())
            .await
            .map_err(backend)
    }

    /// Claims stale entries, then reads new ones, up to `max` in all.
    pub async fn receive(
        &self,
        max: usize,
        visibility: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        let mut connection = self.connection.clone();
        let cursor = self.claim_cursor.lock().expect("claim cursor").clone();
        let claimed: Value = redis::cmd("XAUTOCLAIM")
            .arg(&self.stream)
            .arg(GROUP)
            .arg(&self.consumer)
            .arg(visibility.as_millis() as u64)
            .arg(&cursor)
            .arg("COUNT")
            .arg(max)
            .query_async(&mut connection)
            .await
            .map_err(backend)?;
        let mut entries = match &claimed {
            Value::Array(parts) if parts.len() >= 2 => {
                if let Some(next) = as_string(&parts[0]) {
                    *self.claim_cursor.lock().expect("claim cursor") = next;
                }
                parse_entries(&parts[1])
            }
            _ => Vec::new(),
        };
        let claimed_count = entries.len();
        if entries.len() < max {
            // The claimed entries are ours now (their count went up): a
            // failure from here on must not drop them.
            let read: redis::RedisResult<Value> = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(GROUP)
                .arg(&self.consumer)
                .arg("COUNT")
                .arg(max - entries.len())
                .arg("STREAMS")
                .arg(&self.stream)
                .arg(">")
                .query_async(&mut connection)
                .await;
            let read = read.unwrap_or_else(|error| {
                tracing::warn!("redis: reading new entries failed: {error}");
                Value::Nil
            });
            if let Value::Array(streams) = &read {
                for stream in streams {
                    if let Value::Array(pair) = stream
                        && pair.len() == 2
                    {
                        entries.extend(parse_entries(&pair[1]));
                    }
                }
            }
        }
        let mut deliveries = Vec::with_capacity(entries.len());
        for (index, (id, fields)) in entries.into_iter().enumerate() {
            let dequeue_count = if index < claimed_count {
                // Claimed: at least its second delivery.
                self.times_delivered(&id).await.unwrap_or(2)
            } else {
                1
            };
            deliveries.push(Delivery {
                message: message_from_fields(id.clone(), fields, dequeue_count),
                receipt: id,
            });
        }
        Ok(deliveries)
    }

    /// Redis's delivery count of one pending entry.
    async fn times_delivered(&self, id: &str) -> Result<u32, QueueError> {
        let pending: Value = redis::cmd("XPENDING")
            .arg(&self.stream)
            .arg(GROUP)
            .arg(id)
            .arg(id)
            .arg(1)
            .query_async(&mut self.connection.clone())
            .await
            .map_err(backend)?;
        Ok(match &pending {
            Value::Array(rows) => rows
                .first()
                .and_then(|row| match row {
                    Value::Array(fields) => fields.get(3).and_then(as_u64),
                    _ => None,
                })
                .unwrap_or(1) as u32,
            _ => 1,
        })
    }

    /// Runs [`OWNED_ACTION`]; returns whether this consumer still owned the entry.
    async fn owned(
        &self,
        delivery: &Delivery,
        action: &str,
        extra: &[Vec<u8>],
    ) -> Result<bool, QueueError> {
        let script = redis::Script::new(OWNED_ACTION);
        let mut invocation = script.key(&self.stream);
        invocation.key(format!("{}{}", self.stream, super::POISON_SUFFIX));
        invocation
            .arg(GROUP)
            .arg(&delivery.receipt)
            .arg(&self.consumer)
            .arg(action);
        for value in extra {
            invocation.arg(&value[..]);
        }
        let owned: i64 = invocation
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(backend)?;
        if owned == 0 {
            tracing::warn!(
                "message {}: another consumer holds it now (its visibility lapsed); not touching it",
                delivery.message.id
            );
        }
        Ok(owned == 1)
    }

    /// Acknowledges and deletes an entry.
    pub async fn complete(&self, delivery: &Delivery) -> Result<(), QueueError> {
        self.owned(delivery, "ack", &[]).await.map(|_| ())
    }

    /// Makes an entry claimable by the next receive, without counting a delivery.
    pub async fn abandon(&self, delivery: &Delivery) -> Result<(), QueueError> {
        let count = delivery.message.dequeue_count;
        self.release(delivery, count).await
    }

    /// Like [`Self::abandon`], and takes back the delivery count the fetch
    /// added (the message never reached a handler).
    pub async fn release_uncounted(&self, delivery: &Delivery) -> Result<(), QueueError> {
        let count = delivery.message.dequeue_count.saturating_sub(1);
        self.release(delivery, count).await
    }

    /// Sets the entry's idle time past any visibility timeout and its
    /// delivery count to `count`.
    async fn release(&self, delivery: &Delivery, count: u32) -> Result<(), QueueError> {
        let extra = [
            ABANDONED_IDLE_MS.to_string().into_bytes(),
            count.to_string().into_bytes(),
        ];
        self.owned(delivery, "release", &extra).await.map(|_| ())
    }

    /// Resets an entry's idle time, keeping it from being claimed.
    pub async fn renew(&self, delivery: &Delivery) -> Result<(), QueueError> {
        self.owned(delivery, "renew", &[]).await.map(|_| ())
    }

    /// Copies an entry to `poison_stream` and removes it from this one.
    pub async fn poison(
        &self,
        delivery: &Delivery,
        poison_stream: &str,
        reason: &str,
    ) -> Result<(), QueueError> {
        let message = &delivery.message;
        debug_assert_eq!(
            poison_stream,
            format!("{}{}", self.stream, super::POISON_SUFFIX)
        );
        let mut extra: Vec<Vec<u8>> = Vec::new();
        let mut field = |key: &str, value: &[u8]| {
            extra.push(key.as_bytes().to_vec());
            extra.push(value.to_vec());
        };
        field("body", &message.body);
        field("enqueued_at", message.enqueued_at_ms.to_string().as_bytes());
        field("original_id", message.id.as_bytes());
        field(
            "dequeue_count",
            message.dequeue_count.to_string().as_bytes(),
        );
        field("last_error", reason.as_bytes());
        for (key, value) in &message.attributes {
            field(&format!("attr:{key}"), value.as_bytes());
        }
        self.owned(delivery, "poison", &extra).await.map(|_| ())
    }

    /// Entries in the stream, pending ones, the oldest's age, and the
    /// poison stream's length.
    pub async fn stats(&self, poison_stream: &str) -> Result<QueueStats, QueueError> {
        let mut connection = self.connection.clone();
        let (length, poison, groups, pending): (u64, u64, Value, Value) = redis::pipe()
            .cmd("XLEN")
            .arg(&self.stream)
            .cmd("XLEN")
            .arg(poison_stream)
            .cmd("XINFO")
            .arg("GROUPS")
            .arg(&self.stream)
            .cmd("XPENDING")
            .arg(&self.stream)
            .arg(GROUP)
            .query_async(&mut connection)
            .await
            .map_err(backend)?;
        // The oldest waiting message is the first entry after the group's
        // last delivered id (entries being handled are not a backlog).
        let last_delivered = last_delivered_id(&groups).unwrap_or_else(|| "0-0".to_string());
        let oldest: Value = redis::cmd("XRANGE")
            .arg(&self.stream)
            .arg(format!("({last_delivered}"))
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut connection)
            .await
            .map_err(backend)?;
        let oldest_ms = parse_entries(&oldest).first().and_then(|(id, fields)| {
            field(fields, "enqueued_at")
                .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok())
                .or_else(|| id.split('-').next()?.parse().ok())
        });
        let in_flight = match &pending {
            Value::Array(summary) => summary.first().and_then(as_u64).unwrap_or(0),
            _ => 0,
        };
        Ok(QueueStats {
            length,
            in_flight,
            oldest_age: oldest_ms.map(|at| Duration::from_millis(now_ms().saturating_sub(at))),
            poison,
        })
    }

    /// Up to `max` entries, oldest first.
    pub async fn peek(&self, max: usize) -> Result<Vec<QueueMessage>, QueueError> {
        let range: Value = redis::cmd("XRANGE")
            .arg(&self.stream)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(max)
            .query_async(&mut self.connection.clone())
            .await
            .map_err(backend)?;
        Ok(parse_entries(&range)
            .into_iter()
            .map(|(id, fields)| {
                let count = field(&fields, "dequeue_count")
                    .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
                    .unwrap_or(0);
                message_from_fields(id, fields, count)
            })
            .collect())
    }
}

type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// `[[id, [field, value, …]], …]` → entries; anything else is skipped.
fn parse_entries(value: &Value) -> Vec<(String, Fields)> {
    let Value::Array(entries) = value else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|entry| {
            let Value::Array(pair) = entry else {
                return None;
            };
            let id = as_string(pair.first()?)?;
            let Value::Array(flat) = pair.get(1)? else {
                return None;
            };
            let fields = flat
                .chunks(2)
                .filter_map(|kv| Some((as_bytes(kv.first()?)?, as_bytes(kv.get(1)?)?)))
                .collect();
            Some((id, fields))
        })
        .collect()
}

/// The `last-delivered-id` of group [`GROUP`] in an `XINFO GROUPS` reply
/// (a list of flat key/value arrays, or maps with RESP3).
fn last_delivered_id(groups: &Value) -> Option<String> {
    let Value::Array(groups) = groups else {
        return None;
    };
    groups.iter().find_map(|group| {
        let pairs: Vec<(String, &Value)> = match group {
            Value::Array(flat) => flat
                .chunks(2)
                .filter_map(|kv| Some((as_string(kv.first()?)?, kv.get(1)?)))
                .collect(),
            Value::Map(map) => map
                .iter()
                .filter_map(|(k, v)| Some((as_string(k)?, v)))
                .collect(),
            _ => return None,
        };
        let name = pairs
            .iter()
            .find(|(k, _)| k == "name")
            .and_then(|(_, v)| as_string(v))?;
        if name != GROUP {
            return None;
        }
        pairs
            .iter()
            .find(|(k, _)| k == "last-delivered-id")
            .and_then(|(_, v)| as_string(v))
    })
}

fn field<'a>(fields: &'a Fields, name: &str) -> Option<&'a [u8]> {
    fields
        .iter()
        .find(|(key, _)| key == name.as_bytes())
        .map(|(_, value)| value.as_slice())
}

fn message_from_fields(id: String, fields: Fields, dequeue_count: u32) -> QueueMessage {
    // A poison entry keeps the id the message had in its own queue.
    let id = field(&fields, "original_id")
        .and_then(|v| std::str::from_utf8(v).ok())
        .map_or(id, str::to_string);
    let enqueued_at_ms = field(&fields, "enqueued_at")
        .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
        .unwrap_or(0);
    let body = field(&fields, "body")
        .map(Bytes::copy_from_slice)
        .unwrap_or_default();
    let attributes = fields
        .iter()
        .filter_map(|(key, value)| {
            let key = std::str::from_utf8(key).ok()?.strip_prefix("attr:")?;
            Some((key.to_string(), String::from_utf8_lossy(value).into_owned()))
        })
        .collect();
    QueueMessage {
        id,
        body,
        dequeue_count,
        enqueued_at_ms,
        attributes,
    }
}

fn as_bytes(value: &Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(bytes) => Some(bytes.clone()),
        Value::SimpleString(text) => Some(text.clone().into_bytes()),
        _ => None,
    }
}

fn as_string(value: &Value) -> Option<String> {
    as_bytes(value).and_then(|bytes| String::from_utf8(bytes).ok())
}

fn as_u64(value: &Value) -> Option<u64> {
    match value {
        Value::Int(n) => u64::try_from(*n).ok(),
        other => as_string(other)?.parse().ok(),
    }
}
