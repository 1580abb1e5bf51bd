//! Connection handoff: the supervisor accepts each client connection and
//! hands it to a worker, which then serves it directly, so the supervisor
//! is off the request path. What both sides share is here: the
//! [`table`] of connection states and the [`fdpass`] channel that carries
//! the connections. The supervisor's side is `supervisor/handoff.rs`, the
//! worker's `worker/connections.rs`; docs/architecture.md, "Connection
//! handoff", has the design and its measurements.

pub mod fdpass;
pub mod table;
