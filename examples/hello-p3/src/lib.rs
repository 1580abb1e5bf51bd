//! `hello-p3`: a WASIp3 component (`wasi:http/handler@0.3.0`, component-model
//! async), written against the `wasip3` bindings rather than fnhost-sdk, the
//! way other toolchains emit them. It answers `hello from WASIp3 at PATH`,
//! streaming the body from a spawned task.
//!
//! Run it: `fnhost serve examples/target/wasm32-wasip2/release/hello_p3.wasm`,
//! then `curl http://127.0.0.1:8080/there`.

use wasip3::http::types::{ErrorCode, Fields, Request, Response};
use wasip3::{wit_bindgen, wit_future, wit_stream};

wasip3::http::service::export!(HelloP3);

struct HelloP3;

impl wasip3::exports::http::handler::Guest for HelloP3 {
    async fn handle(request: Request) -> Result<Response, ErrorCode> {
        let path = request
            .get_path_with_query()
            .unwrap_or_else(|| "/".to_string());
        let (mut body_tx, body_rx) = wit_stream::new();
        let (trailers_tx, trailers_rx) = wit_future::new(|| Ok(None));
        let (response, _sent) = Response::new(Fields::new(), Some(body_rx), trailers_rx);
        drop(trailers_tx);
        wit_bindgen::spawn_local(async move {
            let text = format!("hello from WASIp3 at {path}\n");
            let unwritten = body_tx.write_all(text.into_bytes()).await;
            debug_assert!(unwritten.is_empty());
        });
        Ok(response)
    }
}
