//! Redrive: delivers a subscription's dead letters again. It reads the dead-letter topic from
//! where the last redrive stopped up to its end at the time of the request, strips the `trellis*`
//! extensions so the receiver sees the original event, and delivers through an engine of its
//! own (the subscription's sink and delivery settings, its own circuit and concurrency state, so
//! a redrive never skews the live subscription's). A record that fails again is dead-lettered
//! again, past the redrive's end, with its original topic and offset.
//!
//! The cursor (`/redrive/<name>`) moves only over the contiguous prefix of redriven records that
//! ended, as the dispatcher's committed offset does, so a crash mid-redrive repeats, never skips.
//! An unavailable event store pauses the redrive (reads and dead letters wait for it); it goes
//! on by itself once the store is back.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use trellis_cloudevents::{CloudEvent, ExtensionValue};
use trellis_delivery::engine::{Engine, Record};
use trellis_delivery::offsets::OffsetTracker;
use trellis_meta::MetadataStore;
use trellis_storage::StorageError;

use super::dead_letter::DeadLetterTarget;
use super::dispatcher::Outcome;
use crate::error::error_chain;
use crate::event_store::{StorageWait, until_available};

/// Redriven records out at once.
const MAX_IN_FLIGHT: usize = 64;

/// What a running or finished redrive has done, for the status API.
#[derive(Debug, Default)]
pub(crate) struct RedriveStats {
    pub(crate) from: AtomicU64,
    pub(crate) to: AtomicU64,
    pub(crate) delivered: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) running: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Serialize)]
pub(crate) struct RedriveView {
    pub(crate) running: bool,
    pub(crate) from: u64,
    pub(crate) to: u64,
    pub(crate) delivered: u64,
    pub(crate) dead_lettered: u64,
}

impl RedriveStats {
    pub(crate) fn view(&self) -> RedriveView {
        RedriveView {
            running: self.running.load(Ordering::Relaxed),
            from: self.from.load(Ordering::Relaxed),
            to: self.to.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
        }
    }
}

pub(crate) struct Redrive {
    pub(crate) name: String,
    pub(crate) dead_letters: crate::event_store::TopicHandle,
    pub(crate) dead_letter: DeadLetterTarget,
    pub(crate) engine: Engine,
    pub(crate) outcomes: mpsc::UnboundedReceiver<Outcome>,
    pub(crate) meta: Arc<dyn MetadataStore>,
    pub(crate) cursor_key: String,
    /// The dead-letter topic's incarnation, stored with the cursor.
    pub(crate) incarnation: crate::topics::Incarnation,
    pub(crate) from: u64,
    pub(crate) to: u64,
    pub(crate) stop: CancellationToken,
    pub(crate) stats: Arc<RedriveStats>,
}

impl Redrive {
    pub(crate) async fn run(mut self) {
        self.stats.running.store(true, Ordering::Relaxed);
        let mut tracker = OffsetTracker::new(self.from);
        let mut next = self.from;
        let mut deliveries = JoinSet::new();
        // The original topic and offset of each redriven record, by dead-letter offset.
        let mut origins = std::collections::HashMap::new();
        loop {
            let room = MAX_IN_FLIGHT.saturating_sub(deliveries.len());
            if next < self.to && room > 0 {
                let Some(read) = self.read(next, room).await else {
                    break;
                };
                let records = match read {
                    Ok(records) => records,
                    Err(StorageError::Damaged { range, .. }) => {
                        // Damaged dead letters cannot be redriven: say so and go past them.
                        tracing::warn!(message = "Damaged dead letters are skipped by the redrive.", subscription = %self.name, topic = self.dead_letters.name(), first_offset = range.first_offset, next_offset = range.next_offset, reason = %range.reason);
                        let last = range.next_offset.min(self.to).saturating_sub(1);
                        if tracker.track(last).is_ok()
                            && let Ok(Some(cursor)) = tracker.complete(last)
                        {
                            self.persist(cursor).await;
                        }
                        next = range.next_offset;
                        continue;
                    }
                    Err(error) => {
                        tracing::error!(message = "Reading dead letters failed; the redrive stops.", subscription = %self.name, error = %error_chain(&error));
                        break;
                    }
                };
                if records.is_empty() {
                    // Retention removed the rest of the range: nothing left to redrive.
                    next = self.to;
                }
                for record in records
                    .into_iter()
                    .take_while(|record| record.offset < self.to)
                {
                    next = record.offset + 1;
                    if tracker.track(record.offset).is_err() {
                        continue;
                    }
                    let Ok(mut event) = CloudEvent::from_stored(&record.payload) else {
                        let _ = tracker.complete(record.offset);
                        continue;
                    };
                    if super::dead_letter::is_damaged_marker(&event) {
                        // It stands for a record that no longer exists: nothing to deliver.
                        let _ = tracker.complete(record.offset);
                        continue;
                    }
                    origins.insert(record.offset, strip(&mut event));
                    let engine = self.engine.clone();
                    let topic = self.dead_letters.name().to_owned();
                    deliveries.spawn(async move {
                        engine
                            .deliver(Record {
                                topic,
                                offset: record.offset,
                                event,
                            })
                            .await;
                    });
                }
            }
            // Done once every record read has ended. A finished delivery task is not enough:
            // its outcome may still be in the channel.
            if next >= self.to && tracker.in_flight() == 0 {
                break;
            }
            tokio::select! {
                () = self.stop.cancelled() => break,
                Some(outcome) = self.outcomes.recv() => {
                    let offset = match outcome {
                        Outcome::Delivered(offset) => {
                            self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                            offset
                        }
                        Outcome::Failed(failure) if !failure.class.is_final() => continue,
                        Outcome::Failed(failure) => {
                            let offset = failure.context.offset;
                            let origin = origins.get(&offset).cloned().unwrap_or_default();
                            if !self.dead_letter_again(offset, &failure, origin).await {
                                break;
                            }
                            self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                            offset
                        }
                    };
                    origins.remove(&offset);
                    if let Ok(Some(cursor)) = tracker.complete(offset) {
                        self.persist(cursor).await;
                    }
                }
                Some(_) = deliveries.join_next(), if !deliveries.is_empty() => {}
            }
        }
        deliveries.abort_all();
        while deliveries.join_next().await.is_some() {}
        self.persist(tracker.committable()).await;
        self.stats.running.store(false, Ordering::Relaxed);
    }

    /// Reads dead letters, waiting out an unavailable store; `None` if stopped first.
    async fn read(
        &self,
        from: u64,
        max_records: usize,
    ) -> Option<Result<Vec<trellis_storage::Record>, StorageError>> {
        let mut storage = StorageWait::new(format!("redrive of subscription {:?}", self.name));
        until_available(
            self.dead_letter.topics.store().as_ref(),
            &mut storage,
            &self.stop,
            &|_| {},
            || crate::event_store::read_records(self.dead_letters.as_ref(), from, max_records),
        )
        .await
    }

    /// Appends the record to the dead-letter topic again, with why it failed this time but its
    /// original topic and offset; `false` if stopped before that was durable.
    async fn dead_letter_again(
        &self,
        offset: u64,
        failure: &trellis_delivery::report::DeliveryFailure,
        origin: Origin,
    ) -> bool {
        let records = match self.read(offset, 1).await {
            None => return false,
            Some(Ok(records)) => records,
            Some(Err(error)) => {
                tracing::error!(message = "Reading a dead letter to dead-letter it again failed; it is skipped.", subscription = %self.name, offset, error = %error_chain(&error));
                Vec::new()
            }
        };
        let Some(record) = records.into_iter().find(|record| record.offset == offset) else {
            return true;
        };
        let Ok(mut event) = CloudEvent::from_stored(&record.payload) else {
            return true;
        };
        strip(&mut event);
        super::dead_letter::annotate(&mut event, &self.name, failure);
        for (key, value) in origin.0 {
            event.extensions.insert(key, value);
        }
        self.dead_letter
            .append(&self.name, &event, &self.stop, &|_| {})
            .await
    }

    async fn persist(&self, cursor: u64) {
        if let Err(error) = self
            .meta
            .put(
                &self.cursor_key,
                crate::stored_offset::encode(cursor, &self.incarnation),
            )
            .await
        {
            tracing::warn!(message = "Storing the redrive position failed.", subscription = %self.name, error = %error_chain(&error));
        }
    }
}

/// Where a dead letter originally came from: its `trellistopic` and `trellisoffset`.
#[derive(Debug, Clone, Default)]
struct Origin(Vec<(String, ExtensionValue)>);

/// Removes the extensions a dead letter carries, returning those that say where it came from.
fn strip(event: &mut CloudEvent) -> Origin {
    let mut origin = Vec::new();
    for key in ["trellistopic", "trellisoffset"] {
        if let Some(value) = event.extensions.get(key) {
            origin.push((key.to_owned(), value.clone()));
        }
    }
    event
        .extensions
        .retain(|key, _| !super::dead_letter::EXTENSIONS.contains(&key.as_str()));
    Origin(origin)
}
