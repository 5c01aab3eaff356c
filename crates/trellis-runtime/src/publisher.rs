//! The publish core shared by HTTP and gRPC: validated, encoded events in; per event the offset
//! it was stored at, or the offset of the copy stored before it (a duplicate), out.
//!
//! Deduplication is the event store's: each record carries the digest of its event's
//! `(source, id)` (`event_store::event_dedup_key`), and the store answers "stored at N" or
//! "duplicate of N". The runtime keeps no index of its own.

use bytes::Bytes;
use tokio::sync::oneshot;
use trellis_cloudevents::{CloudEvent, EventError, EventLimits};
use trellis_storage::{AppendOutcome, AppendRecord, DedupKey, StorageError};

use crate::error::ApiError;
use crate::event_store::{TopicHandle, event_dedup_key};
use crate::metrics::PublishMetrics;
use crate::topics::TopicRegistry;

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
            key: event_dedup_key(&event.source, &event.id),
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

pub(crate) struct Publisher {
    topics: TopicRegistry,
    metrics: PublishMetrics,
}

impl Publisher {
    pub(crate) fn new(topics: TopicRegistry, metrics: PublishMetrics) -> Publisher {
        Publisher { topics, metrics }
    }

    /// Stores the events of one batch that are not duplicates, as one append, and answers for
    /// every event in order.
    pub(crate) async fn publish(
        &self,
        topic_name: &str,
        events: Vec<Outgoing>,
    ) -> Result<Vec<Published>, ApiError> {
        self.publish_in_turn(topic_name, events, Turn::default())
            .await
    }

    /// [`Publisher::publish`] for one of a sequence of batches that must be stored in order
    /// (a publish stream): waits for the previous batch's turn before it submits, and passes
    /// the turn on once its records have their place in the topic's order.
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
        // Known to be unreachable: answer at once rather than wait out the store's timeout,
        // and send nothing that a reconnecting client might deliver later.
        if !self.topics.store().available() {
            return Err(ApiError::unavailable(
                "the event store is unavailable (not connected); these events were not stored. Send them again with the same ids shortly",
            ));
        }
        let topic = self.topics.for_publish(topic_name).await?;
        let sizes: Vec<u64> = events
            .iter()
            .map(|event| event.record.len() as u64)
            .collect();
        let records = events
            .into_iter()
            .map(|event| AppendRecord::with_key(event.record, event.key))
            .collect();
        let outcomes = append(&topic, records, then).await?;
        let mut n_stored = 0u64;
        let mut n_bytes = 0u64;
        let mut n_duplicates = 0u64;
        let published = outcomes
            .iter()
            .zip(&sizes)
            .map(|(outcome, size)| match *outcome {
                AppendOutcome::Stored(offset) => {
                    n_stored += 1;
                    n_bytes += size;
                    Published {
                        offset,
                        duplicate: false,
                    }
                }
                AppendOutcome::Duplicate(offset) => {
                    n_duplicates += 1;
                    Published {
                        offset,
                        duplicate: true,
                    }
                }
            })
            .collect();
        let counters = self.metrics.topic(topic.name());
        if n_stored > 0 {
            counters.requests.increment(1);
            counters.events.increment(n_stored);
            self.metrics.count_stored(n_stored);
            counters.bytes.increment(n_bytes);
        }
        if n_duplicates > 0 {
            counters.duplicates.increment(n_duplicates);
        }
        Ok(published)
    }
}

async fn append(
    topic: &TopicHandle,
    records: Vec<AppendRecord>,
    then: Option<oneshot::Sender<()>>,
) -> Result<Vec<AppendOutcome>, ApiError> {
    let submitted = topic.submit(records).await;
    if let Some(then) = then {
        let _ = then.send(());
    }
    async { submitted?.await }
        .await
        .map_err(|error| match error {
            StorageError::NoSuchTopic(_) => ApiError::unavailable(
                "the topic was deleted while the events were being stored; nothing was stored",
            ),
            StorageError::Closed => {
                ApiError::unavailable("Trellis is shutting down; nothing was stored")
            }
            // The store may have taken some or all of the events before it failed (a remote
            // one can store what it was sent after it stopped answering), so the client is told
            // what is safe, not what cannot be known.
            StorageError::Unavailable(reason) => ApiError::unavailable(format!(
                "the event store is unavailable ({reason}); the events may or may not have been stored. Send them again with the same ids: that is safe, as an event already stored is answered as a duplicate with its first offset"
            )),
            // Within max_event_bytes but over what the backend takes (JetStream's max_payload):
            // the limit is the operator's to align, the answer the same as for max_event_bytes.
            StorageError::RecordTooLarge { size, max } => ApiError::too_large(format!(
                "an event takes {size} bytes as stored, more than the event store accepts ({max} bytes); nothing was stored"
            )),
            other => ApiError::internal("storing events", &other),
        })
}
