//! `alloc`: allocates and touches `?mb=` MiB (default 1), then answers
//! `touched N MiB`. Past the host's `--max-memory` the allocation fails and
//! the guest aborts: the host answers 500 with `fnhost-error: memory`.
//!
//! Run it: `fnhost serve --max-memory 64MiB examples/target/wasm32-wasip2/release/alloc.wasm`,
//! then `curl 'http://127.0.0.1:8080/?mb=16'` (200) and `curl -i 'http://127.0.0.1:8080/?mb=512'` (500).

use fnhost_sdk::http::StatusCode;
use fnhost_sdk::{IntoResponse, Request, query_param};

fn alloc(request: Request) -> impl IntoResponse {
    let mb = match query_param(&request, "mb").map(str::parse::<usize>) {
        None => 1,
        Some(Ok(mb)) if mb <= 4096 => mb,
        Some(_) => {
            return (
                StatusCode::BAD_REQUEST,
                "?mb= must be a whole number up to 4096\n",
            )
                .into_response();
        }
    };
    let mut block = vec![0u8; mb << 20];
    // Touch every page so the memory is really used.
    for page in block.chunks_mut(4096) {
        page[0] = 1;
    }
    let touched: usize = block.iter().step_by(4096).map(|&b| b as usize).sum();
    format!("touched {} MiB\n", (touched * 4096) >> 20).into_response()
}

fnhost_sdk::http_handler!(alloc);
