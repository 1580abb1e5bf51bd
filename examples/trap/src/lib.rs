//! `trap`: panics on every request except `GET /ok`, to show that a failing
//! guest gets a 500 with `fnhost-error: trap`, that the panic message reaches
//! the host's log under the invocation id, and that the host keeps serving.
//!
//! Run it: `fnhost serve examples/target/wasm32-wasip2/release/trap.wasm`, then
//! `curl -i http://127.0.0.1:8080/` (500) and `curl http://127.0.0.1:8080/ok` (200).

use fnhost_sdk::{IntoResponse, Request};

fn trap(request: Request) -> impl IntoResponse {
    if request.uri().path() != "/ok" {
        panic!("the trap example panics on purpose");
    }
    "still serving\n"
}

fnhost_sdk::http_handler!(trap);
