//! The [`Sink`] trait: a connector that writes records from Trellis into another system.
//!
//! Each record's result arrives through its callback, not through `put`'s return value: a sink
//! may finish records later, in any order, from its own tasks. The worker advances its
//! committed offset from the callbacks only. A record the sink drops unfinished (even when
//! `put` returns an error) reports [`SendError::Dropped`](crate::SendError::Dropped).
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use trellis_connect::{
//!     ConnectRecord, ConnectorConfig, ConnectorError, Position, SendCallback,
//!     SendExceptionContext, SendError, SendResult, Sink, SinkContext,
//! };
//!
//! /// Keeps records in memory; refuses empty ones.
//! #[derive(Default)]
//! struct Memory { stored: Vec<String> }
//!
//! #[async_trait::async_trait]
//! impl Sink for Memory {
//!     async fn start(&mut self, _context: SinkContext) -> Result<(), ConnectorError> { Ok(()) }
//!     async fn put(&mut self, records: Vec<ConnectRecord>) -> Result<(), ConnectorError> {
//!         for record in records {
//!             if record.data.is_empty() {
//!                 record.fail(None, SendError::Rejected("empty record".to_owned()));
//!             } else {
//!                 self.stored.push(String::from_utf8_lossy(&record.data).into_owned());
//!                 record.succeed(None);
//!             }
//!         }
//!         Ok(())
//!     }
//!     async fn stop(&mut self) -> Result<(), ConnectorError> { Ok(()) }
//! }
//!
//! /// What a sink worker does with outcomes: here, it writes them down.
//! #[derive(Default)]
//! struct Outcomes(Mutex<Vec<String>>);
//! impl SendCallback for Outcomes {
//!     fn on_success(&self, result: SendResult) {
//!         self.0.lock().unwrap().push(format!("{} ok", result.record_id));
//!     }
//!     fn on_exception(&self, context: SendExceptionContext) {
//!         self.0.lock().unwrap().push(format!("{} failed: {}", context.record_id, context.cause));
//!     }
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let outcomes = Arc::new(Outcomes::default());
//! let records: Vec<ConnectRecord> = ["a", "", "c"]
//!     .into_iter()
//!     .enumerate()
//!     .map(|(i, data)| {
//!         ConnectRecord::new(format!("r{i}"), Position::new("orders", i as u64 + 1), data)
//!             .with_callback(outcomes.clone())
//!     })
//!     .collect();
//! let mut sink = Memory::default();
//! sink.start(SinkContext::new("memory", ConnectorConfig::new())).await?;
//! sink.put(records).await?;
//! sink.stop().await?;
//! assert_eq!(sink.stored, ["a", "c"]);
//! assert_eq!(
//!     *outcomes.0.lock().unwrap(),
//!     ["r0 ok", "r1 failed: the record was rejected: empty record", "r2 ok"]
//! );
//! # Ok::<(), ConnectorError>(()) }).unwrap();
//! ```

use async_trait::async_trait;

use crate::config::ConnectorConfig;
use crate::error::ConnectorError;
use crate::record::ConnectRecord;

/// What a sink starts with.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SinkContext {
    /// The connector's name, unique in its runtime.
    pub name: String,
    pub config: ConnectorConfig,
}

impl SinkContext {
    pub fn new(name: impl Into<String>, config: ConnectorConfig) -> SinkContext {
        SinkContext {
            name: name.into(),
            config,
        }
    }
}

/// A connector that writes to another system. One worker task owns it and calls its methods
/// one at a time; object safe, so a worker holds a `Box<dyn Sink>`.
#[async_trait]
pub trait Sink: Send {
    /// Validates the config (a [`ConfigError`](crate::ConfigError) names the bad key) and
    /// opens the target.
    async fn start(&mut self, context: SinkContext) -> Result<(), ConnectorError>;

    /// Takes a batch, in topic order. Each record ends through its own callback, now or later.
    /// An error means the sink as a whole is broken (the worker applies its error policy);
    /// the records it did not finish still report, as dropped.
    async fn put(&mut self, records: Vec<ConnectRecord>) -> Result<(), ConnectorError>;

    /// Finishes or abandons records in flight (each still ends in its callback) and releases
    /// the target. Called once, after the last put.
    async fn stop(&mut self) -> Result<(), ConnectorError>;
}
