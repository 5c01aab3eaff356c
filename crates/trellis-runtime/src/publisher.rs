//! The publish core shared by HTTP and gRPC: validated, encoded events in; per event the offset
//! it was stored at, or the offset of the copy stored before it (a duplicate), out.
//!
//! Deduplication: an event whose `(source, id)` the topic stored within the window is not
//! stored again; it is answered with the first copy's offset and `duplicate`. How:
//! - Before appending, each key of the batch is *reserved* in the [`DedupIndex`]. A second
//!   publish of a reserved key waits until the first one's append ends, then looks again: it
//!   finds the key stored (a duplicate) or free (the first append failed). Keys are reserved in
//!   sorted order, so two batches waiting on each other's keys cannot deadlock.
//! - The index's lock is held only to look keys up and record them, never across an append, so
//!   concurrent publishes still share one fsync (group commit).
//! - The append and the recording of its offsets run in a task of their own: a client that
//!   hangs up mid-append does not leave stored events unremembered.
//! - After a restart, the index is rebuilt from the tail of each topic's log: the records whose
//!   log timestamp (the append time) falls within the window, at most `max_entries` of them per
//!   topic. Nothing is stored besides the log. A topic's first publish waits for its rebuild,
//!   which starts for every topic when the runtime starts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{OnceCell, oneshot, watch};
use trellis_cloudevents::{CloudEvent, EventError, EventLimits};
use trellis_log::{LogError, Topic};

use crate::dedup::{DedupIndex, DedupKey, Reservation, Ticket};
use crate::error::{ApiError, error_chain};
use crate::metrics::PublishMetrics;
use crate::topics::TopicRegistry;

/// Records read per blocking call while rebuilding the index.
const REBUILD_CHUNK_RECORDS: usize = 4096;
const REBUILD_CHUNK_BYTES: usize = 8 * 1024 * 1024;

/// A batch's place in a sequence that must be stored in order: wait for `after`, then signal
/// `then` once appended (or end, dropping it). The default is no sequence.
#[derive(Debug, Default)]
pub(crate) struct Turn {
    pub(crate) after: Option<oneshot::Receiver<()>>,
    pub(crate) then: Option<oneshot::Sender<()>>,
}

/// An event ready to append: its stored record and its deduplication key.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub(crate) key: DedupKey,
    pub(crate) record: Bytes,
}

/// Extension names Trellis itself puts on events it returns; a producer may not set them.
const RESERVED_EXTENSIONS: &[&str] = &["offset"];

/// Why a valid CloudEvent cannot be stored; each API words it in its own errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Unpublishable {
    /// It sets an extension Trellis reserves.
    Reserved(&'static str),
    /// It is over one of the [`EventLimits`] (an attribute's size, the depth of its data).
    OverLimit(EventError),
    /// Its stored form is over the size limit.
    TooLarge { size: usize, max: usize },
}

impl Unpublishable {
    /// The attribute at fault, if there is one.
    pub(crate) fn attribute(&self) -> Option<String> {
        match self {
            Unpublishable::Reserved(name) => Some((*name).to_owned()),
            Unpublishable::OverLimit(error) => error.attribute.clone(),
            Unpublishable::TooLarge { .. } => None,
        }
    }

    /// The reason, with `subject` naming the event ("the event", "event 3").
    pub(crate) fn message(&self, subject: &str) -> String {
        match self {
            Unpublishable::Reserved(name) => format!(
                "extension attribute `{name}` is reserved: Trellis reports each event's log offset under that name"
            ),
            Unpublishable::OverLimit(error) => format!("{subject}: {}", error.message),
            Unpublishable::TooLarge { size, max } => format!(
                "{subject} is {size} bytes as stored; the maximum event size is {max} bytes"
            ),
        }
    }
}

impl Outgoing {
    /// The checks HTTP and gRPC publishing share, then the stored form of `event`.
    pub(crate) fn prepare(
        event: &CloudEvent,
        limits: &EventLimits,
        max_event_bytes: usize,
    ) -> Result<Outgoing, Unpublishable> {
        if let Some(name) = RESERVED_EXTENSIONS
            .iter()
            .find(|name| event.extensions.contains_key(**name))
        {
            return Err(Unpublishable::Reserved(name));
        }
        event
            .check_limits(limits)
            .map_err(Unpublishable::OverLimit)?;
        let record = event.to_stored();
        if record.len() > max_event_bytes {
            return Err(Unpublishable::TooLarge {
                size: record.len(),
                max: max_event_bytes,
            });
        }
        Ok(Outgoing {
            key: DedupKey::new(&event.source, &event.id),
            record: Bytes::from(record),
        })
    }
}

/// Where one event of a publish ended up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Published {
    pub(crate) offset: u64,
    /// Not stored by this publish: `offset` is the earlier copy's.
    pub(crate) duplicate: bool,
}

/// A waiter on a reserved key: its sender is dropped when the reservation ends either way.
type Waiter = watch::Receiver<()>;

pub(crate) struct Publisher {
    topics: TopicRegistry,
    index: Arc<Mutex<DedupIndex<Waiter>>>,
    window: Duration,
    max_entries: usize,
    /// One rebuild per topic, awaited by its publishes.
    loaded: Mutex<HashMap<String, Arc<OnceCell<()>>>>,
    metrics: PublishMetrics,
    remembered: Remembered,
}

/// The gauges that show the index's size.
#[derive(Clone)]
struct Remembered {
    entries: metrics::Gauge,
    bytes: metrics::Gauge,
}

impl Remembered {
    fn set<W: Clone>(&self, index: &DedupIndex<W>) {
        self.entries.set(index.len() as f64);
        self.bytes.set(index.memory_bytes() as f64);
    }
}

/// A reservation held until its key is stored; dropping it unstored abandons the key and wakes
/// the publishes waiting on it.
struct Held {
    index: Arc<Mutex<DedupIndex<Waiter>>>,
    topic: Arc<str>,
    key: DedupKey,
    ticket: Option<Ticket>,
    /// Shared by the batch's reservations; the last one dropped wakes the waiters.
    _wake_on_drop: Arc<watch::Sender<()>>,
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            lock(&self.index).abandon(&self.topic, &self.key, ticket);
        }
    }
}

/// What became of each distinct key of a batch.
enum Fate {
    /// Stored earlier at this offset.
    Duplicate(u64),
    /// To be appended; the reservation, when deduplication is on.
    New(Option<Held>),
}

fn lock<W>(index: &Mutex<DedupIndex<W>>) -> MutexGuard<'_, DedupIndex<W>> {
    // The index is consistent after every method; a panic elsewhere cannot leave it half-changed.
    index
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
        })
}

impl Publisher {
    pub(crate) fn new(
        topics: TopicRegistry,
        window: Duration,
        max_entries: usize,
        metrics: PublishMetrics,
    ) -> Publisher {
        Publisher {
            topics,
            index: Arc::new(Mutex::new(DedupIndex::new(window, max_entries))),
            window,
            max_entries,
            loaded: Mutex::default(),
            metrics,
            remembered: Remembered {
                entries: metrics::gauge!(crate::metrics::DEDUP_ENTRIES),
                bytes: metrics::gauge!(crate::metrics::DEDUP_MEMORY),
            },
        }
    }

    fn enabled(&self) -> bool {
        !self.window.is_zero() && self.max_entries > 0
    }

    /// Rebuilds the index of every existing topic, in the background of the caller.
    pub(crate) async fn rebuild_all(self: Arc<Self>) {
        if !self.enabled() {
            return;
        }
        for topic in self.topics.log().topics() {
            self.ensure_loaded(&topic).await;
        }
    }

    /// The topic was deleted: a topic created again under its name starts at offset 0.
    pub(crate) fn forget_topic(&self, name: &str) {
        if let Ok(mut loaded) = self.loaded.lock() {
            loaded.remove(name);
        }
        let mut index = lock(&self.index);
        index.forget_topic(name);
        self.remembered.set(&index);
    }

    /// Stores the events of one batch that are not duplicates, as one all-or-nothing append,
    /// and answers for every event in order.
    pub(crate) async fn publish(
        &self,
        topic_name: &str,
        events: Vec<Outgoing>,
    ) -> Result<Vec<Published>, ApiError> {
        self.publish_in_turn(topic_name, events, Turn::default())
            .await
    }

    /// [`Publisher::publish`] for one of a sequence of batches that must be stored in order
    /// (a publish stream): waits for the previous batch's turn before it reserves its keys, and
    /// passes the turn on once its records have their place in the log's queue. Waiting before
    /// reserving matters: a later batch holding a key an earlier one needs would deadlock them.
    pub(crate) async fn publish_in_turn(
        &self,
        topic_name: &str,
        events: Vec<Outgoing>,
        turn: Turn,
    ) -> Result<Vec<Published>, ApiError> {
        let Turn { after, then } = turn;
        if let Some(after) = after {
            // An error means the previous batch ended without appending: the turn is ours.
            let _ = after.await;
        }
        let topic = self.topics.for_publish(topic_name).await?;
        if !self.enabled() {
            let records = events.into_iter().map(|event| event.record).collect();
            let ack = append(&topic, records, self.metrics.clone(), then).await?;
            return Ok((ack.first_offset..ack.first_offset + ack.n_records)
                .map(|offset| Published {
                    offset,
                    duplicate: false,
                })
                .collect());
        }
        self.ensure_loaded(&topic).await;
        let topic_key: Arc<str> = Arc::from(topic.name());

        // The first event with each key speaks for the batch's later copies.
        let mut first_of: HashMap<&DedupKey, usize> = HashMap::with_capacity(events.len());
        let mut first_index = Vec::with_capacity(events.len());
        for (idx, event) in events.iter().enumerate() {
            first_index.push(*first_of.entry(&event.key).or_insert(idx));
        }
        let mut distinct: Vec<(&DedupKey, usize)> = first_of.into_iter().collect();
        distinct.sort_unstable();

        let fates = self.reserve_all(&topic_key, &distinct).await;

        // Appended in batch order, so offsets follow the order of the request.
        let mut fates = fates;
        let mut records = Vec::new();
        let mut holds = Vec::new();
        let mut appended_at = HashMap::new();
        for (idx, event) in events.iter().enumerate() {
            if let Some(Fate::New(held)) = fates.get_mut(&idx) {
                appended_at.insert(idx, records.len() as u64);
                records.push(event.record.clone());
                holds.push(held.take());
            }
        }
        let first_offset = if records.is_empty() {
            0
        } else {
            let index = Arc::clone(&self.index);
            let metrics = self.metrics.clone();
            let remembered = self.remembered.clone();
            let appending = tokio::spawn(async move {
                let ack = append(&topic, records, metrics, then).await?;
                let now = now_ms();
                let mut index = lock(&index);
                for (held, offset) in holds.iter_mut().zip(ack.first_offset..) {
                    if let Some(held) = held
                        && let Some(ticket) = held.ticket.take()
                    {
                        index.store(&held.topic, &held.key, ticket, offset, now);
                    }
                }
                remembered.set(&index);
                drop(index);
                // Only now, with every key recorded, are the waiting publishes woken.
                drop(holds);
                Ok::<u64, ApiError>(ack.first_offset)
            });
            match appending.await {
                Ok(result) => result?,
                Err(error) => return Err(ApiError::internal("storing events", &error)),
            }
        };

        let mut n_duplicates = 0u64;
        let published = first_index
            .iter()
            .enumerate()
            .map(|(idx, first)| {
                let offset = match fates.get(first) {
                    Some(Fate::Duplicate(offset)) => *offset,
                    _ => first_offset + appended_at.get(first).copied().unwrap_or(0),
                };
                let duplicate =
                    idx != *first || matches!(fates.get(first), Some(Fate::Duplicate(_)));
                n_duplicates += u64::from(duplicate);
                Published { offset, duplicate }
            })
            .collect();
        if n_duplicates > 0 {
            self.metrics
                .topic(&topic_key)
                .duplicates
                .increment(n_duplicates);
        }
        Ok(published)
    }

    /// Reserves the batch's distinct keys in sorted order, under one lock for as long as no
    /// other publish holds a key; a held key is waited for (ours stay held meanwhile, which the
    /// order makes safe) and looked up again. One wake-up channel serves the whole batch: its
    /// keys are stored, or abandoned, together.
    async fn reserve_all(
        &self,
        topic: &Arc<str>,
        distinct: &[(&DedupKey, usize)],
    ) -> HashMap<usize, Fate> {
        let (wake, _) = watch::channel(());
        let wake = Arc::new(wake);
        let mut fates = HashMap::with_capacity(distinct.len());
        let mut next = 0;
        while next < distinct.len() {
            let mut held_elsewhere = None;
            {
                let now = now_ms();
                let mut index = lock(&self.index);
                for &(key, idx) in &distinct[next..] {
                    match index.reserve(topic, key, now, || wake.subscribe()) {
                        (Reservation::Reserved, ticket) => {
                            // Inserting never drops a `Held` here (each index comes once), so
                            // nothing re-takes the lock this scope holds.
                            fates.insert(
                                idx,
                                Fate::New(Some(Held {
                                    index: Arc::clone(&self.index),
                                    topic: Arc::clone(topic),
                                    key: *key,
                                    ticket,
                                    _wake_on_drop: Arc::clone(&wake),
                                })),
                            );
                        }
                        (Reservation::Stored(offset), _) => {
                            fates.insert(idx, Fate::Duplicate(offset));
                        }
                        (Reservation::Pending(other), _) => {
                            held_elsewhere = Some(other);
                            break;
                        }
                    }
                    next += 1;
                }
            }
            if let Some(mut other) = held_elsewhere {
                // Err means the holder is done, stored or not: look again.
                let _ = other.changed().await;
            }
        }
        fates
    }

    /// Waits until the topic's index is rebuilt from its log; the first caller does the work.
    async fn ensure_loaded(&self, topic: &Topic) {
        let cell = {
            let mut loaded = self
                .loaded
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // Looked up before inserting: this runs on every publish, and `entry` would copy
            // the name each time.
            match loaded.get(topic.name()) {
                Some(cell) => Arc::clone(cell),
                None => Arc::clone(loaded.entry(topic.name().to_owned()).or_default()),
            }
        };
        cell.get_or_init(|| self.rebuild(topic.clone())).await;
    }

    /// Remembers the keys of the topic's records appended within the window, reading at most
    /// `max_entries` records back from its end.
    async fn rebuild(&self, topic: Topic) {
        let window_ms = i64::try_from(self.window.as_millis()).unwrap_or(i64::MAX);
        let stats = topic.stats();
        let mut from = stats
            .first_offset
            .max(stats.next_offset.saturating_sub(self.max_entries as u64));
        let end = stats.next_offset;
        let mut n_remembered = 0usize;
        while from < end {
            let reading = topic.clone();
            let horizon = now_ms().saturating_sub(window_ms);
            let read = tokio::task::spawn_blocking(move || {
                let records = reading.read(from, REBUILD_CHUNK_RECORDS, REBUILD_CHUNK_BYTES)?;
                let keys: Vec<(DedupKey, u64, i64)> = records
                    .iter()
                    .filter(|record| record.timestamp_ms > horizon)
                    .filter_map(|record| {
                        trellis_cloudevents::stored_source_and_id(&record.payload)
                            .ok()
                            .map(|(source, id)| {
                                (
                                    DedupKey::new(&source, &id),
                                    record.offset,
                                    record.timestamp_ms,
                                )
                            })
                    })
                    .collect();
                let next = records.last().map(|record| record.offset + 1);
                Ok::<_, LogError>((keys, next))
            })
            .await;
            let (keys, next) = match read {
                Ok(Ok(read)) => read,
                Ok(Err(error)) => {
                    tracing::warn!(
                        message = "Rebuilding the duplicate index stopped early; some duplicates may be stored again.",
                        topic = topic.name(),
                        error = %error_chain(&error)
                    );
                    break;
                }
                Err(error) => {
                    tracing::warn!(message = "Rebuilding the duplicate index failed.", topic = topic.name(), error = %error);
                    break;
                }
            };
            let now = now_ms();
            let mut index = lock(&self.index);
            n_remembered += keys.len();
            for (key, offset, at_ms) in keys {
                index.remember(topic.name(), key, offset, at_ms, now);
            }
            self.remembered.set(&index);
            drop(index);
            match next {
                Some(next) => from = next,
                None => break,
            }
        }
        tracing::debug!(
            message = "Duplicate index rebuilt from the log.",
            topic = topic.name(),
            keys = n_remembered
        );
    }
}

async fn append(
    topic: &Topic,
    records: Vec<Bytes>,
    metrics: PublishMetrics,
    then: Option<oneshot::Sender<()>>,
) -> Result<trellis_log::AppendAck, ApiError> {
    let n_bytes: u64 = records.iter().map(|record| record.len() as u64).sum();
    let submitted = topic.submit(records).await;
    if let Some(then) = then {
        let _ = then.send(());
    }
    let ack = async { submitted?.await }
        .await
        .map_err(|error| match error {
            LogError::NoSuchTopic(_) => ApiError::unavailable(
                "the topic was deleted while the events were being stored; nothing was stored",
            ),
            LogError::Closed => {
                ApiError::unavailable("Trellis is shutting down; nothing was stored")
            }
            other => ApiError::internal("storing events", &other),
        })?;
    let counters = metrics.topic(topic.name());
    counters.requests.increment(1);
    counters.events.increment(ack.n_records);
    counters.bytes.increment(n_bytes);
    Ok(ack)
}
