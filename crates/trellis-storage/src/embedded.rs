//! The embedded backend: topics in a `trellis-log` on the local disk.
//!
//! Deduplication here is a window-based index in memory, shared by all topics (see `dedup`): a batch's
//! keys are looked up and reserved before its fresh records go to the log as one all-or-nothing
//! append, and stored with their offsets once the log acknowledges. An append that meets a key
//! another append holds waits for that one to finish, so concurrent copies of one event are
//! stored once. After a restart the index is rebuilt from the log, reading back at most
//! `dedup_max_entries` records from the end of the topic, which needs `key_of` to tell a stored
//! payload's key; without it, duplicates are recognised only within one process's lifetime.

mod dedup;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{OnceCell, watch};
use trellis_log::{Log, LogOptions, LogResources, TopicConfig};

use crate::error::damaged_range;
use crate::{
    AppendOutcome, AppendRecord, DedupKey, DedupUsage, Durability, EventStore, PendingAppend,
    ReadPage, Record, StorageError, TopicInfo, TopicSettings, TopicStore,
};
use dedup::{DedupIndex, Lookup};

/// Reads a stored payload's dedup key back, to rebuild the index after a restart. It must give
/// the key the payload was appended with.
pub type KeyOf = Arc<dyn Fn(&[u8]) -> Option<DedupKey> + Send + Sync>;

/// Records read back per step when the index is rebuilt.
const REBUILD_CHUNK_RECORDS: usize = 4096;
const REBUILD_CHUNK_BYTES: usize = 16 * 1024 * 1024;

#[derive(Clone)]
pub struct EmbeddedOptions {
    /// The directory that holds one sub-directory per topic.
    pub dir: PathBuf,
    /// Settings of topics found on disk at open time until they are configured.
    pub default_settings: TopicSettings,
    /// OS threads that write and fsync, shared by every topic.
    pub writer_threads: usize,
    /// Segment files kept open at once, process-wide.
    pub max_open_files: usize,
    /// How long a key is remembered; zero turns deduplication off.
    pub dedup_window: Duration,
    /// The most keys remembered over all topics; the oldest are forgotten first. After a
    /// restart, each topic's last this many records are read back, at most.
    pub dedup_max_entries: usize,
    pub key_of: Option<KeyOf>,
}

impl EmbeddedOptions {
    pub fn new(dir: impl Into<PathBuf>) -> EmbeddedOptions {
        let resources = LogResources::default();
        EmbeddedOptions {
            dir: dir.into(),
            default_settings: TopicSettings::default(),
            writer_threads: resources.writer_threads,
            max_open_files: resources.max_open_files,
            dedup_window: Duration::from_secs(10 * 60),
            dedup_max_entries: 1_000_000,
            key_of: None,
        }
    }
}

impl std::fmt::Debug for EmbeddedOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedOptions")
            .field("dir", &self.dir)
            .field("dedup_window", &self.dedup_window)
            .field("dedup_max_entries", &self.dedup_max_entries)
            .field("key_of", &self.key_of.is_some())
            .finish_non_exhaustive()
    }
}

/// The event store over a `trellis-log` in one directory.
pub struct EmbeddedStore {
    log: Log,
    dedup_window: Duration,
    index: Arc<Mutex<DedupIndex>>,
    /// The incarnation the next topic state gets.
    next_incarnation: AtomicU64,
    key_of: Option<KeyOf>,
    /// One state per existing topic, so every handle on a topic shares its dedup index. Async,
    /// because creating and deleting a topic must not interleave with looking it up.
    topics: tokio::sync::Mutex<HashMap<String, Arc<TopicState>>>,
}

struct TopicState {
    log: trellis_log::Topic,
    /// Files this topic's keys apart from those of any earlier topic of the same name.
    incarnation: u64,
    index: Arc<Mutex<DedupIndex>>,
    /// Read once: a publish without duplicates to look for takes no lock.
    dedup_enabled: bool,
    loaded: OnceCell<()>,
    key_of: Option<KeyOf>,
}

/// A handle on one embedded topic.
#[derive(Debug, Clone)]
struct EmbeddedTopic {
    state: Arc<TopicState>,
}

impl EmbeddedStore {
    /// Opens (creating if needed) the log in `options.dir`, recovering every topic there.
    /// Blocking: call from `spawn_blocking` in async code if the log may be large.
    pub fn open(options: EmbeddedOptions) -> Result<EmbeddedStore, StorageError> {
        let log = Log::open_with(
            LogOptions {
                dir: options.dir,
                default_topic: to_log_config(&options.default_settings),
            },
            &LogResources {
                writer_threads: options.writer_threads,
                max_open_files: options.max_open_files,
            },
        )?;
        Ok(EmbeddedStore {
            log,
            dedup_window: options.dedup_window,
            index: Arc::new(Mutex::new(DedupIndex::new(
                options.dedup_window,
                options.dedup_max_entries,
            ))),
            next_incarnation: AtomicU64::new(0),
            key_of: options.key_of,
            topics: tokio::sync::Mutex::new(HashMap::new()),
        })
    }

    /// Stored keys the duplicate index remembers, over all topics.
    pub fn remembered_keys(&self) -> usize {
        lock(&self.index).len()
    }

    fn new_state(&self, log: trellis_log::Topic) -> Arc<TopicState> {
        Arc::new(TopicState {
            log,
            incarnation: self.next_incarnation.fetch_add(1, Ordering::Relaxed),
            index: Arc::clone(&self.index),
            dedup_enabled: lock(&self.index).enabled(),
            loaded: OnceCell::new(),
            key_of: self.key_of.clone(),
        })
    }

    fn handle(state: &Arc<TopicState>) -> Arc<dyn TopicStore> {
        Arc::new(EmbeddedTopic {
            state: Arc::clone(state),
        })
    }
}

#[async_trait::async_trait]
impl EventStore for EmbeddedStore {
    async fn create_topic(
        &self,
        name: &str,
        settings: TopicSettings,
    ) -> Result<Arc<dyn TopicStore>, StorageError> {
        let mut topics = self.topics.lock().await;
        let log = self.log.clone();
        let owned = name.to_owned();
        let topic =
            tokio::task::spawn_blocking(move || log.create_topic(&owned, to_log_config(&settings)))
                .await
                .map_err(join_error)??;
        let state = self.new_state(topic);
        topics.insert(name.to_owned(), Arc::clone(&state));
        Ok(EmbeddedStore::handle(&state))
    }

    async fn get_or_create_topic(
        &self,
        name: &str,
        settings: TopicSettings,
    ) -> Result<Arc<dyn TopicStore>, StorageError> {
        let mut topics = self.topics.lock().await;
        if let Some(state) = topics.get(name) {
            return Ok(EmbeddedStore::handle(state));
        }
        let log = self.log.clone();
        let owned = name.to_owned();
        let topic = tokio::task::spawn_blocking(move || {
            log.get_or_create_topic(&owned, to_log_config(&settings))
        })
        .await
        .map_err(join_error)??;
        let state = self.new_state(topic);
        topics.insert(name.to_owned(), Arc::clone(&state));
        Ok(EmbeddedStore::handle(&state))
    }

    async fn topic(&self, name: &str) -> Result<Option<Arc<dyn TopicStore>>, StorageError> {
        let mut topics = self.topics.lock().await;
        if let Some(state) = topics.get(name) {
            return Ok(Some(EmbeddedStore::handle(state)));
        }
        // Found on disk at open time, or not there at all.
        let Some(topic) = self.log.topic(name) else {
            return Ok(None);
        };
        let state = self.new_state(topic);
        topics.insert(name.to_owned(), Arc::clone(&state));
        Ok(Some(EmbeddedStore::handle(&state)))
    }

    async fn list_topics(&self) -> Result<Vec<TopicInfo>, StorageError> {
        Ok(self.log.topics().iter().map(info_of).collect())
    }

    async fn delete_topic(&self, name: &str) -> Result<bool, StorageError> {
        let mut topics = self.topics.lock().await;
        let deleted = self.log.delete_topic(name).await?;
        topics.remove(name);
        Ok(deleted)
    }

    async fn enforce_retention(&self) -> Result<(), StorageError> {
        let log = self.log.clone();
        tokio::task::spawn_blocking(move || log.enforce_retention())
            .await
            .map_err(join_error)??;
        Ok(())
    }

    async fn close(&self) -> Result<(), StorageError> {
        Ok(self.log.close().await?)
    }

    fn dedup_usage(&self) -> Option<DedupUsage> {
        let index = lock(&self.index);
        Some(DedupUsage {
            remembered_keys: index.len(),
            memory_bytes: index.memory_bytes(),
        })
    }
}

#[async_trait::async_trait]
impl TopicStore for EmbeddedTopic {
    fn name(&self) -> &str {
        self.state.log.name()
    }

    async fn info(&self) -> Result<TopicInfo, StorageError> {
        // A deleted topic's handle must not report the topic as present; a read past the end
        // says so without touching the disk.
        self.state.log.read_page(u64::MAX, 0, 0)?;
        Ok(info_of(&self.state.log))
    }

    async fn configure(&self, settings: TopicSettings) -> Result<(), StorageError> {
        self.state.log.read_page(u64::MAX, 0, 0)?;
        self.state.log.set_config(to_log_config(&settings));
        Ok(())
    }

    async fn append(&self, records: Vec<AppendRecord>) -> Result<Vec<AppendOutcome>, StorageError> {
        self.submit(records).await?.await
    }

    async fn submit(&self, records: Vec<AppendRecord>) -> Result<PendingAppend, StorageError> {
        if records.is_empty() {
            return Err(StorageError::EmptyAppend);
        }
        let deduplicating =
            self.state.dedup_enabled && records.iter().any(|record| record.dedup_key.is_some());
        if !deduplicating {
            let payloads = records.into_iter().map(|record| record.payload).collect();
            let pending = self.state.log.submit(payloads).await?;
            return Ok(PendingAppend::new(async move {
                let ack = pending.await?;
                Ok((0..ack.n_records)
                    .map(|i| AppendOutcome::Stored(ack.first_offset + i))
                    .collect())
            }));
        }
        self.state.ensure_loaded().await;
        Arc::clone(&self.state).submit_deduplicated(records).await
    }

    async fn read(
        &self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<ReadPage, StorageError> {
        let topic = self.state.log.clone();
        let page =
            tokio::task::spawn_blocking(move || topic.read_page(from, max_records, max_bytes))
                .await
                .map_err(join_error)??;
        Ok(ReadPage {
            records: page.records.into_iter().map(record_of).collect(),
            damaged: page.damaged.map(damaged_range),
        })
    }

    async fn wait_for(&self, offset: u64) -> Result<(), StorageError> {
        Ok(self.state.log.wait_for(offset).await?)
    }
}

/// Where each record of a deduplicated batch goes.
#[derive(Debug, Clone, Copy)]
enum Plan {
    /// The n-th fresh record of the batch.
    Fresh(usize),
    /// A copy of the n-th fresh record of the same batch.
    InBatch(usize),
    Duplicate(u64),
}

/// The keys one append reserved. Dropped without `keep`, it gives them up, so that an append
/// cancelled or failed on its way to the log never leaves a key held.
struct Reservations {
    state: Arc<TopicState>,
    /// The key of each fresh record that has one, with its place among the fresh records.
    keys: Vec<(DedupKey, usize)>,
    waiter: watch::Receiver<()>,
    /// Closes when the reservations end, waking every append that waits on them.
    _done: watch::Sender<()>,
    kept: bool,
}

impl Reservations {
    fn keep(mut self, first_offset: u64) {
        let now = now_ms();
        let mut index = lock(&self.state.index);
        for (key, fresh) in &self.keys {
            index.store(
                (self.state.incarnation, *key),
                first_offset + *fresh as u64,
                now,
            );
        }
        self.kept = true;
    }
}

impl Drop for Reservations {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        let mut index = lock(&self.state.index);
        for (key, _) in &self.keys {
            index.abandon(&(self.state.incarnation, *key), &self.waiter);
        }
    }
}

impl TopicState {
    /// Looks every key up and reserves the fresh ones, all at once or (when another append holds
    /// one of them) none: it then waits for that append and looks again.
    async fn submit_deduplicated(
        self: Arc<Self>,
        records: Vec<AppendRecord>,
    ) -> Result<PendingAppend, StorageError> {
        let (plan, fresh, reservations) = loop {
            let (done, waiter) = watch::channel(());
            let mut plan = Vec::with_capacity(records.len());
            let mut keys = Vec::new();
            let mut in_batch: HashMap<DedupKey, usize> = HashMap::new();
            let mut n_fresh = 0usize;
            let mut held_elsewhere = None;
            {
                let now = now_ms();
                let mut index = lock(&self.index);
                for record in &records {
                    let Some(key) = record.dedup_key else {
                        plan.push(Plan::Fresh(n_fresh));
                        n_fresh += 1;
                        continue;
                    };
                    if let Some(&fresh) = in_batch.get(&key) {
                        plan.push(Plan::InBatch(fresh));
                        continue;
                    }
                    match index.lookup(&(self.incarnation, key), now) {
                        Lookup::Stored(offset) => plan.push(Plan::Duplicate(offset)),
                        Lookup::Pending(other) => {
                            held_elsewhere = Some(other);
                            break;
                        }
                        Lookup::Absent => {
                            index.reserve((self.incarnation, key), waiter.clone());
                            keys.push((key, n_fresh));
                            in_batch.insert(key, n_fresh);
                            plan.push(Plan::Fresh(n_fresh));
                            n_fresh += 1;
                        }
                    }
                }
            }
            let reservations = Reservations {
                state: Arc::clone(&self),
                keys,
                waiter,
                _done: done,
                kept: false,
            };
            match held_elsewhere {
                Some(mut other) => {
                    drop(reservations);
                    // Err (the usual case) means the holder is done, stored or not.
                    let _ = other.changed().await;
                }
                None => {
                    let fresh: Vec<bytes::Bytes> = records
                        .iter()
                        .zip(&plan)
                        .filter(|(_, plan)| matches!(plan, Plan::Fresh(_)))
                        .map(|(record, _)| record.payload.clone())
                        .collect();
                    break (plan, fresh, reservations);
                }
            }
        };
        if fresh.is_empty() {
            let outcomes = plan
                .iter()
                .map(|plan| match *plan {
                    Plan::Duplicate(offset) => AppendOutcome::Duplicate(offset),
                    // Unreachable: a batch with no fresh record plans neither.
                    Plan::Fresh(_) | Plan::InBatch(_) => AppendOutcome::Duplicate(0),
                })
                .collect();
            return Ok(PendingAppend::new(async move { Ok(outcomes) }));
        }
        let pending = self.log.submit(fresh).await?;
        // The index must learn the offsets even if nobody awaits the answer: a later batch of
        // the same stream may wait on these keys before the stream awaits this one.
        let task = tokio::spawn(async move {
            let ack = pending.await?;
            reservations.keep(ack.first_offset);
            Ok(plan
                .iter()
                .map(|plan| match *plan {
                    Plan::Fresh(n) => AppendOutcome::Stored(ack.first_offset + n as u64),
                    Plan::InBatch(n) => AppendOutcome::Duplicate(ack.first_offset + n as u64),
                    Plan::Duplicate(offset) => AppendOutcome::Duplicate(offset),
                })
                .collect())
        });
        Ok(PendingAppend::new(async move {
            task.await.map_err(join_error)?
        }))
    }

    /// Rebuilds the index from the log once, before the topic's first deduplicated append.
    async fn ensure_loaded(&self) {
        self.loaded.get_or_init(|| self.rebuild()).await;
    }

    async fn rebuild(&self) {
        let Some(key_of) = self.key_of.clone() else {
            return;
        };
        let (window_ms, max_entries) = {
            let index = lock(&self.index);
            (index.window_ms(), index.max_entries())
        };
        let stats = self.log.stats();
        let mut from = stats
            .first_offset
            .max(stats.next_offset.saturating_sub(max_entries as u64));
        let end = stats.next_offset;
        while from < end {
            let topic = self.log.clone();
            let key_of = Arc::clone(&key_of);
            let horizon = now_ms().saturating_sub(window_ms);
            let read = tokio::task::spawn_blocking(move || {
                let page = topic.read_page(from, REBUILD_CHUNK_RECORDS, REBUILD_CHUNK_BYTES)?;
                let next = page
                    .damaged
                    .as_ref()
                    .map(|range| range.next_offset)
                    .or_else(|| page.records.last().map(|record| record.offset + 1));
                let keys: Vec<(DedupKey, u64, i64)> = page
                    .records
                    .iter()
                    .filter(|record| record.timestamp_ms > horizon)
                    .filter_map(|record| {
                        key_of(&record.payload).map(|key| (key, record.offset, record.timestamp_ms))
                    })
                    .collect();
                Ok::<_, trellis_log::LogError>((keys, next))
            })
            .await;
            let (keys, next) = match read {
                Ok(Ok(read)) => read,
                Ok(Err(error)) => {
                    tracing::warn!(
                        message = "Rebuilding the duplicate index stopped early; some duplicates may be stored again.",
                        topic = self.log.name(),
                        error = %error
                    );
                    return;
                }
                Err(error) => {
                    tracing::warn!(message = "Rebuilding the duplicate index failed.", topic = self.log.name(), error = %error);
                    return;
                }
            };
            let mut index = lock(&self.index);
            for (key, offset, at_ms) in keys {
                index.remember((self.incarnation, key), offset, at_ms);
            }
            drop(index);
            match next {
                Some(next) => from = next,
                None => return,
            }
        }
    }
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("log", &self.log)
            .field("dedup_window", &self.dedup_window)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for TopicState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicState")
            .field("topic", &self.log.name())
            .finish_non_exhaustive()
    }
}

fn info_of(topic: &trellis_log::Topic) -> TopicInfo {
    let stats = topic.stats();
    TopicInfo {
        name: topic.name().to_owned(),
        first_offset: stats.first_offset,
        next_offset: stats.next_offset,
        size_bytes: stats.size_bytes,
        segments: stats.n_segments,
        settings: from_log_config(&topic.config()),
        damaged: stats.damaged.into_iter().map(damaged_range).collect(),
    }
}

fn record_of(record: trellis_log::Record) -> Record {
    Record {
        offset: record.offset,
        timestamp_ms: record.timestamp_ms,
        payload: record.payload,
    }
}

fn to_log_config(settings: &TopicSettings) -> TopicConfig {
    TopicConfig {
        durability: match settings.durability {
            Durability::Always => trellis_log::Durability::Always,
            Durability::Interval(every) => trellis_log::Durability::Interval(every),
            Durability::Never => trellis_log::Durability::Never,
        },
        segment_bytes: settings.segment_bytes,
        retention_age: settings.retention_age,
        retention_bytes: settings.retention_bytes,
    }
}

fn from_log_config(config: &TopicConfig) -> TopicSettings {
    TopicSettings {
        durability: match config.durability {
            trellis_log::Durability::Always => Durability::Always,
            trellis_log::Durability::Interval(every) => Durability::Interval(every),
            trellis_log::Durability::Never => Durability::Never,
        },
        segment_bytes: config.segment_bytes,
        retention_age: config.retention_age,
        retention_bytes: config.retention_bytes,
    }
}

fn join_error(error: tokio::task::JoinError) -> StorageError {
    StorageError::Backend(Box::new(error))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
        })
}
