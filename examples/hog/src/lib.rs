//! `hog`: the seed's "async function that never awaits": an `async fn`
//! handler that spins for `?ms=` milliseconds (default 0) without waiting on
//! anything (it reads the clock, which returns at once), then answers
//! `spun N ms`. In the async lane the host's fuel yield points keep it from
//! stalling other requests. With `ms=0` it answers at once, so one component
//! serves both the hogs and the light requests of the fairness benchmark.
//!
//! Run it: `fnhost serve examples/target/wasm32-wasip2/release/hog.wasm`, then
//! `curl 'http://127.0.0.1:8080/?ms=3000'` and, meanwhile, `curl http://127.0.0.1:8080/`.

use fnhost_sdk::http::StatusCode;
use fnhost_sdk::{IntoResponse, Request, monotonic_now, query_param};

/// Longest spin accepted.
const MAX_MS: u64 = 60_000;

async fn hog(request: Request) -> impl IntoResponse {
    let ms = match query_param(&request, "ms").map(str::parse::<u64>) {
        None => 0,
        Some(Ok(ms)) if ms <= MAX_MS => ms,
        Some(_) => {
            let message = format!("?ms= must be a whole number up to {MAX_MS}\n");
            return (StatusCode::BAD_REQUEST, message).into_response();
        }
    };
    let deadline = monotonic_now() + ms * 1_000_000;
    let mut spins: u64 = 0;
    while monotonic_now() < deadline {
        spins = spins.wrapping_add(1);
    }
    std::hint::black_box(spins);
    format!("spun {ms} ms\n").into_response()
}

fnhost_sdk::async_http_handler!(hog);
