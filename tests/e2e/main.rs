//! End-to-end tests: the real `fnhost` binary on an ephemeral loopback port,
//! real example guests built for wasm32-wasip2, a real HTTP client.

mod support;

mod adapt;
mod app;
mod cache;
mod check;
mod fuzz;
mod guests;
mod hostile;
mod lanes;
mod limits;
mod outbound;
mod python;
mod queue;
mod redeploy;
mod reuse;
mod sandbox;
mod serve;
mod shutdown;
mod start_errors;
mod top;
mod wasip3;
mod workers;
