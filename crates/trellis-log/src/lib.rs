//! The embedded durable event log: one append-only, segmented log per topic.
//!
//! Records are opaque bytes; this crate knows nothing of CloudEvents or HTTP.
//! Offsets are dense `u64`s per topic starting at 0. An append resolves only once its
//! records are as durable as the topic's [`Durability`] says.
//!
//! # Layout
//!
//! - `catalog`: the set of topics in one log directory; open, create, delete, close.
//! - `topic`: a topic's shared state and its read side (high watermark, reads, `wait_for`).
//! - `writer`: group commit; the only code that writes to or rolls a topic's active segment.
//! - `writer_pool`: the few OS threads that run every topic's writer, one group at a time.
//! - `fd_cache`: the bounded set of open segment files, reopened on demand.
//! - `segment`: one `.log` file, its in-memory sparse index and the frame cursor readers use.
//! - `frame`: the on-disk record frame (length, CRC-32C, offset, timestamp, flags, payload).
//! - `index`: the sparse offset index and its `.idx` file format.
//! - `recovery`: rebuilding a topic from disk: holes for damaged records with intact records
//!   after them, a cut for a torn or corrupt tail.
//! - `resync`: finding where intact frames resume after a bad frame.
//! - `retention`: deleting whole sealed segments by age and size.
//! - `files`: file names, segment creation and directory fsyncs.
//!
//! # On disk
//!
//! ```text
//! <dir>/<topic>/00000000000000000000.log   frames, named by the segment's base offset
//! <dir>/<topic>/00000000000000000000.idx   sparse index: one entry per ~4 KiB of the .log
//! ```
//!
//! **Invariant:** an append's future resolves only after the write (and, for
//! [`Durability::Always`], the fsync) covering all of its records has returned, and readers never
//! see a record before its append could have resolved.

mod catalog;
mod damage_check;
mod fd_cache;
mod files;
mod frame;
mod index;
mod recovery;
mod resync;
mod retention;
mod segment;
mod topic;
mod writer;
mod writer_pool;

pub use fd_cache::DEFAULT_MAX_OPEN_FILES;
pub use writer_pool::DEFAULT_WRITER_THREADS;

pub use topic::PendingAppend;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

/// The largest payload one record may carry. Larger appends fail with `RecordTooLarge`.
///
/// The frame format could hold up to 4 GiB; the limit exists so that a corrupt length read from
/// disk can never make the log allocate more than this.
pub const MAX_RECORD_BYTES: usize = 64 * 1024 * 1024;

/// The longest allowed topic name, in characters.
pub const MAX_TOPIC_NAME_CHARS: usize = 249;

/// How hard an append works to survive a crash before it is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync before acknowledging; concurrent appends share one fsync (group commit).
    Always,
    /// Acknowledge after the write; fsync in the background at this interval.
    Interval(Duration),
    /// Acknowledge after the write; leave flushing to the OS.
    Never,
}

/// Per-topic settings. `None` in a retention field means "unbounded".
///
/// The default is `Durability::Always`, 64 MiB segments and no retention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicConfig {
    pub durability: Durability,
    /// A segment is sealed and a new one started once it reaches this size.
    pub segment_bytes: u64,
    /// Sealed segments whose newest record is older than this are deleted.
    pub retention_age: Option<Duration>,
    /// Oldest sealed segments are deleted while the topic is larger than this.
    pub retention_bytes: Option<u64>,
}

/// Log-wide options.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// Directory that holds one sub-directory per topic.
    pub dir: PathBuf,
    /// Settings used for topics found on disk at open time until `set_config` says otherwise.
    pub default_topic: TopicConfig,
}

/// What the log may use of the machine, whatever the number of topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogResources {
    /// OS threads that write and fsync, shared by every topic (at least 1). Each topic's
    /// appends are still written in order and group-committed on their own.
    pub writer_threads: usize,
    /// Segment files (`.log` and `.idx`) kept open at once; the least recently used are closed
    /// and reopened on demand. Process-wide, like the descriptor limit it protects; the last
    /// log opened sets it.
    pub max_open_files: usize,
}

impl Default for LogResources {
    fn default() -> LogResources {
        LogResources {
            writer_threads: DEFAULT_WRITER_THREADS,
            max_open_files: DEFAULT_MAX_OPEN_FILES,
        }
    }
}

/// One stored record as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub offset: u64,
    /// Milliseconds since the Unix epoch at which the log stored the record.
    pub timestamp_ms: i64,
    pub payload: Bytes,
}

/// The result of a successful append: the records got offsets `first_offset..first_offset + n_records`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendAck {
    pub first_offset: u64,
    pub n_records: u64,
}

/// Offsets whose records are damaged on disk and cannot be read. The records around them are
/// intact and readable; the offsets are never given to another record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedRange {
    /// The base offset of the segment that holds the damage.
    pub segment: u64,
    /// The first unreadable offset.
    pub first_offset: u64,
    /// The first offset after the damage: where a reader goes on.
    pub next_offset: u64,
    /// What is wrong, e.g. "bad checksum at byte 4096".
    pub reason: String,
}

/// One read's answer: the records, and the damage they stop short at, if any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadPage {
    pub records: Vec<Record>,
    /// Set when the read stopped at damaged records; they come right after the last record
    /// returned (or at the offset asked for, when no record was returned).
    pub damaged: Option<DamagedRange>,
}

/// A point-in-time view of a topic's size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicStats {
    /// Damaged records found so far (by recovery at open, or by reads since), in offset order.
    pub damaged: Vec<DamagedRange>,
    /// The oldest offset still stored (equals `next_offset` when the topic is empty).
    pub first_offset: u64,
    /// The offset the next appended record will get.
    pub next_offset: u64,
    pub size_bytes: u64,
    pub n_segments: usize,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    #[error("topic {0} does not exist")]
    NoSuchTopic(String),
    #[error("topic {0} already exists")]
    TopicExists(String),
    #[error("invalid topic name {}: {reason}", echoed(name))]
    InvalidTopicName { name: String, reason: &'static str },
    #[error("an append needs at least one record")]
    EmptyAppend,
    #[error("offset {offset} is no longer stored; the oldest stored offset is {first_offset}")]
    OffsetTruncated { offset: u64, first_offset: u64 },
    #[error("segment {segment} of topic {topic} is corrupt at byte {position}")]
    Corrupt {
        topic: String,
        segment: u64,
        position: u64,
    },
    #[error(
        "offsets {first}..{next} of topic {topic} are damaged ({reason}); reading can go on at offset {next}",
        first = .range.first_offset,
        next = .range.next_offset,
        reason = .range.reason
    )]
    Damaged { topic: String, range: DamagedRange },
    #[error("the log is shut down")]
    Closed,
    #[error("i/o error on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("a record of {size} bytes is larger than the limit of {max} bytes")]
    RecordTooLarge { size: usize, max: usize },
}

/// A handle on the whole log: cheap to clone, shared by every task.
#[derive(Clone)]
pub struct Log {
    catalog: Arc<catalog::Catalog>,
}

/// A handle on one topic: cheap to clone. Appends go through the topic's group-commit writer.
#[derive(Clone)]
pub struct Topic {
    inner: Arc<topic::TopicInner>,
}

/// Checks a topic name: 1 to 249 characters of `[A-Za-z0-9._-]`, and neither `.` nor `..`.
///
/// Topic names become directory names, which is why the set is this small.
pub fn validate_topic_name(name: &str) -> Result<(), LogError> {
    let reason = if name.is_empty() || name.len() > MAX_TOPIC_NAME_CHARS {
        Some("a topic name must be 1 to 249 characters from [A-Za-z0-9._-]")
    } else if name == "." || name == ".." {
        Some("a topic name must not be \".\" or \"..\"")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        Some(
            "a topic name may contain only ASCII letters, digits, '.', '_' and '-' \
             ([A-Za-z0-9._-]), e.g. \"orders.eu-west_1\"",
        )
    } else {
        None
    };
    match reason {
        Some(reason) => Err(LogError::InvalidTopicName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// A name as an error message shows it: quoted, and cut after 128 characters, so that a
/// hostile name (a 10,000-character topic in a request) cannot inflate the message.
fn echoed(name: &str) -> String {
    match name.char_indices().nth(128) {
        None => format!("{name:?}"),
        Some((cut, _)) => format!("{:?}...", &name[..cut]),
    }
}

/// Runs the frame decoder and the recovery scan over arbitrary bytes, panicking if either
/// breaks one of its invariants. Exists for the `frame_decode` fuzz target; not part of the API.
#[doc(hidden)]
pub fn fuzz_frame_decode(data: &[u8]) {
    recovery::fuzz_frame_decode(data);
}

/// Writes records through a log in `dir`, damages its files as `data` says, recovers and
/// panics if an intact acknowledged record was lost or an offset would be reused. Exists for
/// the `recovery_damage` fuzz target and its proptest; not part of the API.
#[doc(hidden)]
pub fn check_recovery_after_damage(dir: &std::path::Path, data: &[u8]) {
    damage_check::check_recovery_after_damage(dir, data);
}

impl Default for TopicConfig {
    fn default() -> TopicConfig {
        TopicConfig {
            durability: Durability::Always,
            segment_bytes: 64 * 1024 * 1024,
            retention_age: None,
            retention_bytes: None,
        }
    }
}

impl Log {
    /// Opens (creating if needed) the log in `options.dir`, recovering every topic found there:
    /// a torn or corrupt tail is truncated with one warning per topic.
    pub fn open(options: LogOptions) -> Result<Log, LogError> {
        Log::open_with(options, &LogResources::default())
    }

    /// [`Log::open`] with explicit limits on threads and open files.
    pub fn open_with(options: LogOptions, resources: &LogResources) -> Result<Log, LogError> {
        let catalog = catalog::Catalog::open(options, resources)?;
        Ok(Log {
            catalog: Arc::new(catalog),
        })
    }

    /// How many topics exist.
    pub fn n_topics(&self) -> usize {
        self.catalog.n_topics()
    }

    /// The topic, if it exists.
    pub fn topic(&self, name: &str) -> Option<Topic> {
        self.catalog.topic(name).map(|inner| Topic { inner })
    }

    /// Creates a topic. Fails with `TopicExists` if it is already there.
    ///
    /// Creates and fsyncs the topic's directory and first segment: blocking, about a millisecond.
    pub fn create_topic(&self, name: &str, config: TopicConfig) -> Result<Topic, LogError> {
        let inner = self.catalog.create(name, config, catalog::IfExists::Fail)?;
        Ok(Topic { inner })
    }

    /// The topic, created with `config` if it does not exist yet. Safe against concurrent callers.
    pub fn get_or_create_topic(&self, name: &str, config: TopicConfig) -> Result<Topic, LogError> {
        let inner = self
            .catalog
            .create(name, config, catalog::IfExists::Return)?;
        Ok(Topic { inner })
    }

    /// Every topic, sorted by name.
    pub fn topics(&self) -> Vec<Topic> {
        self.catalog
            .topics()
            .into_iter()
            .map(|inner| Topic { inner })
            .collect()
    }

    /// Deletes a topic and its files. Pending appends fail with `NoSuchTopic`; waiting readers wake
    /// up and get `NoSuchTopic`. Returns false if there was no such topic.
    pub async fn delete_topic(&self, name: &str) -> Result<bool, LogError> {
        self.catalog.delete(name).await
    }

    /// Applies retention to every topic once. The runtime calls this periodically.
    ///
    /// Deletes files with blocking calls; call from `spawn_blocking` in async code. Keeps going
    /// after a failure and returns the first error.
    pub fn enforce_retention(&self) -> Result<(), LogError> {
        self.catalog.enforce_retention()
    }

    /// Stops every writer after it has finished what was queued, and fsyncs every topic.
    /// Later appends fail with `Closed`.
    pub async fn close(&self) -> Result<(), LogError> {
        self.catalog.close().await
    }
}

impl Topic {
    pub fn name(&self) -> &str {
        &self.inner.shared.name
    }

    pub fn config(&self) -> TopicConfig {
        self.inner.shared.config()
    }

    /// Changes settings; takes effect for the next append and the next retention pass.
    pub fn set_config(&self, config: TopicConfig) {
        self.inner.shared.set_config(config);
    }

    /// Appends records as one all-or-nothing batch: after a crash either every record of the
    /// batch is there or none is. Resolves once the batch is as durable as the topic's policy says.
    ///
    /// The log's writer threads do the writing; the future only waits for them. Dropping it after
    /// it was first polled does not withdraw the records.
    pub async fn append(&self, records: Vec<Bytes>) -> Result<AppendAck, LogError> {
        self.inner.append(records).await
    }

    /// [`Topic::append`] in two steps: returns once the records have their place in the
    /// writer's queue, so an append submitted later is stored after them, with a future that
    /// resolves when they are durable. A stream of batches that must keep its order submits
    /// one after another and awaits the answers together.
    pub async fn submit(&self, records: Vec<Bytes>) -> Result<PendingAppend, LogError> {
        self.inner.submit(records).await
    }

    /// Reads up to `max_records` records from `from` on, stopping early once `max_bytes` of payload
    /// are collected (but always returning at least one record if one exists). Blocking I/O
    /// (positional reads through the sparse index); call from `spawn_blocking` in async code.
    /// Reading at or past `next_offset` returns an empty vector.
    ///
    /// A read stops short before damaged records and returns those before them; a read that
    /// starts at a damaged record fails with `Damaged`, which names the offset to go on from.
    /// [`Topic::read_page`] returns both at once.
    pub fn read(
        &self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>, LogError> {
        let page = self.inner.shared.read_page(from, max_records, max_bytes)?;
        match page.damaged {
            Some(range) if page.records.is_empty() => Err(LogError::Damaged {
                topic: self.name().to_owned(),
                range,
            }),
            Some(_) | None => Ok(page.records),
        }
    }

    /// [`Topic::read`], with the damage the records stop short at (if any) in the same answer.
    pub fn read_page(
        &self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<ReadPage, LogError> {
        self.inner.shared.read_page(from, max_records, max_bytes)
    }

    /// Resolves once a record with offset `offset` is readable, or the topic is deleted
    /// (`NoSuchTopic`) or the log closed (`Closed`). Never polls.
    pub async fn wait_for(&self, offset: u64) -> Result<(), LogError> {
        self.inner.shared.wait_for(offset).await
    }

    pub fn stats(&self) -> TopicStats {
        self.inner.shared.stats()
    }
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("dir", &self.catalog.dir())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Topic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topic")
            .field("name", &self.name())
            .finish_non_exhaustive()
    }
}

impl LogError {
    /// A copy of this error for one more waiter: a failed group commit fails every append in the
    /// group with the same cause, and `std::io::Error` is not `Clone`.
    pub(crate) fn duplicate(&self) -> LogError {
        match self {
            LogError::NoSuchTopic(name) => LogError::NoSuchTopic(name.clone()),
            LogError::TopicExists(name) => LogError::TopicExists(name.clone()),
            LogError::InvalidTopicName { name, reason } => LogError::InvalidTopicName {
                name: name.clone(),
                reason,
            },
            LogError::EmptyAppend => LogError::EmptyAppend,
            LogError::OffsetTruncated {
                offset,
                first_offset,
            } => LogError::OffsetTruncated {
                offset: *offset,
                first_offset: *first_offset,
            },
            LogError::Corrupt {
                topic,
                segment,
                position,
            } => LogError::Corrupt {
                topic: topic.clone(),
                segment: *segment,
                position: *position,
            },
            LogError::Damaged { topic, range } => LogError::Damaged {
                topic: topic.clone(),
                range: range.clone(),
            },
            LogError::Closed => LogError::Closed,
            LogError::Io { path, source } => LogError::Io {
                path: path.clone(),
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
            LogError::RecordTooLarge { size, max } => LogError::RecordTooLarge {
                size: *size,
                max: *max,
            },
        }
    }
}
