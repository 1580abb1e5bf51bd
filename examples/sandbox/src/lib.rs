//! `sandbox`: reports what the guest can see of the host, as JSON: its
//! environment variables, the entries of `?dir=` (default `/`), what stdin
//! holds, and whether a TCP connection to `?connect=HOST:PORT` succeeds.
//! With no grants the answer is: nothing, nothing, empty, refused.
//!
//! Run it: `fnhost serve --env GREETING=hi --dir /tmp::/data examples/target/wasm32-wasip2/release/sandbox.wasm`,
//! then `curl 'http://127.0.0.1:8080/?dir=/data'`.

use fnhost_sdk::{IntoResponse, Request, query_param};
use std::io::Read;

fn sandbox(request: Request) -> impl IntoResponse {
    let env: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
    let dir = query_param(&request, "dir").unwrap_or("/");
    let listing = match std::fs::read_dir(dir) {
        Ok(entries) => serde_json::json!({
            "entries": entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
        }),
        Err(error) => serde_json::json!({ "error": error.to_string() }),
    };
    let mut stdin = Vec::new();
    let stdin_result = std::io::stdin().read_to_end(&mut stdin);
    let connect =
        query_param(&request, "connect").map(|addr| match std::net::TcpStream::connect(addr) {
            Ok(_) => "connected".to_string(),
            Err(error) => format!("refused: {error}"),
        });
    serde_json::json!({
        "env": env,
        "dir": dir,
        "listing": listing,
        "stdin_bytes": stdin.len(),
        "stdin_error": stdin_result.err().map(|e| e.to_string()),
        "connect": connect,
    })
    .to_string()
}

fnhost_sdk::http_handler!(sandbox);
