//! `mixed`: half work, half waiting. Each call does `?n=` rounds of CPU
//! work (default 2,000,000, about 5 ms, as the `cpu` example) and then
//! waits `?ms=` milliseconds (default 5) on a host timer: the shape of a
//! function that computes and calls a service, for `fnhost top`'s classes.
//!
//! Run it: `fnhost serve examples/target/wasm32-wasip2/release/mixed.wasm`,
//! then `curl 'http://127.0.0.1:8080/?n=2000000&ms=5'`.

use fnhost_sdk::http::StatusCode;
use fnhost_sdk::{IntoResponse, Request, query_param, task};
use std::time::Duration;

/// Most rounds and milliseconds accepted.
const MAX_ROUNDS: u64 = 4_000_000_000;
const MAX_MS: u64 = 60_000;

async fn mixed(request: Request) -> impl IntoResponse {
    let number = |name: &str, default: u64, max: u64| match query_param(&request, name) {
        None => Ok(default),
        Some(text) => text
            .parse::<u64>()
            .ok()
            .filter(|&n| n <= max)
            .ok_or(name.to_string()),
    };
    let (rounds, ms) = match (number("n", 2_000_000, MAX_ROUNDS), number("ms", 5, MAX_MS)) {
        (Ok(rounds), Ok(ms)) => (rounds, ms),
        (Err(name), _) | (_, Err(name)) => {
            let message = format!("?{name}= must be a whole number\n");
            return (StatusCode::BAD_REQUEST, message).into_response();
        }
    };
    let sum = checksum(rounds);
    task::sleep(Duration::from_millis(ms)).await;
    format!("checksum {sum}, then slept {ms} ms\n").into_response()
}

/// xorshift64 for `rounds` steps, summing the states.
fn checksum(rounds: u64) -> u64 {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut sum: u64 = 0;
    for _ in 0..rounds {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        sum = sum.wrapping_add(state);
    }
    sum
}

fnhost_sdk::async_http_handler!(mixed);
