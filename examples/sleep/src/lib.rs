//! `sleep`: an `async fn` handler that waits `?ms=` milliseconds (default 50)
//! on a host timer, then answers `slept N ms`. The benchmark's I/O-bound
//! guest: it runs in the async lane, and while it waits it holds no thread.
//!
//! Run it: `fnhost serve examples/target/wasm32-wasip2/release/sleep.wasm`, then
//! `curl 'http://127.0.0.1:8080/?ms=200'`.

use fnhost_sdk::http::StatusCode;
use fnhost_sdk::{IntoResponse, Request, query_param, task};
use std::time::Duration;

/// Longest wait accepted, so a typo cannot park a request for hours.
const MAX_MS: u64 = 60_000;

async fn sleep(request: Request) -> impl IntoResponse {
    let ms = match query_param(&request, "ms").map(str::parse::<u64>) {
        None => 50,
        Some(Ok(ms)) if ms <= MAX_MS => ms,
        Some(_) => {
            let message = format!("?ms= must be a whole number up to {MAX_MS}\n");
            return (StatusCode::BAD_REQUEST, message).into_response();
        }
    };
    task::sleep(Duration::from_millis(ms)).await;
    format!("slept {ms} ms\n").into_response()
}

fnhost_sdk::async_http_handler!(sleep);
