//! `trap`: panics on every request except `GET /ok`, to show that a failing
//! guest gets a 500 with `fnhost-error: trap`, that the panic message reaches
//! the host's log under the invocation id, and that the host keeps serving.
//!
//! `/once` answers only the first call an instance serves and panics on any
//! later one, as componentize-js's fetch handler does: the tests use it to
//! show that fnhost notices a component that cannot be reused.
//!
//! Run it: `fnhost serve examples/target/wasm32-wasip2/release/trap.wasm`, then
//! `curl -i http://127.0.0.1:8080/` (500) and `curl http://127.0.0.1:8080/ok` (200).

use fnhost_sdk::{IntoResponse, Request};
use std::sync::atomic::{AtomicU32, Ordering};

/// Calls this instance has served.
static CALLS: AtomicU32 = AtomicU32::new(0);

fn trap(request: Request) -> impl IntoResponse {
    let calls = CALLS.fetch_add(1, Ordering::Relaxed) + 1;
    match request.uri().path() {
        "/ok" => "still serving\n".to_string(),
        "/once" if calls == 1 => "the first call on this instance\n".to_string(),
        "/once" => panic!("the trap example's /once serves one call per instance"),
        _ => panic!("the trap example panics on purpose"),
    }
}

fnhost_sdk::http_handler!(trap);
