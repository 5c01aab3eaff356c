//! Trellis' built-in connectors, each a [`trellis_connect::Source`] or [`trellis_connect::Sink`]:
//!
//! - `file_source`: tails a file line by line; the position is the byte offset after a line.
//! - `file_sink`: appends one JSON event per line, with an fsync policy.
//! - `http_source`: a webhook receiver that answers once each record is durably published.
//! - `topic_sink`: publishes batches into a topic of another Trellis over HTTP, keeping event ids.
//! - `topic_source`: reads a topic of another Trellis over HTTP; the position is the far offset.
//! - `plugins`: the catalog of the classes above (and `http-sink`, which the runtime builds),
//!   making a connector by class and checking a config without side effects.

pub mod file_sink;
pub mod file_source;
pub mod http_source;
pub mod plugins;
pub mod topic_sink;
pub mod topic_source;
