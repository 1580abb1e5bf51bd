//! The native baseline of the benchmark: what the example guests do, written
//! as a plain hyper + tokio server, so the benchmark can say how far a
//! sandboxed guest is from native code doing the same work.
//!
//! `fnhost-bench-native ADDR` serves, by the first path segment:
//! `/` and `/hello` → `hello from fnhost`; `/sleep?ms=` → tokio timer;
//! `/cpu?n=` → the cpu example's checksum; `/hog?ms=` → a busy loop that
//! holds its tokio worker (as an `async fn` that never awaits would).
//! It prints `listening on http://ADDR` once bound.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_string());
    let listener = TcpListener::bind(&addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(route);
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn route(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let number = |name: &str, default: u64| {
        request
            .uri()
            .query()
            .and_then(|q| {
                q.split('&')
                    .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
            })
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let body = match request.uri().path() {
        "/sleep" => {
            let ms = number("ms", 50);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            format!("slept {ms} ms\n")
        }
        "/cpu" => format!("checksum {}\n", checksum(number("n", 2_000_000))),
        "/hog" => {
            let ms = number("ms", 0);
            let deadline = Instant::now() + Duration::from_millis(ms);
            while Instant::now() < deadline {
                std::hint::spin_loop();
            }
            format!("spun {ms} ms\n")
        }
        _ => "hello from fnhost\n".to_string(),
    };
    Ok(Response::new(Full::new(Bytes::from(body))))
}

/// The cpu example's work, byte for byte the same loop.
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
