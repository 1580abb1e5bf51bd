//! `queue-worker`: a queue handler. It prints one line per message
//! (`handled <id> <body>`, the line the tests count), and shows the failure
//! paths on purpose:
//!
//! - a body starting with `fail` returns an error every time, so the host
//!   retries it and after `--max-dequeue-count` attempts moves it to the
//!   poison queue;
//! - a body `sleep:N` (or `sleep:N:anything`) waits N milliseconds on a
//!   host timer first (a slow message, for the scaling test and for
//!   visibility renewal);
//! - a body `panic` traps.
//!
//! Run it:
//!
//! ```text
//! fnhost serve examples/target/wasm32-wasip2/release/queue_worker.wasm --queue jobs
//! fnhost queue send jobs 'hello'
//! ```

use fnhost_sdk::queue::Message;
use std::time::Duration;

fn handle(message: Message) -> Result<(), String> {
    let body = message.body_str().ok_or("the body is not UTF-8")?;
    if body.starts_with("fail") {
        return Err(format!("refusing {body:?} on purpose"));
    }
    if body == "panic" {
        panic!("panicking on purpose");
    }
    if let Some(rest) = body.strip_prefix("sleep:") {
        let ms = rest.split(':').next().unwrap_or_default();
        let ms: u64 = ms.parse().map_err(|_| format!("bad sleep {ms:?}"))?;
        fnhost_sdk::sleep(Duration::from_millis(ms));
    }
    println!("handled {} {body}", message.id);
    Ok(())
}

fnhost_sdk::queue_handler!(handle);
