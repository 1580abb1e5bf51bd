//! The HTTP trigger: HTTP/1.1 with hyper on tokio.
//!
//! It checks each request against [`HttpLimits`] before any guest runs
//! (414, 431, 413), hands the rest to the [`Dispatch`], and turns failures
//! into the status codes and `fnhost-error` headers of DESIGN.md. Every
//! response fnhost writes carries `fnhost-invocation-id`; requests so
//! malformed that hyper's parser rejects them itself (more than
//! [`PARSER_MAX_HEADERS`] header fields, a head beyond hyper's ~400 KiB
//! buffer) get hyper's 431/414/400 without one, as no invocation exists yet.

use crate::config::HttpLimits;
use crate::invocation::{
    Body, BodyError, Dispatch, FailureKind, HttpInvocation, InvocationError, InvocationId,
};
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;

/// The header naming the invocation on every response.
pub const INVOCATION_ID_HEADER: &str = "fnhost-invocation-id";
/// The header naming the failure class on failed invocations.
pub const ERROR_HEADER: &str = "fnhost-error";
/// hyper's parser keeps header slots on the stack up to this count (setting
/// any other count moves them to the heap on every request, about 5%
/// slower); a request with more fields is answered 431 by hyper itself.
pub const PARSER_MAX_HEADERS: usize = 100;
/// Seconds a client is told to wait (`Retry-After`) when the host is full.
const RETRY_AFTER_SECONDS: &str = "1";

/// Serves HTTP requests from a listener through a dispatch.
pub struct HttpTrigger {
    dispatch: Arc<dyn Dispatch>,
    limits: Arc<HttpLimits>,
}

impl HttpTrigger {
    /// A trigger sending requests to `dispatch`, enforcing `limits`.
    pub fn new(dispatch: Arc<dyn Dispatch>, limits: HttpLimits) -> Self {
        Self {
            dispatch,
            limits: Arc::new(limits),
        }
    }

    /// Accepts connections until `shutdown` resolves, then stops accepting
    /// and gives open connections up to `grace` to finish their requests.
    /// Returns whether every connection finished within the grace period.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
        grace: Duration,
    ) -> bool {
        let builder = connection_builder(&self.limits);
        let graceful = GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            let stream = tokio::select! {
                stream = accept(&listener) => stream,
                () = &mut shutdown => break,
            };
            let _ = stream.set_nodelay(true);
            let stream = with_write_timeout(stream, &self.limits);
            let dispatch = self.dispatch.clone();
            let limits = self.limits.clone();
            let service = hyper::service::service_fn(move |request| {
                answer(dispatch.clone(), limits.clone(), request)
            });
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            let connection = graceful.watch(connection);
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!("connection ended: {error}");
                }
            });
        }
        drop(listener);
        tracing::info!(
            "draining: no new connections, waiting up to {} s for in-flight requests",
            grace.as_secs()
        );
        tokio::select! {
            () = graceful.shutdown() => true,
            () = tokio::time::sleep(grace) => false,
        }
    }
}

/// The next connection on `listener`. A failed accept (EMFILE and
/// friends) is logged and tried again 50 ms later instead of spinning.
pub async fn accept(listener: &TcpListener) -> tokio::net::TcpStream {
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => return stream,
            Err(error) => {
                tracing::warn!("accept failed: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The hyper settings every client connection is served with.
pub fn connection_builder(limits: &HttpLimits) -> http1::Builder {
    let mut builder = http1::Builder::new();
    // hyper's header-read timeout does nothing without a timer.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    builder
}

/// `stream` with the write timeout: a client that stops reading leaves a
/// write pending, and past the timeout the write fails, the connection
/// ends, and the response body (and whatever produces it) is dropped.
pub fn with_write_timeout<S: tokio::io::AsyncRead + tokio::io::AsyncWrite>(
    stream: S,
    limits: &HttpLimits,
) -> Pin<Box<tokio_io_timeout::TimeoutStream<S>>> {
    let mut stream = tokio_io_timeout::TimeoutStream::new(stream);
    stream.set_write_timeout(Some(limits.write_timeout));
    Box::pin(stream)
}

/// Answers one request: limits, dispatch, failure mapping.
pub async fn answer(
    dispatch: Arc<dyn Dispatch>,
    limits: Arc<HttpLimits>,
    request: Request<Incoming>,
) -> Result<Response<Body>, std::convert::Infallible> {
    let id = InvocationId::next();
    if let Some(rejection) = check_limits(&limits, &request) {
        return Ok(plain_response(id, rejection.0, rejection.1));
    }
    let body_too_large = Arc::new(AtomicBool::new(false));
    let request = request.map(|incoming| {
        LimitedBody {
            inner: incoming,
            limit: limits.max_body,
            seen: 0,
            exceeded: body_too_large.clone(),
        }
        .boxed_unsync()
    });
    let outcome = dispatch.dispatch_http(HttpInvocation { id, request }).await;
    if body_too_large.load(Ordering::Acquire) {
        return Ok(plain_response(
            id,
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body exceeds {} bytes", limits.max_body),
        ));
    }
    Ok(match outcome {
        Ok(mut response) => {
            response
                .headers_mut()
                .insert(INVOCATION_ID_HEADER, header_value(id));
            response
        }
        Err(error) => failure_response(id, &error),
    })
}

/// Checks the request head; returns the status and message to answer with
/// when it is over a limit.
fn check_limits<B>(limits: &HttpLimits, request: &Request<B>) -> Option<(StatusCode, String)> {
    let uri_len = request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len());
    if uri_len > limits.max_uri_len {
        return Some((
            StatusCode::URI_TOO_LONG,
            format!("request target exceeds {} bytes", limits.max_uri_len),
        ));
    }
    let headers = request.headers();
    if headers.len() > limits.max_headers {
        return Some((
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!("more than {} header fields", limits.max_headers),
        ));
    }
    let header_bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if header_bytes > limits.max_header_bytes {
        return Some((
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!("header fields exceed {} bytes", limits.max_header_bytes),
        ));
    }
    let declared_length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared_length.is_some_and(|length| length > limits.max_body) {
        return Some((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body exceeds {} bytes", limits.max_body),
        ));
    }
    if request.uri().authority().is_none() {
        // The guest sees the Host header as the request's authority: it must
        // be a host and port, nothing that could change the path it sees.
        let valid_host = headers
            .get(header::HOST)
            .and_then(|host| host.to_str().ok())
            .and_then(|host| host.parse::<http::uri::Authority>().ok())
            .is_some_and(|authority| !authority.as_str().contains('@'));
        if !valid_host {
            return Some((
                StatusCode::BAD_REQUEST,
                "missing or invalid Host header".to_string(),
            ));
        }
    }
    None
}

/// The response to a failed invocation: the status of its failure class, the
/// `fnhost-error` header, and a short body that never includes the detail
/// (which can hold guest backtraces or host paths). The detail goes to the log.
fn failure_response(id: InvocationId, error: &InvocationError) -> Response<Body> {
    if error.kind == FailureKind::NoRoute {
        // A client's mistake, not the host's: not worth a warning each.
        tracing::debug!("[{id}] {}", error.detail);
    } else if error.kind == FailureKind::Capacity {
        // Refusals come by the thousand under overload, and are the host
        // working as meant: `/metrics` counts them, and the limits that
        // cause them log when they change.
        tracing::debug!("[{id}] refused: {}", error.detail);
    } else {
        tracing::warn!("[{id}] invocation failed: {}: {}", error.kind, error.detail);
    }
    let message = failure_message(error.kind);
    let mut response = plain_response(id, error.kind.status(), message.to_string());
    let headers = response.headers_mut();
    headers.insert(ERROR_HEADER, HeaderValue::from_static(error.kind.as_str()));
    if error.kind == FailureKind::Capacity {
        headers.insert(
            header::RETRY_AFTER,
            HeaderValue::from_static(RETRY_AFTER_SECONDS),
        );
    }
    response
}

/// What the body of a failure response of class `kind` says.
fn failure_message(kind: FailureKind) -> &'static str {
    match kind {
        FailureKind::Trap => "the function failed",
        FailureKind::Timeout => "the function ran out of time",
        FailureKind::Memory => "the function ran out of memory",
        FailureKind::Capacity => "the host is at capacity; retry later",
        FailureKind::WorkerLost => "the worker running the function was lost",
        FailureKind::Rejected => "the function failed",
        FailureKind::NoRoute => "no function serves this path",
    }
}

/// The whole HTTP/1.1 response (head and body, `connection: close`) to a
/// failure of class `kind`, for the supervisor to write on a connection
/// whose worker is gone; it names a new invocation id.
pub fn failure_response_bytes(kind: FailureKind) -> Vec<u8> {
    let id = InvocationId::next();
    let body = format!("{} (invocation {id})\n", failure_message(kind));
    let status = kind.status();
    let mut head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\n{ERROR_HEADER}: {}\r\n{INVOCATION_ID_HEADER}: {id}\r\nconnection: close\r\ncontent-length: {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        kind.as_str(),
        body.len()
    );
    if kind == FailureKind::Capacity {
        head.push_str(&format!("retry-after: {RETRY_AFTER_SECONDS}\r\n"));
    }
    head.push_str("\r\n");
    head.push_str(&body);
    head.into_bytes()
}

/// A short `text/plain` response written by the host itself.
fn plain_response(id: InvocationId, status: StatusCode, message: String) -> Response<Body> {
    let body = format!("{message} (invocation {id})\n");
    let mut response = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(INVOCATION_ID_HEADER, header_value(id));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn header_value(id: InvocationId) -> HeaderValue {
    HeaderValue::try_from(id.to_string()).expect("hex digits are a valid header value")
}

/// A request body that fails once more than `limit` bytes have arrived
/// (chunked bodies carry no length to check up front) and flags it, so the
/// trigger answers 413 whatever the guest made of the error.
struct LimitedBody {
    inner: Incoming,
    limit: u64,
    seen: u64,
    exceeded: Arc<AtomicBool>,
}

impl hyper::body::Body for LimitedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    if this.seen > this.limit {
                        this.exceeded.store(true, Ordering::Release);
                        return Poll::Ready(Some(Err(BodyError::TooLarge { limit: this.limit })));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                Poll::Ready(Some(Err(BodyError::Transport(error.to_string()))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str) -> http::request::Builder {
        Request::builder()
            .uri(uri)
            .header(header::HOST, "localhost")
    }

    #[test]
    fn limits_reject_long_uris_big_headers_and_declared_big_bodies() {
        let limits = HttpLimits {
            max_body: 10,
            max_uri_len: 16,
            max_header_bytes: 64,
            ..HttpLimits::default()
        };
        let ok = request("/short").body(()).unwrap();
        assert!(check_limits(&limits, &ok).is_none());

        let long = request("/aaaaaaaaaaaaaaaaaaaaaa").body(()).unwrap();
        assert_eq!(check_limits(&limits, &long).unwrap().0, 414);

        let fat = request("/")
            .header("x-big", "v".repeat(100))
            .body(())
            .unwrap();
        assert_eq!(check_limits(&limits, &fat).unwrap().0, 431);

        let big = request("/")
            .header(header::CONTENT_LENGTH, "11")
            .body(())
            .unwrap();
        assert_eq!(check_limits(&limits, &big).unwrap().0, 413);

        let hostless = Request::builder().uri("/").body(()).unwrap();
        assert_eq!(check_limits(&limits, &hostless).unwrap().0, 400);
        for bad in ["example.com/admin", "a#b", "a?b", "user@host", "bad host"] {
            let steering = Request::builder()
                .uri("/x")
                .header(header::HOST, bad)
                .body(())
                .unwrap();
            assert_eq!(check_limits(&limits, &steering).unwrap().0, 400, "{bad}");
        }
        let with_port = request("/x").header(header::HOST, "localhost:8080");
        assert!(check_limits(&limits, &with_port.body(()).unwrap()).is_none());
    }

    #[test]
    fn failures_carry_status_error_header_and_no_detail() {
        let id = InvocationId::next();
        let error = InvocationError::new(FailureKind::Capacity, "/secret/path backtrace");
        let response = failure_response(id, &error);
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()[ERROR_HEADER], "capacity");
        assert_eq!(response.headers()[header::RETRY_AFTER], RETRY_AFTER_SECONDS);
        assert_eq!(
            response.headers()[INVOCATION_ID_HEADER],
            id.to_string().as_str()
        );
    }

    #[test]
    fn a_failure_written_by_hand_parses_as_one_response() {
        let bytes = failure_response_bytes(FailureKind::WorkerLost);
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut response = httparse::Response::new(&mut headers);
        let httparse::Status::Complete(head) = response.parse(&bytes).unwrap() else {
            panic!("incomplete: {}", String::from_utf8_lossy(&bytes));
        };
        assert_eq!(response.code, Some(502));
        let header = |name: &str| {
            response
                .headers
                .iter()
                .find(|h| h.name == name)
                .map(|h| std::str::from_utf8(h.value).unwrap().to_string())
        };
        assert_eq!(header(ERROR_HEADER).as_deref(), Some("worker-lost"));
        assert_eq!(header("connection").as_deref(), Some("close"));
        let length: usize = header("content-length").unwrap().parse().unwrap();
        assert_eq!(bytes.len() - head, length);
    }
}
