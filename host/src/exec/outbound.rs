//! Outbound HTTP from guests: denied unless the request's origin is in
//! `--allow-outbound`, with every timeout capped.
//!
//! wasmtime-wasi-http's default sender accepts any destination and lets a
//! guest ask for 600 s timeouts; these hooks sit in front of it.

use super::state::CurrentInvocation;
use crate::config::Origin;
use http_body_util::BodyExt;
use std::sync::Arc;
use std::time::Duration;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

/// Longest a guest may wait for an outbound connection.
pub const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The [`WasiHttpHooks`] of one invocation.
pub struct OutboundPolicy {
    invocation: CurrentInvocation,
    allowed: Arc<[Origin]>,
    /// First-byte and between-bytes timeouts are capped at the invocation's
    /// own timeout: waiting longer could never produce a response.
    max_wait: Duration,
    /// Requests the guest sent (or tried to) since the call began.
    sent: u32,
}

impl OutboundPolicy {
    /// A policy allowing `allowed` origins; denials are logged with the
    /// current invocation's id.
    pub fn new(invocation: CurrentInvocation, allowed: Arc<[Origin]>, max_wait: Duration) -> Self {
        Self {
            invocation,
            allowed,
            max_wait,
            sent: 0,
        }
    }

    /// Starts counting a new call's requests.
    pub fn begin(&mut self) {
        self.sent = 0;
    }

    /// Requests the guest sent, or tried to, during this call: any of them
    /// may have had an effect elsewhere, so such a call is never run again.
    pub fn sent(&self) -> u32 {
        self.sent
    }

    fn capped(&self, options: Option<RequestOptions>) -> RequestOptions {
        let options = options.unwrap_or_default();
        let cap =
            |asked: Option<Duration>, limit: Duration| Some(asked.unwrap_or(limit).min(limit));
        RequestOptions {
            connect_timeout: cap(options.connect_timeout, MAX_CONNECT_TIMEOUT),
            first_byte_timeout: cap(options.first_byte_timeout, self.max_wait),
            between_bytes_timeout: cap(options.between_bytes_timeout, self.max_wait),
        }
    }
}

type ResponseFuture = Box<dyn Future<Output = Result<(), Error>> + Send>;

impl WasiHttpHooks for OutboundPolicy {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: ResponseFuture,
    ) -> Box<dyn Future<Output = Result<(http::Response<WasiBody>, ResponseFuture), Error>> + Send>
    {
        drop(fut);
        self.sent = self.sent.saturating_add(1);
        let uri = request.uri();
        if !self.allowed.iter().any(|origin| origin.matches(uri)) {
            tracing::warn!(
                "[{}] outbound request to {}://{} denied: not in --allow-outbound",
                self.invocation.get(),
                uri.scheme_str().unwrap_or("?"),
                uri.authority().map(|a| a.as_str()).unwrap_or("?"),
            );
            return Box::new(async { Err(Error::HttpRequestDenied) });
        }
        let options = self.capped(options);
        Box::new(async move {
            let (response, io) =
                wasmtime_wasi_http::default_send_request(request, Some(options)).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as ResponseFuture,
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_timeouts_are_capped() {
        let policy = OutboundPolicy::new(
            CurrentInvocation::default(),
            Arc::from([]),
            Duration::from_secs(30),
        );
        let asked = RequestOptions {
            connect_timeout: Some(Duration::from_secs(600)),
            first_byte_timeout: Some(Duration::from_secs(600)),
            between_bytes_timeout: Some(Duration::from_secs(1)),
        };
        let capped = policy.capped(Some(asked));
        assert_eq!(capped.connect_timeout, Some(MAX_CONNECT_TIMEOUT));
        assert_eq!(capped.first_byte_timeout, Some(Duration::from_secs(30)));
        assert_eq!(capped.between_bytes_timeout, Some(Duration::from_secs(1)));
        assert_eq!(
            policy.capped(None).first_byte_timeout,
            Some(Duration::from_secs(30))
        );
    }
}
