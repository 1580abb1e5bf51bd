//! `fanout`: the seed's example of I/O concurrency: an `async fn` handler
//! that sends 10 GETs at once to the upstream URL in the `FANOUT_URL`
//! environment variable (or `?url=`) and answers the JSON list of their
//! status codes (0 for a request that got no response). The ten requests
//! overlap, so the answer takes about one upstream latency, not ten.
//!
//! Run it: `fnhost serve --env FANOUT_URL=http://127.0.0.1:9000/ --allow-outbound http://127.0.0.1:9000 examples/target/wasm32-wasip2/release/fanout.wasm`,
//! then `curl http://127.0.0.1:8080/`.

use fnhost_sdk::http::{self, StatusCode};
use fnhost_sdk::{IntoResponse, Request, outbound, query_param, task};

/// How many requests go out at once.
const FANOUT: usize = 10;

async fn fanout(request: Request) -> impl IntoResponse {
    let url = match query_param(&request, "url")
        .map(str::to_string)
        .or_else(|| std::env::var("FANOUT_URL").ok())
    {
        Some(url) => url,
        None => {
            let message = "set FANOUT_URL (fnhost serve --env FANOUT_URL=...) or pass ?url=\n";
            return (StatusCode::BAD_REQUEST, message).into_response();
        }
    };
    let requests = (0..FANOUT).map(|_| {
        let url = url.clone();
        async move {
            let upstream = http::Request::get(url.as_str()).body(Vec::new()).ok()?;
            outbound::fetch(upstream)
                .await
                .ok()
                .map(|r| r.status().as_u16())
        }
    });
    let statuses: Vec<u16> = task::join_all(requests)
        .await
        .into_iter()
        .map(|status| status.unwrap_or(0))
        .collect();
    serde_json::to_string(&statuses)
        .expect("a list of numbers serializes")
        .into_response()
}

fnhost_sdk::async_http_handler!(fanout);
