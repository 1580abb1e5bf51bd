//! `echo`: answers JSON describing the request (method, path, query, headers,
//! and the body's length and SHA-256), to check what reaches a guest.
//!
//! Run it: `fnhost serve examples/target/wasm32-wasip2/release/echo.wasm`, then
//! `curl -d hello 'http://127.0.0.1:8080/some/path?x=1'`.

use fnhost_sdk::http::{HeaderValue, Response, header};
use fnhost_sdk::{IntoResponse, Request};
use sha2::{Digest, Sha256};

fn echo(request: Request) -> impl IntoResponse {
    let headers: serde_json::Map<String, serde_json::Value> = request
        .headers()
        .iter()
        .map(|(name, value)| {
            let text = String::from_utf8_lossy(value.as_bytes()).into_owned();
            (name.as_str().to_string(), serde_json::Value::String(text))
        })
        .collect();
    let digest: String = Sha256::digest(request.body())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let json = serde_json::json!({
        "method": request.method().as_str(),
        "path": request.uri().path(),
        "query": request.uri().query().unwrap_or(""),
        "headers": headers,
        "body_length": request.body().len(),
        "body_sha256": digest,
    });
    let mut response = Response::new(json.to_string().into_bytes());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fnhost_sdk::http_handler!(echo);
