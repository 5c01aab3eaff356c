//! The event storage boundary: everything Trellis needs from the place its events live, as one
//! object-safe trait, so that the embedded log and a distributed engine can stand behind it alike.
//!
//! - [`EventStore`]: topics — create, configure, list, delete, retention, close.
//! - [`TopicStore`]: one topic — append (with deduplication), ordered submission, reads from any
//!   offset with a size cap, waiting for new records.
//! - [`EmbeddedStore`]: the backend over `trellis-log`.
//! - [`JetStreamStore`]: the backend over NATS JetStream (its module doc gives the mapping).
//! - `conformance` (feature `test-util`): the checks every backend must pass, through the trait
//!   only.
//!
//! Offsets are dense from 0 within a topic: every stored record gets the next one, and an offset
//! is never given to another record, even after retention removed the first.
//!
//! Deduplication is part of the boundary. A record may carry a [`DedupKey`], a digest the caller
//! computes from the event's identity (Trellis uses (`source`, `id`)); a backend stores a record
//! whose key it saw within its deduplication window at most once and answers a repeat with the
//! first copy's offset ([`AppendOutcome::Duplicate`]).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;

#[cfg(feature = "test-util")]
pub mod conformance;
mod embedded;
mod error;
mod jetstream;

pub use embedded::{EmbeddedOptions, EmbeddedStore, KeyOf};
pub use error::StorageError;
pub use jetstream::{
    JetStreamOptions, JetStreamStore, fuzz_stream_description, stream_name, topic_name,
};

/// Checks a topic name against the rules every backend accepts: what Trellis' API allows is
/// what the boundary stores, so callers check names once, above it.
pub fn validate_topic_name(name: &str) -> Result<(), StorageError> {
    trellis_log::validate_topic_name(name).map_err(StorageError::from)
}

/// How hard an append works to survive a crash before it is acknowledged. What each level means
/// is the backend's to document: a replicated engine may acknowledge on a quorum's receipt
/// rather than on an fsync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Durability {
    /// Stored durably before the acknowledgement.
    Always,
    /// Acknowledged after the write; made durable in the background at this interval.
    Interval(Duration),
    /// Acknowledged after the write; durability left to the system below.
    Never,
}

/// A topic's settings. `None` in a retention field means "unbounded".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSettings {
    pub durability: Durability,
    /// The unit retention removes: a backend that stores a topic in segments seals one at this
    /// size, and removes whole segments only. Others may ignore it.
    pub segment_bytes: u64,
    /// Records older than this may be removed.
    pub retention_age: Option<Duration>,
    /// The oldest records are removed while the topic is larger than this.
    pub retention_bytes: Option<u64>,
}

impl Default for TopicSettings {
    fn default() -> TopicSettings {
        TopicSettings {
            durability: Durability::Always,
            segment_bytes: 64 * 1024 * 1024,
            retention_age: None,
            retention_bytes: None,
        }
    }
}

/// A digest of an event's identity, computed above the boundary. Two records with the same key
/// are the same event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DedupKey(pub u128);

/// One record to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendRecord {
    pub payload: Bytes,
    /// `None`: the record is never a duplicate.
    pub dedup_key: Option<DedupKey>,
}

impl AppendRecord {
    pub fn new(payload: impl Into<Bytes>) -> AppendRecord {
        AppendRecord {
            payload: payload.into(),
            dedup_key: None,
        }
    }

    pub fn with_key(payload: impl Into<Bytes>, key: DedupKey) -> AppendRecord {
        AppendRecord {
            payload: payload.into(),
            dedup_key: Some(key),
        }
    }
}

/// What became of one appended record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Stored at this offset.
    Stored(u64),
    /// A record with the same key was stored at this offset within the deduplication window
    /// (earlier, or earlier in the same batch); this one was not stored.
    Duplicate(u64),
}

impl AppendOutcome {
    /// The offset the event is stored at, whether by this append or an earlier one.
    pub fn offset(self) -> u64 {
        match self {
            AppendOutcome::Stored(offset) | AppendOutcome::Duplicate(offset) => offset,
        }
    }
}

/// One stored record as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub offset: u64,
    /// Milliseconds since the Unix epoch at which the backend stored the record.
    pub timestamp_ms: i64,
    pub payload: Bytes,
}

/// Offsets whose records are stored but cannot be read. The records around them are readable;
/// the offsets are never given to another record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedRange {
    /// The first unreadable offset.
    pub first_offset: u64,
    /// The first offset after the damage: where a reader goes on.
    pub next_offset: u64,
    /// What is wrong, for an operator.
    pub reason: String,
    /// Where the backend keeps the damaged records, for an operator: the embedded log's
    /// segment (its base offset); 0 for a backend without such units.
    pub segment: u64,
}

/// One read's answer: the records, and the damage they stop short at, if any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadPage {
    pub records: Vec<Record>,
    /// Set when the read stopped at damaged records; they come right after the last record
    /// returned (or at the offset asked for, when no record was returned).
    pub damaged: Option<DamagedRange>,
}

/// A point-in-time view of a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    pub name: String,
    /// The oldest offset still stored (equals `next_offset` when the topic holds no record).
    pub first_offset: u64,
    /// The offset the next stored record will get.
    pub next_offset: u64,
    /// Bytes the topic takes in the backend, overhead included.
    pub size_bytes: u64,
    /// The units retention removes whole (the embedded log's segment files); 1 for a backend
    /// that removes single records.
    pub segments: usize,
    pub settings: TopicSettings,
    /// Damaged records known so far, in offset order.
    pub damaged: Vec<DamagedRange>,
}

/// An append whose place in its topic's order is fixed: resolves once its records are stored
/// (or failed), with one outcome per record, in the order given.
pub struct PendingAppend {
    inner: Pin<Box<dyn Future<Output = Result<Vec<AppendOutcome>, StorageError>> + Send>>,
}

impl PendingAppend {
    pub fn new(
        future: impl Future<Output = Result<Vec<AppendOutcome>, StorageError>> + Send + 'static,
    ) -> PendingAppend {
        PendingAppend {
            inner: Box::pin(future),
        }
    }
}

impl Future for PendingAppend {
    type Output = Result<Vec<AppendOutcome>, StorageError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl fmt::Debug for PendingAppend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingAppend").finish_non_exhaustive()
    }
}

/// What a backend that deduplicates in this process's memory holds for it, for the
/// `trellis_dedup_*` gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DedupUsage {
    /// Stored keys remembered, over all topics.
    pub remembered_keys: usize,
    /// About how many bytes of heap the remembered keys take.
    pub memory_bytes: usize,
}

/// Where a Trellis node keeps its events: a set of named topics. Cheap to share behind an `Arc`.
#[async_trait::async_trait]
pub trait EventStore: Send + Sync + fmt::Debug {
    /// Creates a topic; fails with `TopicExists` if it is already there.
    async fn create_topic(
        &self,
        name: &str,
        settings: TopicSettings,
    ) -> Result<Arc<dyn TopicStore>, StorageError>;

    /// The topic, created with `settings` if it does not exist yet (an existing topic keeps its
    /// own). Safe against concurrent callers.
    async fn get_or_create_topic(
        &self,
        name: &str,
        settings: TopicSettings,
    ) -> Result<Arc<dyn TopicStore>, StorageError>;

    /// The topic, if it exists.
    async fn topic(&self, name: &str) -> Result<Option<Arc<dyn TopicStore>>, StorageError>;

    /// Every topic, sorted by name.
    async fn list_topics(&self) -> Result<Vec<TopicInfo>, StorageError>;

    /// Deletes a topic and its records. Returns false if there was no such topic. Handles on it
    /// fail with `NoSuchTopic` from then on, and waiters wake with it; a topic created again
    /// under the name starts empty at offset 0, with no memory of the old one's keys.
    async fn delete_topic(&self, name: &str) -> Result<bool, StorageError>;

    /// Applies every topic's retention once. Backends that enforce retention by themselves make
    /// this a no-op; callers run it periodically either way.
    async fn enforce_retention(&self) -> Result<(), StorageError>;

    /// Finishes what was submitted, makes it durable, and refuses later appends with `Closed`.
    async fn close(&self) -> Result<(), StorageError>;

    /// The memory this process spends on deduplication, read synchronously so that a metrics
    /// scrape takes no await. `None` for a backend that deduplicates in the engine below, where
    /// this process holds nothing to report.
    fn dedup_usage(&self) -> Option<DedupUsage> {
        None
    }

    /// Whether the store can serve calls now, read synchronously for readiness checks: false
    /// while a remote backend's connection is down (calls then fail with `Unavailable` and
    /// succeed again once it is back). A local backend is always available until closed.
    fn available(&self) -> bool {
        true
    }
}

/// One topic. Handles are cheap; several may exist for one topic.
#[async_trait::async_trait]
pub trait TopicStore: Send + Sync + fmt::Debug {
    fn name(&self) -> &str;

    async fn info(&self) -> Result<TopicInfo, StorageError>;

    /// Changes the topic's settings; they apply to the next append and retention pass.
    async fn configure(&self, settings: TopicSettings) -> Result<(), StorageError>;

    /// Appends a batch and answers, per record and in order, where it is stored. Fresh records of
    /// one batch get consecutive offsets in the order given.
    async fn append(&self, records: Vec<AppendRecord>) -> Result<Vec<AppendOutcome>, StorageError>;

    /// [`TopicStore::append`] in two steps: returns once the batch has its place in the topic's
    /// order, so that a batch submitted later is stored after it; the returned future resolves
    /// when it is stored. It makes progress without being polled, so a stream may submit many
    /// batches before awaiting any answer, even batches that repeat each other's keys.
    async fn submit(&self, records: Vec<AppendRecord>) -> Result<PendingAppend, StorageError>;

    /// Up to `max_records` records from `from` on, stopping once `max_bytes` of payload are
    /// collected (but with at least one record if one exists). At or past the end: no records.
    /// Below the oldest stored offset: `OffsetTruncated`. The read stops short before damaged
    /// records and says so in the page.
    async fn read(
        &self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<ReadPage, StorageError>;

    /// Resolves once the record at `offset` is stored (immediately if it is), or fails once the
    /// topic is deleted (`NoSuchTopic`) or the store closed (`Closed`). Never polls.
    async fn wait_for(&self, offset: u64) -> Result<(), StorageError>;
}
