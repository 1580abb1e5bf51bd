//! Moving requests and responses between `http` types and wasi:http resources.

use crate::{Request, Response};
use wasip2::http::types::{
    Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingResponse,
    ResponseOutparam, Scheme,
};
use wasip2::io::streams::{InputStream, OutputStream, StreamError};

/// Bytes asked for per read of an incoming body.
const READ_CHUNK: u64 = 64 * 1024;

pub(crate) fn read_incoming_request(incoming: IncomingRequest) -> Result<Request, String> {
    let path = incoming
        .path_with_query()
        .unwrap_or_else(|| "/".to_string());
    let uri = match (incoming.scheme(), incoming.authority()) {
        (Some(scheme), Some(authority)) => format!("{}://{authority}{path}", scheme_str(&scheme)),
        _ => path,
    };
    let mut builder = http::Request::builder()
        .method(from_wasi_method(&incoming.method())?)
        .uri(uri);
    for (name, value) in incoming.headers().entries() {
        builder = builder.header(name, value);
    }
    let body = match incoming.consume() {
        Ok(body) => read_body(body)?,
        Err(()) => Vec::new(),
    };
    builder
        .body(body)
        .map_err(|e| format!("malformed request: {e}"))
}

pub(crate) fn read_body(body: IncomingBody) -> Result<Vec<u8>, String> {
    let stream = body
        .stream()
        .map_err(|()| "request body already taken".to_string())?;
    let bytes = read_stream(&stream)?;
    drop(stream);
    drop(IncomingBody::finish(body));
    Ok(bytes)
}

fn read_stream(stream: &InputStream) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    loop {
        match stream.blocking_read(READ_CHUNK) {
            Ok(chunk) => bytes.extend_from_slice(&chunk),
            Err(StreamError::Closed) => return Ok(bytes),
            Err(StreamError::LastOperationFailed(error)) => {
                return Err(format!(
                    "reading the body failed: {}",
                    error.to_debug_string()
                ));
            }
        }
    }
}

pub(crate) fn write_response(response_out: ResponseOutparam, response: Response) {
    let (parts, body) = response.into_parts();
    let fields = match to_fields(&parts.headers) {
        Ok(fields) => fields,
        Err(reason) => {
            ResponseOutparam::set(
                response_out,
                Err(wasip2::http::types::ErrorCode::InternalError(Some(reason))),
            );
            return;
        }
    };
    let outgoing = OutgoingResponse::new(fields);
    let _ = outgoing.set_status_code(parts.status.as_u16());
    let outgoing_body = outgoing.body().expect("a new response has a body");
    ResponseOutparam::set(response_out, Ok(outgoing));
    write_body(outgoing_body, &body);
}

pub(crate) fn write_body(outgoing_body: OutgoingBody, bytes: &[u8]) {
    let stream = outgoing_body.write().expect("a new body has a stream");
    // If the client went away, there is no one left to tell.
    let _ = write_all(&stream, bytes);
    drop(stream);
    let _ = OutgoingBody::finish(outgoing_body, None);
}

fn write_all(stream: &OutputStream, mut bytes: &[u8]) -> Result<(), StreamError> {
    let pollable = stream.subscribe();
    while !bytes.is_empty() {
        pollable.block();
        let permitted = stream.check_write()? as usize;
        if permitted == 0 {
            continue;
        }
        let (now, later) = bytes.split_at(permitted.min(bytes.len()));
        stream.write(now)?;
        bytes = later;
    }
    stream.flush()?;
    pollable.block();
    stream.check_write().map(|_| ())
}

pub(crate) fn to_fields(headers: &http::HeaderMap) -> Result<Fields, String> {
    let entries: Vec<(String, Vec<u8>)> = headers
        .iter()
        .map(|(name, value)| (name.as_str().to_string(), value.as_bytes().to_vec()))
        .collect();
    Fields::from_list(&entries).map_err(|e| format!("header not allowed: {e:?}"))
}

pub(crate) fn from_wasi_method(method: &Method) -> Result<http::Method, String> {
    Ok(match method {
        Method::Get => http::Method::GET,
        Method::Head => http::Method::HEAD,
        Method::Post => http::Method::POST,
        Method::Put => http::Method::PUT,
        Method::Delete => http::Method::DELETE,
        Method::Connect => http::Method::CONNECT,
        Method::Options => http::Method::OPTIONS,
        Method::Trace => http::Method::TRACE,
        Method::Patch => http::Method::PATCH,
        Method::Other(name) => http::Method::from_bytes(name.as_bytes())
            .map_err(|_| format!("invalid method `{name}`"))?,
    })
}

pub(crate) fn to_wasi_method(method: &http::Method) -> Method {
    match *method {
        http::Method::GET => Method::Get,
        http::Method::HEAD => Method::Head,
        http::Method::POST => Method::Post,
        http::Method::PUT => Method::Put,
        http::Method::DELETE => Method::Delete,
        http::Method::CONNECT => Method::Connect,
        http::Method::OPTIONS => Method::Options,
        http::Method::TRACE => Method::Trace,
        http::Method::PATCH => Method::Patch,
        ref other => Method::Other(other.as_str().to_string()),
    }
}

fn scheme_str(scheme: &Scheme) -> &str {
    match scheme {
        Scheme::Http => "http",
        Scheme::Https => "https",
        Scheme::Other(other) => other,
    }
}

pub(crate) fn to_wasi_scheme(scheme: Option<&str>) -> Scheme {
    match scheme {
        Some("http") => Scheme::Http,
        Some("https") | None => Scheme::Https,
        Some(other) => Scheme::Other(other.to_string()),
    }
}
