//! The Trellis runtime: the HTTP API (CloudEvents publish, topics, reads, operations) and the
//! gRPC API (publish, consumer groups) over the event store and the metadata store.
//!
//! # Layout
//! - `serve`: runs the API until a shutdown signal, then drains and flushes.
//! - `http`: the router; one file per resource under `http/`.
//! - `grpc`: the gRPC service (tonic): publish, publish streams and consumer groups.
//! - `publisher`: the publish core of HTTP and gRPC; the event store deduplicates.
//! - `topics`: topic settings and the registry joining the metadata store and the event store.
//! - `subscriptions`: subscriptions, their dispatchers (store -> delivery engine) and dead
//!   letters.
//! - `event_store`: the events' deduplication key and read helpers over the storage boundary.
//! - `config`: the runtime's settings, as the binary hands them over.
//! - `error`: the API's one error shape.
//! - `metrics`: metric names and the Prometheus recorder.
//! - `net`: the listeners' connections: limits, timeouts and the bounded drain.
//!
//! This crate knows HTTP and CloudEvents; below it, the event store (`Arc<dyn EventStore>`)
//! stores opaque records and the metadata store is a trait: neither names its backend here.

mod cluster_load;
mod config;
mod connectors;
mod error;
mod event_store;
mod follow;
mod grpc;
mod http;
mod metrics;
mod net;
mod ownership;
mod publisher;
mod serve;
mod stored_offset;
mod subscriptions;
mod topics;

pub use config::RuntimeConfig;
pub use error::error_chain;
pub use event_store::{event_dedup_key, stored_event_key_of};
pub use metrics::install_metrics_recorder;
pub use net::ConnectionLimits;
#[doc(hidden)]
pub use net::fuzz_head_gate;
pub use serve::{ServeError, serve, serve_with_grpc};
pub use topics::{DurabilityPolicy, TopicSettings};
/// What `RuntimeConfig::webhook_tls` holds; built by whoever reads the configuration.
pub use trellis_delivery::tls::WebhookTls;
