//! The [`Source`] trait: a connector that reads records from another system into Trellis.
//!
//! The worker's loop: `start` once with the committed positions; then `poll` batches, publish
//! each record, and `commit` each record once its publish is durable; `stop` once. Offsets are
//! the worker's business (it persists the acknowledged prefix of each partition); `commit` only
//! tells the source, for systems that want to hear it (an acknowledgement to send upstream).
//!
//! ```
//! use std::collections::BTreeMap;
//! use trellis_connect::{
//!     ConnectRecord, ConnectorConfig, ConnectorError, Offset, Partition, Position, Source,
//!     SourceContext,
//! };
//!
//! /// Emits the lines of a text, resuming after the last committed line.
//! struct Lines { text: Vec<String>, next: u64, committed: Vec<String> }
//!
//! #[async_trait::async_trait]
//! impl Source for Lines {
//!     async fn start(&mut self, context: SourceContext) -> Result<(), ConnectorError> {
//!         let text = context.config.get_str("text")?;
//!         self.text = text.lines().map(str::to_owned).collect();
//!         self.next = context.committed_offset(&Partition::new("text")).map_or(0, |o| o.0);
//!         Ok(())
//!     }
//!     async fn poll(&mut self) -> Result<Vec<ConnectRecord>, ConnectorError> {
//!         let Some(line) = usize::try_from(self.next).ok().and_then(|i| self.text.get(i)) else {
//!             return Ok(Vec::new());
//!         };
//!         self.next += 1;
//!         // The offset to resume at once this record is committed: the next line.
//!         let position = Position::new("text", self.next);
//!         Ok(vec![ConnectRecord::new(format!("text-{}", self.next), position, line.clone())])
//!     }
//!     async fn commit(&mut self, record: &ConnectRecord) -> Result<(), ConnectorError> {
//!         self.committed.push(record.id.clone());
//!         Ok(())
//!     }
//!     async fn stop(&mut self) -> Result<(), ConnectorError> { Ok(()) }
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let mut source = Lines { text: Vec::new(), next: 0, committed: Vec::new() };
//! let config = ConnectorConfig::new().with("text", "a\nb\nc");
//! // Line 1 ("a") was committed in an earlier run.
//! let committed = BTreeMap::from([(Partition::new("text"), Offset(1))]);
//! source.start(SourceContext::new("lines", config, committed)).await?;
//! let mut published = Vec::new();
//! loop {
//!     let batch = source.poll().await?;
//!     if batch.is_empty() { break; }
//!     for record in batch {
//!         published.push(String::from_utf8_lossy(&record.data).into_owned());
//!         source.commit(&record).await?; // the publish was acknowledged
//!     }
//! }
//! source.stop().await?;
//! assert_eq!(published, ["b", "c"]);
//! assert_eq!(source.committed, ["text-2", "text-3"]);
//! # Ok::<(), ConnectorError>(()) }).unwrap();
//! ```

use std::collections::BTreeMap;

use async_trait::async_trait;

use crate::config::ConnectorConfig;
use crate::error::ConnectorError;
use crate::position::{Offset, Partition};
use crate::record::ConnectRecord;

/// What a source starts with.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SourceContext {
    /// The connector's name, unique in its runtime.
    pub name: String,
    pub config: ConnectorConfig,
    /// The last committed offset of each partition: resume there. Empty on a first start.
    pub committed: BTreeMap<Partition, Offset>,
}

impl SourceContext {
    pub fn new(
        name: impl Into<String>,
        config: ConnectorConfig,
        committed: BTreeMap<Partition, Offset>,
    ) -> SourceContext {
        SourceContext {
            name: name.into(),
            config,
            committed,
        }
    }

    pub fn committed_offset(&self, partition: &Partition) -> Option<Offset> {
        self.committed.get(partition).copied()
    }
}

/// A connector that reads from another system. One worker task owns it and calls its methods
/// one at a time; object safe, so a worker holds a `Box<dyn Source>`.
#[async_trait]
pub trait Source: Send {
    /// Validates the config (a [`ConfigError`](crate::ConfigError) names the bad key) and
    /// opens what the source reads, positioned after the committed offsets.
    async fn start(&mut self, context: SourceContext) -> Result<(), ConnectorError>;

    /// The next records, in order within each partition. Returns within about a second even
    /// when there is nothing new (an empty batch), so the worker can commit and stop in time.
    /// A record may come with a callback of the source's own (the HTTP source answers the
    /// request that carried it from there): the worker then ends that record's completion with
    /// the publish's outcome and never replaces it (a replaced callback reports `Dropped`). A
    /// record without one gets the worker's.
    async fn poll(&mut self) -> Result<Vec<ConnectRecord>, ConnectorError>;

    /// Told once for each record whose publish is durable. The default does nothing.
    async fn commit(&mut self, record: &ConnectRecord) -> Result<(), ConnectorError> {
        let _ = record;
        Ok(())
    }

    /// Whether [`Source::commit`] does anything. A source that keeps the default `commit`
    /// answers `false`, and the worker skips the call for each of its records (an await per
    /// record, for nothing). The default is `true`, so a source that overrides `commit` is
    /// always told.
    fn wants_commit(&self) -> bool {
        true
    }

    /// Releases what the source holds. Called once, after the last poll.
    async fn stop(&mut self) -> Result<(), ConnectorError>;
}
