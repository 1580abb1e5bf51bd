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
//! Outbound HTTP goes through [`outbound::send`] (blocking) or
//! [`outbound::fetch`] (async); the host denies it unless the destination's
//! origin was allowed with `--allow-outbound`.
//!
//! ## Sync and async handlers
//!
//! As in Azure Functions' Python worker, a plain `fn` handler runs in the
//! host's **sync lane** (a bounded pool of threads, each call on a warm
//! instance) and an `async fn` handler in its **async lane** (futures on the
//! host's event loop). The macro records the choice in the component (the
//! `fnhost:lane` custom section); `fnhost serve --mode` overrides it.
//!
//! ```no_run
//! use fnhost_sdk::{IntoResponse, Request, task};
//! use std::time::Duration;
//!
//! async fn slow_hello(_request: Request) -> impl IntoResponse {
//!     task::sleep(Duration::from_millis(100)).await;
//!     "hello, a little later\n"
//! }
//!
//! fnhost_sdk::async_http_handler!(slow_hello);
//! # fn main() {}
//! ```
//!
//! Queue handlers (`queue_handler!`, `async_queue_handler!`) are in
//! [`queue`].
//!
//! In the async lane the host interrupts a guest that computes without
//! waiting every few hundred microseconds (fuel-based yield points), so an
//! `async fn` that never awaits slows others down but cannot stall them.

pub mod outbound;
pub mod queue;
pub mod task;
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
/// component's `wasi:http/incoming-handler`, for the host's sync lane.
#[macro_export]
macro_rules! http_handler {
    ($handler:path) => {
        $crate::__lane_marker!(b"sync");
        $crate::__export_handler!(|request, response_out| {
            $crate::__private::serve(request, response_out, $handler)
        });
    };
}

/// Exports `handler` (an `async fn(Request) -> impl IntoResponse`) as the
/// component's `wasi:http/incoming-handler`, for the host's async lane.
#[macro_export]
macro_rules! async_http_handler {
    ($handler:path) => {
        $crate::__lane_marker!(b"async");
        $crate::__export_handler!(|request, response_out| {
            $crate::__private::serve_async(request, response_out, $handler)
        });
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __lane_marker {
    ($lane:literal) => {
        // The lane marker: a custom section the host reads at load time.
        #[cfg(target_arch = "wasm32")]
        #[unsafe(link_section = "fnhost:lane")]
        #[used]
        static __FNHOST_LANE: [u8; $lane.len()] = *$lane;
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __export_handler {
    (|$request:ident, $response_out:ident| $body:expr) => {
        struct __FnhostHttpHandler;

        impl $crate::__private::wasip2::exports::wasi::http::incoming_handler::Guest
            for __FnhostHttpHandler
        {
            fn handle(
                $request: $crate::__private::wasip2::http::types::IncomingRequest,
                $response_out: $crate::__private::wasip2::http::types::ResponseOutparam,
            ) {
                $body
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

    /// Bindings of `fnhost:function/queue-handler` (wit/queue.wit).
    pub mod queue_bindings {
        wit_bindgen::generate!({
            path: "../wit/queue.wit",
            world: "queue-function",
            pub_export_macro: true,
            default_bindings_module: "fnhost_sdk::__private::queue_bindings",
        });
    }

    /// The SDK's message from the generated binding's.
    pub fn message_from_wit(
        raw: queue_bindings::exports::fnhost::function::queue_handler::Message,
    ) -> crate::queue::Message {
        crate::queue::Message {
            id: raw.id,
            body: raw.body,
            dequeue_count: raw.dequeue_count,
            enqueued_at: raw.enqueued_at,
            attributes: raw.attributes,
        }
    }

    /// Runs a future to completion on wstd's executor.
    pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
        wstd::runtime::block_on(future)
    }

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

    /// Reads the request, runs the async handler to completion on wstd's
    /// executor, writes the response.
    pub fn serve_async<R: IntoResponse, F: std::future::Future<Output = R>>(
        incoming: IncomingRequest,
        response_out: ResponseOutparam,
        handler: impl FnOnce(crate::Request) -> F,
    ) {
        serve(incoming, response_out, |request| {
            wstd::runtime::block_on(handler(request))
        });
    }
}

/// Waits `duration` on a host timer (`wasi:clocks/monotonic-clock`),
/// blocking the guest. For sync handlers; async handlers use
/// [`task::sleep`].
///
/// In the async lane the host does not block: it parks the invocation on
/// its event loop until the timer fires. In the sync lane the call holds its
/// thread for the duration, as a blocking call in a thread pool does.
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
