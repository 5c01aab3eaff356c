//! The Trellis runtime: the HTTP API (CloudEvents publish, topics, reads, operations) and the
//! gRPC API (publish, consumer groups) over the event log and the metadata store.
//!
//! # Layout
//! - `serve`: runs the API until a shutdown signal, then drains and flushes.
//! - `http`: the router; one file per resource under `http/`.
//! - `grpc`: the gRPC service (tonic): publish, publish streams and consumer groups.
//! - `publisher`: the publish core of HTTP and gRPC, with deduplication (`dedup`).
//! - `topics`: topic settings and the registry joining the metadata store and the log.
//! - `subscriptions`: subscriptions, their dispatchers (log -> delivery engine) and dead letters.
//! - `config`: the runtime's settings, as the binary hands them over.
//! - `error`: the API's one error shape.
//! - `metrics`: metric names and the Prometheus recorder.
//! - `net`: the listeners' connections: limits, timeouts and the bounded drain.
//!
//! This crate knows HTTP and CloudEvents; the log below it stores opaque records and the
//! metadata store below it is a trait.

mod config;
mod dedup;
mod error;
mod grpc;
mod http;
mod metrics;
mod net;
mod publisher;
mod serve;
mod stored_offset;
mod subscriptions;
mod topics;

pub use config::RuntimeConfig;
pub use error::error_chain;
pub use metrics::install_metrics_recorder;
pub use net::ConnectionLimits;
#[doc(hidden)]
pub use net::fuzz_head_gate;
pub use serve::{ServeError, serve, serve_with_grpc};
pub use topics::{DurabilityPolicy, TopicSettings};
/// What `RuntimeConfig::webhook_tls` holds; built by whoever reads the configuration.
pub use trellis_delivery::tls::WebhookTls;
