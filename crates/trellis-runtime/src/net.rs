//! Connections of the HTTP and gRPC listeners: how many may be open, how long each may idle or
//! dawdle over a request, and the bounded drain at shutdown.
//!
//! - `listener.rs`: the accept loop (the connection limit, accept errors logged and counted).
//! - `conn.rs`: one connection's state, the socket wrapper that records reads and can be cut
//!   off, and the watchdog that cuts it off when a timeout expires (the rule is in `limits.rs`).
//! - `head_gate.rs`: HTTP/1 heads checked before hyper, so malformed ones get JSON answers.
//! - `tracking.rs`: bodies that tell the watchdog what is in flight.
//! - `http_server.rs`: the HTTP server on hyper-util; `grpc_service.rs`: the same tracking for
//!   tonic's calls.
//! - `drain.rs`: the shutdown timeout.
//! - `metrics.rs`: connection metrics.

mod conn;
pub(crate) mod drain;
pub(crate) mod grpc_service;
mod head_gate;
pub(crate) mod http_server;
mod limits;
mod listener;
mod metrics;
mod tracking;

pub use head_gate::fuzz_head_gate;
pub use limits::ConnectionLimits;
pub(crate) use listener::{Listener, ListenerHandle};
pub(crate) use metrics::describe as describe_metrics;
