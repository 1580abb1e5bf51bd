//! `hello`: the smallest fnhost function; answers `hello from fnhost` to any request.
//!
//! Run it: `cargo build --manifest-path examples/Cargo.toml --target wasm32-wasip2 --release`
//! then `fnhost serve examples/target/wasm32-wasip2/release/hello.wasm` and
//! `curl http://127.0.0.1:8080/`.

use fnhost_sdk::{IntoResponse, Request};

fn hello(_request: Request) -> impl IntoResponse {
    "hello from fnhost\n"
}

fnhost_sdk::http_handler!(hello);
