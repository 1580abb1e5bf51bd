//! Triggers turn outside events into invocations. They see only a
//! [`Dispatch`](crate::invocation::Dispatch), never wasmtime, so the same
//! trigger code serves an embedded host and one with worker processes.

pub mod http;
pub mod queue;
