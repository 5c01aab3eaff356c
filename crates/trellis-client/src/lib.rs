//! The Trellis Rust SDK: a [`Producer`] that batches CloudEvents and publishes them over gRPC,
//! and a [`Consumer`] that receives a consumer group's events and acks them.
//!
//! Both recover from failures by themselves. A background task drives an explicit state machine,
//! [`ConnectionState`]: `Ready -> Backoff -> Recovering -> Ready`. Transient failures (a refused
//! or reset connection, a timeout, UNAVAILABLE, overload, INTERNAL) are retried with exponential
//! backoff and full jitter, on the next endpoint if there are several; permanent ones (an
//! invalid event, one too large, no permission) fail only the records they concern. Nothing
//! poisons a producer and there is nothing to clear: the application never calls anything to
//! recover.
//!
//! The producer never drops a batch it failed to send: the batch goes back to the front of the
//! queue and is sent again with the same event ids, in order, before anything newer. The server
//! deduplicates by (source, id), so a record stored before the failure comes back as a
//! `duplicate` success with its original offset. (The server stores the batches in flight on one
//! stream concurrently: for the topic to keep the order of `send` exactly, set
//! [`ProducerConfig::max_in_flight`] to 1.) A transient problem reaches the application
//! only as a [`ProducerError::DeliveryTimeout`] when a record stays unacknowledged longer than
//! the delivery timeout.
//!
//! Memory is bounded: [`Producer::send`] waits while the buffer holds `max_buffered_bytes`,
//! and fails with [`ProducerError::BufferFull`] if it waits longer than the buffer timeout.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use trellis_client::{Consumer, ConsumerConfig, Producer, ProducerConfig, StartPosition};
//! use trellis_cloudevents::CloudEvent;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let producer = Producer::new(
//!     ProducerConfig::new("orders")
//!         .endpoints(["10.0.0.1:10205", "10.0.0.2:10205"])
//!         .linger(Duration::from_millis(10)),
//! )?;
//! let mut results = Vec::new();
//! for n in 0..100 {
//!     let json = format!(r#"{{"specversion":"1.0","id":"order-{n}","source":"/shop","type":"order.created"}}"#);
//!     results.push(producer.send(CloudEvent::from_structured_json(json.as_bytes())?).await?);
//! }
//! for result in results {
//!     let stored = result.await?;
//!     assert!(stored.offset < u64::MAX);
//! }
//!
//! let mut consumer = Consumer::new(
//!     ConsumerConfig::new("orders", "billing").start(StartPosition::Earliest),
//! )?;
//! let delivery = consumer.recv().await?;
//! consumer.ack(delivery.offset)?;
//! # Ok(())
//! # }
//! ```
//!
//! Settings are checked before anything starts:
//!
//! ```
//! use trellis_client::ProducerConfig;
//!
//! let error = ProducerConfig::new("orders").batch_max_events(0).validate().unwrap_err();
//! assert_eq!(error.to_string(), "batch_max_events: must be at least 1");
//! ```
//!
//! # Layout
//!
//! - `config`: [`ProducerConfig`], [`ConsumerConfig`] and [`RetryPolicy`], with defaults and
//!   validation.
//! - `state`: the [`ConnectionState`] machine, a pure type.
//! - `observed`: the machine as the application sees it (watch, transitions, gauge).
//! - `queue`: the producer's batch queue (batching, in-flight order, requeue at the front).
//! - `endpoints`: endpoint choice, with a quarantine after a failure.
//! - `error`: [`ProducerError`], [`ConsumerError`] and which status codes are transient.
//! - `producer`, `consumer`: the handles and their background tasks.
//! - `channel`: opening a gRPC channel with the settings both share.
//! - `metrics`: metric names (through the `metrics` facade).

mod channel;
mod config;
mod consumer;
mod endpoints;
mod error;
pub mod metrics;
mod observed;
mod producer;
mod queue;
mod state;

pub use config::{
    ConsumerConfig, DEFAULT_ENDPOINT, GroupMode, ProducerConfig, RetryPolicy, StartPosition,
};
pub use consumer::{Consumer, Delivery};
pub use error::{ConfigError, ConsumerError, ProducerError, is_transient_code};
pub use producer::{DeliveryFuture, Producer, RecordMetadata};
pub use state::ConnectionState;
pub use tonic::Code;
pub use trellis_cloudevents::CloudEvent;
