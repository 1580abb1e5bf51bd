//! Async building blocks for `async fn` handlers: timers and joins. Every
//! wait is a `wasi:io` pollable the host resolves on its event loop.

pub use futures::future::{join, join_all, select};
pub use futures::join;

/// Waits `duration` without blocking other futures of the same invocation.
pub async fn sleep(duration: std::time::Duration) {
    wstd::task::sleep(duration.into()).await;
}
