//! Trellis' built-in connectors, each a [`trellis_connect::Source`] or [`trellis_connect::Sink`]:
//!
//! - `file_source`: tails a file line by line; the position is the byte offset after a line.
//! - `file_sink`: appends one JSON event per line, with an fsync policy.
//! - `http_sink`: the delivery engine as a sink, for a standalone `http-sink`.
//! - `http_source`: a webhook receiver that answers once each record is durably published.
//! - `topic_sink`: publishes batches into a topic of another Trellis over HTTP, keeping event ids.
//! - `topic_source`: reads a topic of another Trellis over HTTP; the position is the far offset.
//! - `plugins`: the catalog of the classes above (and `http-sink`, which the runtime builds),
//!   making a connector by class and checking a config without side effects.
//! - `standalone`: one connector per process against a runtime's HTTP API, offsets in a local
//!   file.

pub mod file_sink;
pub mod file_source;
pub mod http_sink;
pub mod http_source;
pub mod plugins;
pub mod standalone;
pub mod topic_sink;
pub mod topic_source;
