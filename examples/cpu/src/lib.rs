//! `cpu`: deterministic CPU work: `?n=` rounds (default 2,000,000, about
//! 5 ms on the benchmark machine) of a xorshift generator folded into a
//! checksum, answered as `checksum N`. The same `n` always gives the same
//! checksum, so a test can check that the work was really done.
//!
//! Run it: `fnhost serve examples/target/wasm32-wasip2/release/cpu.wasm`, then
//! `curl 'http://127.0.0.1:8080/?n=1000000'`.

use fnhost_sdk::http::StatusCode;
use fnhost_sdk::{IntoResponse, Request, query_param};

const DEFAULT_ROUNDS: u64 = 2_000_000;
/// Most rounds accepted (about 10 s of work).
const MAX_ROUNDS: u64 = 4_000_000_000;

fn cpu(request: Request) -> impl IntoResponse {
    let rounds = match query_param(&request, "n").map(str::parse::<u64>) {
        None => DEFAULT_ROUNDS,
        Some(Ok(n)) if n <= MAX_ROUNDS => n,
        Some(_) => {
            let message = format!("?n= must be a whole number up to {MAX_ROUNDS}\n");
            return (StatusCode::BAD_REQUEST, message).into_response();
        }
    };
    format!("checksum {}\n", checksum(rounds)).into_response()
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

fnhost_sdk::http_handler!(cpu);
