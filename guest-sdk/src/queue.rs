//! Queue handlers: functions the host's queue trigger calls once per
//! delivery of a message (`fnhost serve app.wasm --queue NAME`).
//!
//! ```no_run
//! use fnhost_sdk::queue::Message;
//!
//! fn handle(message: Message) -> Result<(), String> {
//!     let text = message.body_str().ok_or("not UTF-8")?;
//!     println!("{} (delivery {}): {text}", message.id, message.dequeue_count);
//!     Ok(())
//! }
//!
//! fnhost_sdk::queue_handler!(handle);
//! # fn main() {}
//! ```
//!
//! Returning `Ok` acknowledges the message; `Err` (or a panic) fails this
//! delivery, and the host delivers it again until `--max-dequeue-count`
//! attempts, then moves it to `<queue>-poison`. Delivery is at-least-once:
//! make handlers idempotent, keyed by [`Message::id`].

/// One delivery of a queue message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The message's id, stable across deliveries.
    pub id: String,
    /// The payload, as sent.
    pub body: Vec<u8>,
    /// Deliveries so far, this one included (1 on the first).
    pub dequeue_count: u32,
    /// When it was enqueued, in milliseconds since the Unix epoch.
    pub enqueued_at: u64,
    /// Key-value attributes given by the sender.
    pub attributes: Vec<(String, String)>,
}

impl Message {
    /// The body as text, if it is UTF-8.
    pub fn body_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.body).ok()
    }

    /// The value of attribute `key`, if the sender set it.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Anything a queue handler may return: `()` (success) or a `Result` whose
/// error text is logged by the host.
pub trait IntoQueueResult {
    /// Converts into the handler's outcome.
    fn into_queue_result(self) -> Result<(), String>;
}

impl IntoQueueResult for () {
    fn into_queue_result(self) -> Result<(), String> {
        Ok(())
    }
}

impl<E: std::fmt::Display> IntoQueueResult for Result<(), E> {
    fn into_queue_result(self) -> Result<(), String> {
        self.map_err(|error| error.to_string())
    }
}

/// Exports `handler` (a `fn(Message) -> impl IntoQueueResult`) as the
/// component's `fnhost:function/queue-handler`.
///
/// Queue handlers run in the component's lane: the one its HTTP handler's
/// macro chose, or the async lane for a component with no HTTP handler.
#[macro_export]
macro_rules! queue_handler {
    ($handler:path) => {
        $crate::__export_queue_handler!(|message| {
            $crate::queue::IntoQueueResult::into_queue_result($handler(message))
        });
    };
}

/// Exports `handler` (an `async fn(Message) -> impl IntoQueueResult`) as the
/// component's `fnhost:function/queue-handler`; it may await timers and
/// outbound HTTP ([`crate::task`], [`crate::outbound::fetch`]).
///
/// ```no_run
/// use fnhost_sdk::queue::Message;
/// use std::time::Duration;
///
/// async fn handle(message: Message) -> Result<(), String> {
///     fnhost_sdk::task::sleep(Duration::from_millis(10)).await;
///     println!("{} after a pause", message.id);
///     Ok(())
/// }
///
/// fnhost_sdk::async_queue_handler!(handle);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! async_queue_handler {
    ($handler:path) => {
        $crate::__export_queue_handler!(|message| {
            $crate::queue::IntoQueueResult::into_queue_result($crate::__private::block_on(
                $handler(message),
            ))
        });
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __export_queue_handler {
    (|$message:ident| $body:expr) => {
        struct __FnhostQueueHandler;

        impl $crate::__private::queue_bindings::exports::fnhost::function::queue_handler::Guest
            for __FnhostQueueHandler
        {
            fn handle(
                raw: $crate::__private::queue_bindings::exports::fnhost::function::queue_handler::Message,
            ) -> Result<(), String> {
                let $message = $crate::__private::message_from_wit(raw);
                $body
            }
        }

        $crate::__private::queue_bindings::export!(
            __FnhostQueueHandler with_types_in $crate::__private::queue_bindings
        );
    };
}
