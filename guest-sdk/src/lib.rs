//! # fnhost-sdk
//!
//! Write an fnhost function in Rust as a plain function from a request to a
//! response, and export it with one macro:
//!
//! ```no_run
//! use fnhost_sdk::{Request, Response, IntoResponse};
//!
//! fn hello(request: Request) -> impl IntoResponse {
//!     format!("hello from {}\n", request.uri().path())
//! }
//!
//! fnhost_sdk::http_handler!(hello);
//! # fn main() {}
//! ```
//!
//! Build it with nothing but cargo, as a `cdylib`:
//!
//! ```text
//! cargo build --target wasm32-wasip2 --release
//! fnhost serve target/wasm32-wasip2/release/my_function.wasm
//! ```
//!
//! [`Request`] and [`Response`] are the [`http`] crate's types with the body
//! as bytes, so `request.method()`, `request.uri().query()`,
//! `request.headers()` and `Response::builder().status(404)` work as usual.
//! The component exports `wasi:http/incoming-handler@0.2.x`, so it also runs
//! on `wasmtime serve` and other WASI 0.2 HTTP hosts.
//!
//! Outbound HTTP goes through [`outbound::send`]; the host denies it unless
//! the destination's origin was allowed with `--allow-outbound`.

pub mod outbound;
mod wire;

pub use http;

/// An incoming request, its body fully read.
pub type Request = http::Request<Vec<u8>>;
/// A response, its body in memory.
pub type Response = http::Response<Vec<u8>>;

/// Anything a handler may return.
///
/// Strings and byte vectors become a 200 response; `(StatusCode, body)`
/// sets the status; `Result<T, E>` answers 500 with the error's text on `Err`.
pub trait IntoResponse {
    /// Converts into a response.
    fn into_response(self) -> Response;
}

impl IntoResponse for Response {
    fn into_response(self) -> Response {
        self
    }
}

impl IntoResponse for String {
    fn into_response(self) -> Response {
        text_response(http::StatusCode::OK, self)
    }
}

impl IntoResponse for &'static str {
    fn into_response(self) -> Response {
        text_response(http::StatusCode::OK, self.to_string())
    }
}

impl IntoResponse for Vec<u8> {
    fn into_response(self) -> Response {
        http::Response::new(self)
    }
}

impl<B: Into<Vec<u8>>> IntoResponse for (http::StatusCode, B) {
    fn into_response(self) -> Response {
        let mut response = http::Response::new(self.1.into());
        *response.status_mut() = self.0;
        response
    }
}

impl<T: IntoResponse, E: std::fmt::Display> IntoResponse for Result<T, E> {
    fn into_response(self) -> Response {
        match self {
            Ok(value) => value.into_response(),
            Err(error) => text_response(
                http::StatusCode::INTERNAL_SERVER_ERROR,
                format!("{error}\n"),
            ),
        }
    }
}

fn text_response(status: http::StatusCode, text: String) -> Response {
    let mut response = http::Response::new(text.into_bytes());
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Exports `handler` (a `fn(Request) -> impl IntoResponse`) as the
/// component's `wasi:http/incoming-handler`.
#[macro_export]
macro_rules! http_handler {
    ($handler:path) => {
        struct __FnhostHttpHandler;

        impl $crate::__private::wasip2::exports::wasi::http::incoming_handler::Guest
            for __FnhostHttpHandler
        {
            fn handle(
                request: $crate::__private::wasip2::http::types::IncomingRequest,
                response_out: $crate::__private::wasip2::http::types::ResponseOutparam,
            ) {
                $crate::__private::serve(request, response_out, $handler);
            }
        }

        $crate::__private::wasip2::http::proxy::export!(
            __FnhostHttpHandler with_types_in $crate::__private::wasip2
        );
    };
}

#[doc(hidden)]
pub mod __private {
    pub use wasip2;

    use crate::IntoResponse;
    use wasip2::http::types::{ErrorCode, IncomingRequest, ResponseOutparam};

    /// Reads the request, runs the handler, writes the response.
    pub fn serve<R: IntoResponse>(
        incoming: IncomingRequest,
        response_out: ResponseOutparam,
        handler: impl FnOnce(crate::Request) -> R,
    ) {
        let request = match crate::wire::read_incoming_request(incoming) {
            Ok(request) => request,
            Err(reason) => {
                ResponseOutparam::set(response_out, Err(ErrorCode::InternalError(Some(reason))));
                return;
            }
        };
        let response = handler(request).into_response();
        crate::wire::write_response(response_out, response);
    }
}

/// Waits `duration` on a host timer (`wasi:clocks/monotonic-clock`).
///
/// The guest blocks, but the host does not: fnhost parks the invocation on
/// its event loop until the timer fires, so thousands of sleeping guests
/// cost no threads.
pub fn sleep(duration: std::time::Duration) {
    let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
    wasip2::clocks::monotonic_clock::subscribe_duration(nanos).block();
}

/// Nanoseconds on the host's monotonic clock, for measuring elapsed time.
pub fn monotonic_now() -> u64 {
    wasip2::clocks::monotonic_clock::now()
}

/// The value of `name` in the request's query string, if present
/// (`?ms=50&x=1` → `query_param(&request, "ms") == Some("50")`).
/// Values are returned as written, without percent-decoding.
pub fn query_param<'a>(request: &'a Request, name: &str) -> Option<&'a str> {
    request.uri().query()?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then_some(value)
    })
}
