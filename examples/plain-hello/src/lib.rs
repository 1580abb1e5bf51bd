//! `plain-hello`: a wasi:http hello written against the `wasip2` bindings
//! alone, as a guest for `wasmtime serve` is written: no fnhost SDK and so
//! no lane marker. The benchmark serves it with every default, to measure
//! what a component nobody tuned for fnhost gets.
//!
//! Run it: `fnhost serve examples/target/wasm32-wasip2/release/plain_hello.wasm`.

use std::io::Write as _;
use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

wasip2::http::proxy::export!(PlainHello);

struct PlainHello;

impl wasip2::exports::http::incoming_handler::Guest for PlainHello {
    fn handle(_request: IncomingRequest, response_out: ResponseOutparam) {
        let response = OutgoingResponse::new(Fields::new());
        let body = response.body().expect("a new response has a body");
        ResponseOutparam::set(response_out, Ok(response));
        let mut out = body.write().expect("the body's stream");
        let _ = out.write_all(b"hello from a plain wasi:http guest\n");
        let _ = out.flush();
        drop(out);
        let _ = OutgoingBody::finish(body, None);
    }
}
