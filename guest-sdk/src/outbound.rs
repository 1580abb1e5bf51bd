//! Outbound HTTP from a guest, blocking until the response has arrived.
//!
//! ```no_run
//! let request = fnhost_sdk::http::Request::get("https://api.example.com/items")
//!     .body(Vec::new())
//!     .unwrap();
//! match fnhost_sdk::outbound::send(request) {
//!     Ok(response) => println!("upstream answered {}", response.status()),
//!     Err(error) => println!("no response: {error}"),
//! }
//! ```

use crate::wire;
use crate::{Request, Response};
use std::fmt;
use wasip2::http::outgoing_handler;
use wasip2::http::types::{ErrorCode, OutgoingRequest};

/// Why an outbound request produced no response.
#[derive(Debug)]
pub enum OutboundError {
    /// The host refused to send it: its origin is not in `--allow-outbound`.
    Denied,
    /// The request could not be expressed in wasi:http (bad URL, header).
    Invalid(String),
    /// Sending or receiving failed (connection refused, timeout, ...).
    Failed(String),
}

impl fmt::Display for OutboundError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Denied => f.write_str("denied by the host (origin not allowed)"),
            Self::Invalid(reason) => write!(f, "invalid request: {reason}"),
            Self::Failed(reason) => write!(f, "request failed: {reason}"),
        }
    }
}

impl std::error::Error for OutboundError {}

/// Sends `request` and waits for the whole response.
pub fn send(request: Request) -> Result<Response, OutboundError> {
    let (parts, body) = request.into_parts();
    let fields = wire::to_fields(&parts.headers).map_err(OutboundError::Invalid)?;
    let outgoing = OutgoingRequest::new(fields);
    let invalid = |what: &str| OutboundError::Invalid(format!("{what} not accepted"));
    outgoing
        .set_method(&wire::to_wasi_method(&parts.method))
        .map_err(|()| invalid("method"))?;
    outgoing
        .set_scheme(Some(&wire::to_wasi_scheme(parts.uri.scheme_str())))
        .map_err(|()| invalid("scheme"))?;
    outgoing
        .set_authority(parts.uri.authority().map(|a| a.as_str()))
        .map_err(|()| invalid("authority"))?;
    outgoing
        .set_path_with_query(parts.uri.path_and_query().map(|p| p.as_str()))
        .map_err(|()| invalid("path"))?;
    let outgoing_body = outgoing.body().expect("a new request has a body");
    let pending = outgoing_handler::handle(outgoing, None).map_err(from_error_code)?;
    wire::write_body(outgoing_body, &body);

    pending.subscribe().block();
    let incoming = match pending.get() {
        Some(Ok(Ok(response))) => response,
        Some(Ok(Err(code))) => return Err(from_error_code(code)),
        Some(Err(())) | None => {
            return Err(OutboundError::Failed("response already taken".into()));
        }
    };
    let mut builder = http::Response::builder().status(incoming.status());
    for (name, value) in incoming.headers().entries() {
        builder = builder.header(name, value);
    }
    let body = match incoming.consume() {
        Ok(body) => wire::read_body(body).map_err(OutboundError::Failed)?,
        Err(()) => Vec::new(),
    };
    builder
        .body(body)
        .map_err(|e| OutboundError::Failed(format!("malformed response: {e}")))
}

fn from_error_code(code: ErrorCode) -> OutboundError {
    match code {
        ErrorCode::HttpRequestDenied => OutboundError::Denied,
        other => OutboundError::Failed(format!("{other:?}")),
    }
}

/// Sends `request` and waits for the whole response, as a future: several
/// fetches joined with [`crate::task::join_all`] run concurrently.
pub async fn fetch(request: Request) -> Result<Response, OutboundError> {
    let response = wstd::http::Client::new()
        .send(request)
        .await
        .map_err(from_wstd_error)?;
    let (parts, mut body) = response.into_parts();
    let bytes = body
        .contents()
        .await
        .map_err(|e| OutboundError::Failed(format!("reading the response body: {e}")))?
        .to_vec();
    Ok(http::Response::from_parts(parts, bytes))
}

fn from_wstd_error(error: wstd::http::Error) -> OutboundError {
    match error.downcast::<ErrorCode>() {
        Ok(code) => from_error_code(code),
        Err(other) => OutboundError::Failed(format!("{other:#}")),
    }
}
