//! `fetch`: sends a GET to the URL in `?url=` and answers with the upstream's
//! status and body, or 502 with the reason when there is no response (for
//! example because the host denied the origin).
//!
//! Run it: `fnhost serve --allow-outbound http://127.0.0.1:9000 examples/target/wasm32-wasip2/release/fetch.wasm`,
//! then `curl 'http://127.0.0.1:8080/?url=http://127.0.0.1:9000/'`.

use fnhost_sdk::http::{self, StatusCode};
use fnhost_sdk::{IntoResponse, Request, outbound, query_param};

fn fetch(request: Request) -> impl IntoResponse {
    let Some(url) = query_param(&request, "url") else {
        return (StatusCode::BAD_REQUEST, "missing ?url=\n").into_response();
    };
    let upstream = match http::Request::get(url).body(Vec::new()) {
        Ok(upstream) => upstream,
        Err(error) => {
            return (StatusCode::BAD_REQUEST, format!("bad url: {error}\n")).into_response();
        }
    };
    match outbound::send(upstream) {
        Ok(response) => (response.status(), response.into_body()).into_response(),
        Err(error) => (StatusCode::BAD_GATEWAY, format!("upstream: {error}\n")).into_response(),
    }
}

fnhost_sdk::http_handler!(fetch);
