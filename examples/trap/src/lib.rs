//! `trap`: panics on every request except `GET /ok`, to show that a failing
//! guest gets a 500 with `fnhost-error: trap`, that the panic message reaches
//! the host's log under the invocation id, and that the host keeps serving.
//!
//! `/once` answers only the first call an instance serves and panics on any
//! later one, as componentize-js's fetch handler does: the tests use it to
//! show that fnhost notices a component that cannot be reused.
//!
//! `/flood?bytes=N` writes N bytes of terminal escape sequences to stdout,
//! as a hostile guest would, to show that guest output is capped and
//! escaped before it reaches the host's log.
//!
//! `/big?bytes=N` answers with an N-byte body, for the tests of clients
//! that stop reading.
//!
//! Run it: `fnhost serve examples/target/wasm32-wasip2/release/trap.wasm`, then
//! `curl -i http://127.0.0.1:8080/` (500) and `curl http://127.0.0.1:8080/ok` (200).

use fnhost_sdk::{IntoResponse, Request, query_param};
use std::io::Write;
use std::sync::atomic::{AtomicU32, Ordering};

/// Calls this instance has served.
static CALLS: AtomicU32 = AtomicU32::new(0);

fn trap(request: Request) -> impl IntoResponse {
    let calls = CALLS.fetch_add(1, Ordering::Relaxed) + 1;
    match request.uri().path() {
        "/ok" => "still serving\n".to_string(),
        "/once" if calls == 1 => "the first call on this instance\n".to_string(),
        "/once" => panic!("the trap example's /once serves one call per instance"),
        "/big" => {
            let bytes: usize = query_param(&request, "bytes")
                .and_then(|n| n.parse().ok())
                .unwrap_or(1 << 20);
            "x".repeat(bytes)
        }
        "/flood" => {
            let bytes: usize = query_param(&request, "bytes")
                .and_then(|n| n.parse().ok())
                .unwrap_or(1 << 20);
            let line = b"\x1b[2J\x1b[31mred text that clears the screen\x1b[0m\r\n";
            let mut stdout = std::io::stdout().lock();
            let mut written = 0;
            while written < bytes {
                let _ = stdout.write_all(line);
                written += line.len();
            }
            format!("flooded {written} bytes\n")
        }
        _ => panic!("the trap example panics on purpose"),
    }
}

fnhost_sdk::http_handler!(trap);
