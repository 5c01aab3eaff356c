//! One subscription's reading loop: reads its topic from the committed offset, hands records to
//! the delivery engine, dead-letters records that fail for good, and commits only the contiguous
//! prefix of records that ended.
//!
//! Invariants:
//! - A record is committed only after its callback said delivered, or after its dead-letter
//!   append is durable. So after a crash, everything past the committed offset is delivered again
//!   (at-least-once) and nothing is skipped.
//! - A cancelled record (shutdown) is never committed and never dead-lettered.
//! - Reading pauses while `max_in_flight` records are out, which bounds memory.
//! - A damaged record never stops delivery: it is dead-lettered as a marker
//!   (`trellisfailure: damaged`) and committed past. A read error the dispatcher cannot go past
//!   shows as `state: stopped` with its reason until a resume (or pause) retries.
//! - An unavailable event store never stops delivery: the dispatcher shows
//!   `state: waiting_for_storage`, tries again with growing waits (up to 2 s), and goes on by
//!   itself once the store answers. Records in flight meanwhile end as usual; a failed one
//!   waits for the store to be dead-lettered. No failed store call moves the committed offset.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use trellis_cloudevents::CloudEvent;
use trellis_cluster::Fence;
use trellis_delivery::config::BatchSpec;
use trellis_delivery::engine::{Engine, Record};
use trellis_delivery::offsets::OffsetTracker;
use trellis_delivery::report::{DeliveryCallbacks, DeliveryFailure, DeliveryReport};
use trellis_meta::MetadataStore;

use crate::ownership::fenced_put;
use trellis_storage::{DamagedRange, EventStore, StorageError};

use super::dead_letter::DeadLetterTarget;
use crate::error::error_chain;
use crate::event_store::{NOT_CONNECTED, StorageWait, until_available};

/// What a dispatcher hands its records to: a delivery engine (a webhook subscription's, or an
/// HTTP sink connector's), or a connector's sink. Either way each handed record's outcome comes
/// back as an [`Outcome`] on the dispatcher's channel, and the dispatcher knows nothing else of it.
pub(crate) trait Deliver: Send + Sync + 'static {
    fn deliver(&self, record: Record) -> BoxFuture<'static, ()>;
    fn deliver_batch(&self, records: Vec<Record>) -> BoxFuture<'static, ()>;
    /// Called once per commit interval.
    fn close_idle_connections(&self) {}
}

impl Deliver for Engine {
    fn deliver(&self, record: Record) -> BoxFuture<'static, ()> {
        let engine = self.clone();
        // Boxed anyway: a task keeps its future inline and copies it whole as it starts and
        // ends, and a delivery's state (retries, timers, the exchange) is kilobytes.
        Box::pin(async move { engine.deliver(record).await })
    }

    fn deliver_batch(&self, records: Vec<Record>) -> BoxFuture<'static, ()> {
        let engine = self.clone();
        Box::pin(async move { engine.deliver_batch(records).await })
    }

    fn close_idle_connections(&self) {
        Engine::close_idle_connections(self);
    }
}

/// What a record that failed for good does to its dispatcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnFailure {
    /// Dead-letter it and go on (subscriptions; connectors with `errors.tolerance: all`).
    DeadLetter,
    /// Stop the dispatcher with the failure as its reason, the record uncommitted (connectors
    /// with `errors.tolerance: none`), so a restart delivers it again.
    Stop,
}

/// What the engine's callbacks tell the dispatcher.
pub(crate) enum Outcome {
    Delivered(u64),
    Failed(Box<DeliveryFailure>),
}

/// The engine's callbacks for a dispatcher: hand each outcome to its loop.
pub(crate) struct ToDispatcher(pub(crate) mpsc::UnboundedSender<Outcome>);

impl DeliveryCallbacks for ToDispatcher {
    fn on_success(&self, report: DeliveryReport) {
        let _ = self.0.send(Outcome::Delivered(report.context.offset));
    }

    fn on_exception(&self, failure: DeliveryFailure) {
        let _ = self.0.send(Outcome::Failed(Box::new(failure)));
    }
}

/// Live figures the status API shows.
#[derive(Debug, Default)]
pub(crate) struct DispatcherStats {
    pub(crate) committed: AtomicU64,
    /// Whether `committed` holds the offset read from the metadata store, rather than the 0 it
    /// starts at: until then the status says `starting`, not a wrong offset and lag.
    pub(crate) offset_loaded: AtomicBool,
    pub(crate) dead_lettered: AtomicU64,
    /// The next offset to read.
    pub(crate) position: AtomicU64,
    /// Why the dispatcher stopped reading, while it waits to be resumed.
    // std Mutex: held only to set, clear or clone the reason.
    pub(crate) stopped: std::sync::Mutex<Option<String>>,
    /// Why the subscription waits for the event store, while it cannot be reached.
    // std Mutex: held only to set, clear or clone the reason.
    pub(crate) storage: std::sync::Mutex<Option<String>>,
    /// Where a connector counts its offset commits; subscriptions have none.
    pub(crate) commit_metrics: Option<CommitMetrics>,
}

/// A sink connector's offset commit series, as its owner labelled them.
#[derive(Debug)]
pub(crate) struct CommitMetrics {
    pub(crate) commits: metrics::Counter,
    pub(crate) failures: metrics::Counter,
    pub(crate) seconds: metrics::Histogram,
}

impl DispatcherStats {
    pub(crate) fn stopped_reason(&self) -> Option<String> {
        self.stopped
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn storage_reason(&self) -> Option<String> {
        self.storage
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Shows (or clears, with `None`) that the subscription waits for the event store, and why.
    pub(crate) fn set_waiting_for_storage(&self, reason: Option<String>) {
        let shown = reason.map(|reason| {
            format!("the event store is unavailable ({reason}); delivery waits and goes on by itself once it is back")
        });
        *self
            .storage
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = shown;
    }
}

/// Dead-letter markers for damaged records written in one append.
const MARKERS_PER_APPEND: u64 = 512;

/// Why `Dispatcher::run` returned.
/// Each carries the outcomes channel back, for the next dispatcher of the subscription.
pub(crate) enum Ended {
    Stopped(mpsc::UnboundedReceiver<Outcome>),
    /// The topic was deleted: start again on its next incarnation.
    TopicDeleted(mpsc::UnboundedReceiver<Outcome>),
    /// A record failed for good under [`OnFailure::Stop`]: why.
    Failed(String, mpsc::UnboundedReceiver<Outcome>),
}

pub(crate) struct Dispatcher {
    pub(crate) name: String,
    pub(crate) topic: crate::event_store::TopicHandle,
    /// The store the topic lives in, asked whether it can be reached before a retry.
    pub(crate) store: Arc<dyn EventStore>,
    /// The committed offset is stored with it (see `stored_offset.rs`).
    pub(crate) incarnation: crate::topics::Incarnation,
    /// Created on first use with the default topic settings.
    pub(crate) dead_letter: DeadLetterTarget,
    pub(crate) meta: Arc<dyn MetadataStore>,
    pub(crate) offset_key: String,
    pub(crate) target: Arc<dyn Deliver>,
    pub(crate) on_failure: OnFailure,
    pub(crate) outcomes: mpsc::UnboundedReceiver<Outcome>,
    pub(crate) start: u64,
    pub(crate) max_in_flight: usize,
    pub(crate) commit_interval: Duration,
    pub(crate) paused: watch::Receiver<bool>,
    /// Batch mode: `None` sends each record on its own. Followed live (PATCH).
    pub(crate) batch: watch::Receiver<Option<BatchSpec>>,
    pub(crate) stop: CancellationToken,
    pub(crate) stats: Arc<DispatcherStats>,
    /// This replica's ownership of the subscription: records are handed out and offsets
    /// committed only while it holds.
    pub(crate) fence: Fence,
}

/// What settling an outcome did.
enum Settled {
    Go,
    /// The dispatcher was stopped before a dead letter was durable.
    Stopped,
    /// A record failed for good under [`OnFailure::Stop`]: why.
    Failed(String),
}

/// Records waiting to fill a batch, and when the batch goes out regardless.
#[derive(Default)]
struct Pending {
    records: Vec<Record>,
    deadline: Option<tokio::time::Instant>,
}

impl Pending {
    async fn due(&self) {
        match self.deadline {
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            None => std::future::pending().await,
        }
    }
}

impl Dispatcher {
    pub(crate) async fn run(mut self) -> Ended {
        let mut tracker = OffsetTracker::new(self.start);
        let mut next = self.start;
        let mut deliveries = JoinSet::new();
        let mut persisted = self.start;
        self.stats.committed.store(self.start, Ordering::Relaxed);
        self.stats.offset_loaded.store(true, Ordering::Release);
        let mut commit_tick = tokio::time::interval(self.commit_interval);
        commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pending = Pending::default();
        // Reading failed in a way the dispatcher cannot go past; a resume (or pause) retries.
        let mut stopped = false;
        let mut topic_deleted = false;
        let mut storage = StorageWait::new(format!("subscription {:?}", self.name));
        // Set while the event store is unavailable: nothing is read before then.
        let mut storage_retry: Option<tokio::time::Instant> = None;
        // Set when a record failed for good under `OnFailure::Stop`.
        let mut failed: Option<String> = None;
        'run: loop {
            let paused = *self.paused.borrow();
            // Records tracked and not ended, batched or in flight: the memory bound.
            let room = self.max_in_flight.saturating_sub(tracker.in_flight());
            if room == 0 && !pending.records.is_empty() {
                // A batch bigger than the in-flight bound could never fill: send what there is.
                self.send_batch(std::mem::take(&mut pending.records), &mut deliveries);
            }
            let mut caught_up = false;
            // Read in batches: refilling one slot at a time would read the log once per
            // delivery. Read when a good share of the slots is free, or nothing is in flight.
            let worth_reading = room >= (self.max_in_flight / 4).max(1) || tracker.in_flight() == 0;
            // A replica that cannot prove it still owns the subscription hands out nothing;
            // its term is about to be stopped.
            let owned = self.fence.holds();
            if owned && !paused && !stopped && storage_retry.is_none() && room > 0 && worth_reading
            {
                let read = self.read(next, room).await;
                if !matches!(read, Err(StorageError::Unavailable(_))) && storage.waiting() {
                    storage.succeeded();
                    self.stats.set_waiting_for_storage(None);
                }
                match read {
                    Ok(records) if records.is_empty() => caught_up = true,
                    Ok(records) => {
                        for record in records {
                            next = record.offset + 1;
                            self.dispatch(record, &mut tracker, &mut deliveries, &mut pending);
                        }
                        self.stats.position.store(next, Ordering::Relaxed);
                        continue;
                    }
                    Err(StorageError::OffsetTruncated { first_offset, .. }) => {
                        tracing::warn!(
                            message = "Records the subscription had not delivered were removed by retention; skipping to the first record left.",
                            subscription = %self.name,
                            from = next,
                            to = first_offset,
                        );
                        next = first_offset;
                        continue;
                    }
                    Err(StorageError::Damaged { range, .. }) => {
                        if !self.skip_damaged(&range, &mut tracker).await {
                            break;
                        }
                        next = range.next_offset;
                        self.stats.position.store(next, Ordering::Relaxed);
                        continue;
                    }
                    Err(StorageError::Closed) => break,
                    Err(StorageError::NoSuchTopic(_)) => {
                        topic_deleted = true;
                        break;
                    }
                    Err(StorageError::Unavailable(reason)) => {
                        storage_retry = Some(self.wait_for_storage(&mut storage, reason));
                    }
                    Err(error) => {
                        let reason = error_chain(&error);
                        tracing::error!(message = "Reading the topic failed; the subscription stops until it is resumed.", subscription = %self.name, offset = next, error = %reason);
                        self.set_stopped(Some(format!("reading offset {next} failed: {reason}")));
                        stopped = true;
                    }
                }
            }
            tokio::select! {
                () = self.stop.cancelled() => break,
                Some(outcome) = self.outcomes.recv() => {
                    // This one, and whatever else ended meanwhile, in the same wake-up.
                    let mut queued = Some(outcome);
                    while let Some(outcome) = queued {
                        match self.settle(outcome, &mut tracker).await {
                            Settled::Go => {}
                            Settled::Stopped => break 'run,
                            Settled::Failed(reason) => {
                                failed = Some(reason);
                                break 'run;
                            }
                        }
                        queued = self.outcomes.try_recv().ok();
                    }
                    // Reap ended delivery tasks without waiting on them: each sent its
                    // outcome before it ended, so this wake-up is the one to clear them in,
                    // and no task's end needs a wake-up of its own.
                    while deliveries.try_join_next().is_some() {}
                }
                waited = self.topic.wait_for(next), if caught_up => {
                    if let Err(StorageError::Unavailable(reason)) = waited {
                        storage_retry = Some(self.wait_for_storage(&mut storage, reason));
                    }
                }
                () = sleep_until(storage_retry), if storage_retry.is_some() => {
                    // Tried again only once the store says it can be reached.
                    storage_retry = if self.store.available() {
                        None
                    } else if paused {
                        Some(tokio::time::Instant::now() + storage.failed(NOT_CONNECTED))
                    } else {
                        Some(self.wait_for_storage(&mut storage, NOT_CONNECTED.to_owned()))
                    };
                }
                () = pending.due(), if !pending.records.is_empty() => {
                    self.send_batch(std::mem::take(&mut pending.records), &mut deliveries);
                }
                _ = self.paused.changed() => {
                    if stopped {
                        stopped = false;
                        self.set_stopped(None);
                    }
                    // Paused, nothing reads to clear it; resumed, the next read sets it again
                    // if the store is still away.
                    self.stats.set_waiting_for_storage(None);
                }
                // A paused subscription reads nothing, so it learns of a delete here.
                gone = self.topic.wait_for(u64::MAX), if paused && storage_retry.is_none() => {
                    match gone {
                        // Not a reason to end: wait as a reading dispatcher would, but keep
                        // showing `paused`, which no read would clear.
                        Err(StorageError::Unavailable(reason)) => {
                            storage_retry =
                                Some(tokio::time::Instant::now() + storage.failed(&reason));
                        }
                        gone => {
                            topic_deleted = matches!(gone, Err(StorageError::NoSuchTopic(_)));
                            break;
                        }
                    }
                }
                _ = commit_tick.tick() => {
                    while deliveries.try_join_next().is_some() {}
                    self.target.close_idle_connections();
                    persisted = self.persist(tracker.committable(), persisted).await;
                    self.publish_gauges(tracker.committable()).await;
                }
            }
        }
        // Stop delivering: aborted deliveries report `Cancelled` and stay uncommitted. Records
        // that ended before the abort are settled first, so their progress is kept.
        deliveries.abort_all();
        while deliveries.join_next().await.is_some() {}
        while let Ok(outcome) = self.outcomes.try_recv() {
            match self.settle(outcome, &mut tracker).await {
                Settled::Go => {}
                Settled::Stopped => break,
                Settled::Failed(reason) => {
                    failed = Some(reason);
                }
            }
        }
        if topic_deleted {
            // Its offsets count in no topic now: nothing to store.
            return Ended::TopicDeleted(self.outcomes);
        }
        self.persist(tracker.committable(), persisted).await;
        match failed {
            Some(reason) => Ended::Failed(reason, self.outcomes),
            None => Ended::Stopped(self.outcomes),
        }
    }

    /// Shows that the store is unavailable and returns when to try again.
    fn wait_for_storage(&self, storage: &mut StorageWait, reason: String) -> tokio::time::Instant {
        let delay = storage.failed(&reason);
        self.stats.set_waiting_for_storage(Some(reason));
        tokio::time::Instant::now() + delay
    }

    /// Shows (or clears) why the dispatcher stopped, in the status and a gauge.
    fn set_stopped(&self, reason: Option<String>) {
        let gauge = f64::from(u8::from(reason.is_some()));
        metrics::gauge!("trellis_subscription_stopped", "subscription" => self.name.clone())
            .set(gauge);
        *self
            .stats
            .stopped
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = reason;
    }

    /// Dead-letters a marker for each damaged record in `range` (they cannot be delivered) and
    /// commits past them; `false` if the dispatcher was stopped before the markers were durable
    /// (the records are met again after a restart).
    async fn skip_damaged(&self, range: &DamagedRange, tracker: &mut OffsetTracker) -> bool {
        tracing::warn!(
            message = "Damaged records cannot be delivered; each is dead-lettered as a marker and the subscription goes on.",
            subscription = %self.name,
            topic = self.topic.name(),
            first_offset = range.first_offset,
            next_offset = range.next_offset,
            reason = %range.reason,
        );
        let mut from = range.first_offset;
        while from < range.next_offset {
            let to = range
                .next_offset
                .min(from.saturating_add(MARKERS_PER_APPEND));
            let markers: Vec<CloudEvent> = (from..to)
                .map(|offset| {
                    super::dead_letter::damaged_marker(
                        &self.name,
                        self.topic.name(),
                        offset,
                        &range.reason,
                    )
                })
                .collect();
            let show = |reason| self.stats.set_waiting_for_storage(reason);
            if !self
                .dead_letter
                .append_all(&self.name, &markers, &self.stop, &show)
                .await
            {
                return false;
            }
            // Tracking the last offset of the run counts the ones before it as ended too.
            if tracker.track(to - 1).is_ok()
                && let Ok(Some(committable)) = tracker.complete(to - 1)
            {
                self.stats.committed.store(committable, Ordering::Relaxed);
            }
            let n_markers = to - from;
            self.stats
                .dead_lettered
                .fetch_add(n_markers, Ordering::Relaxed);
            let labels = [("subscription", self.name.clone())];
            metrics::counter!("trellis_subscription_dead_lettered_total", &labels)
                .increment(n_markers);
            metrics::counter!("trellis_subscription_damaged_records_total", &labels)
                .increment(n_markers);
            from = to;
        }
        true
    }

    fn dispatch(
        &self,
        record: trellis_storage::Record,
        tracker: &mut OffsetTracker,
        deliveries: &mut JoinSet<()>,
        pending: &mut Pending,
    ) {
        if let Err(error) = tracker.track(record.offset) {
            tracing::error!(message = "Offset bookkeeping refused a record; it is skipped.", subscription = %self.name, offset = record.offset, error = %error);
            return;
        }
        let event = match CloudEvent::from_stored(&record.payload) {
            Ok(event) => event,
            Err(error) => {
                // The log only holds events Trellis validated; an unreadable one is damage the
                // frame checksum did not catch. Skipping it is the only way forward.
                tracing::error!(message = "A stored event is unreadable; it is skipped.", subscription = %self.name, offset = record.offset, error = %error);
                let _ = tracker.complete(record.offset);
                return;
            }
        };
        let record = Record {
            topic: self.topic.name().to_owned(),
            offset: record.offset,
            event,
        };
        let batch = self.batch.borrow().clone();
        match batch {
            None => {
                deliveries.spawn(self.target.deliver(record));
            }
            Some(batch) => {
                if pending.records.is_empty() {
                    pending.deadline = Some(
                        tokio::time::Instant::now() + Duration::from_millis(batch.max_wait_ms),
                    );
                }
                pending.records.push(record);
                if pending.records.len() >= batch.max_events {
                    self.send_batch(std::mem::take(&mut pending.records), deliveries);
                }
            }
        }
    }

    fn send_batch(&self, records: Vec<Record>, deliveries: &mut JoinSet<()>) {
        deliveries.spawn(self.target.deliver_batch(records));
    }

    /// Accounts for one ended record.
    async fn settle(&mut self, outcome: Outcome, tracker: &mut OffsetTracker) -> Settled {
        let offset = match outcome {
            Outcome::Delivered(offset) => offset,
            Outcome::Failed(failure) if !failure.class.is_final() => return Settled::Go,
            Outcome::Failed(failure) if self.on_failure == OnFailure::Stop => {
                let offset = failure.context.offset;
                tracing::error!(message = "A record failed for good and errors.tolerance is none: stopping, the record uncommitted.", subscription = %self.name, offset, reason = %failure.reason);
                return Settled::Failed(format!(
                    "the record at offset {offset} of topic {:?} failed for good: {}",
                    failure.context.topic, failure.reason
                ));
            }
            Outcome::Failed(failure) => {
                if !self.dead_letter(&failure).await {
                    return Settled::Stopped;
                }
                self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("trellis_subscription_dead_lettered_total", "subscription" => self.name.clone()).increment(1);
                failure.context.offset
            }
        };
        if let Ok(Some(committable)) = tracker.complete(offset) {
            self.stats.committed.store(committable, Ordering::Relaxed);
        }
        Settled::Go
    }

    /// Appends the failed record to the dead-letter topic, retrying until it is durable;
    /// `false` if the dispatcher was stopped first (the record then stays uncommitted). Both
    /// the read of the record and the append wait out an unavailable store.
    async fn dead_letter(&self, failure: &DeliveryFailure) -> bool {
        let offset = failure.context.offset;
        let mut storage = StorageWait::new(format!("subscription {:?}", self.name));
        let show = |reason| self.stats.set_waiting_for_storage(reason);
        let Some(read) =
            until_available(self.store.as_ref(), &mut storage, &self.stop, &show, || {
                self.read(offset, 1)
            })
            .await
        else {
            return false;
        };
        match dead_letter_event(read.ok(), offset, &self.name, failure) {
            Some(event) => {
                self.dead_letter
                    .append(&self.name, &event, &self.stop, &show)
                    .await
            }
            None => true,
        }
    }

    async fn read(
        &self,
        from: u64,
        max_records: usize,
    ) -> Result<Vec<trellis_storage::Record>, StorageError> {
        crate::event_store::read_records(self.topic.as_ref(), from, max_records).await
    }

    async fn publish_gauges(&self, committed: u64) {
        let labels = [("subscription", self.name.clone())];
        metrics::gauge!("trellis_subscription_committed_offset", &labels).set(committed as f64);
        // Once per commit interval, not per record: asking the store is cheap enough here.
        if let Ok(info) = self.topic.info().await {
            metrics::gauge!("trellis_subscription_lag", &labels)
                .set(info.next_offset.saturating_sub(committed) as f64);
        }
    }

    /// Stores the committed offset if it moved; returns what is stored now.
    async fn persist(&self, committable: u64, persisted: u64) -> u64 {
        if committable == persisted {
            return persisted;
        }
        let value = crate::stored_offset::encode(committable, &self.incarnation);
        let started = std::time::Instant::now();
        let stored = fenced_put(&self.fence, self.meta.as_ref(), &self.offset_key, value).await;
        if let Some(metrics) = &self.stats.commit_metrics {
            metrics.seconds.record(started.elapsed().as_secs_f64());
            match &stored {
                Ok(true) => metrics.commits.increment(1),
                Ok(false) | Err(_) => metrics.failures.increment(1),
            }
        }
        match stored {
            Ok(true) => committable,
            Ok(false) => {
                tracing::warn!(message = "Not storing the committed offset: this replica no longer owns the subscription.", subscription = %self.name);
                persisted
            }
            Err(error) => {
                tracing::warn!(message = "Storing the committed offset failed; retrying at the next interval.", subscription = %self.name, error = %error_chain(&error));
                persisted
            }
        }
    }
}

/// The original event with extensions saying why it was dead-lettered, or `None` if the record
/// cannot be read back (see `Dispatcher::dispatch`).
fn dead_letter_event(
    records: Option<Vec<trellis_storage::Record>>,
    offset: u64,
    subscription: &str,
    failure: &DeliveryFailure,
) -> Option<CloudEvent> {
    let record = records?
        .into_iter()
        .find(|record| record.offset == offset)?;
    let mut event = CloudEvent::from_stored(&record.payload).ok()?;
    super::dead_letter::annotate(&mut event, subscription, failure);
    Some(event)
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
