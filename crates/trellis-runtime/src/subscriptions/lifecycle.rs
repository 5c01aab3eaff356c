//! One subscription across the lives of its topic. It runs a dispatcher on the topic's current
//! incarnation. When the topic is deleted, the subscription shows `waiting_for_topic` and waits
//! until a topic of that name exists again, then reads that new incarnation from its beginning:
//! an offset stored for the old one is never applied to it (see `stored_offset.rs`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use trellis_delivery::config::BatchSpec;
use trellis_meta::MetadataStore;
use trellis_storage::EventStore;

use super::dead_letter::DeadLetterTarget;
use super::dispatcher::{Deliver, Dispatcher, DispatcherStats, Ended, OnFailure, Outcome};
use super::spec::Start;
use crate::error::error_chain;
use crate::event_store::{StorageWait, TopicHandle, until_available};
use crate::topics::{Incarnation, TopicRegistry};

/// 1 while a subscription waits for its topic to exist, so a stranded one can be alerted on.
pub(crate) const WAITING_FOR_TOPIC: &str = "trellis_subscription_waiting_for_topic";

pub(crate) fn describe_metrics() {
    metrics::describe_gauge!(
        WAITING_FOR_TOPIC,
        "1 while the subscription waits for its topic, deleted or not yet created, to exist."
    );
}

/// What the status shows beyond the dispatcher's figures.
pub(crate) struct Lifecycle {
    /// Set while the subscription waits for its topic: why.
    waiting: std::sync::Mutex<Option<String>>,
    waiting_gauge: metrics::Gauge,
}

impl Lifecycle {
    pub(crate) fn new(subscription: &str) -> Lifecycle {
        let waiting_gauge =
            metrics::gauge!(WAITING_FOR_TOPIC, "subscription" => subscription.to_owned());
        waiting_gauge.set(0.0);
        Lifecycle {
            waiting: std::sync::Mutex::new(None),
            waiting_gauge,
        }
    }

    pub(crate) fn waiting_reason(&self) -> Option<String> {
        self.waiting.lock().ok().and_then(|reason| reason.clone())
    }

    fn set_waiting(&self, reason: Option<String>) {
        self.waiting_gauge
            .set(if reason.is_some() { 1.0 } else { 0.0 });
        if let Ok(mut waiting) = self.waiting.lock() {
            *waiting = reason;
        }
    }
}

/// How long to wait before trying the metadata store again after it failed.
const RETRY: Duration = Duration::from_secs(1);

pub(crate) struct Supervisor {
    pub(crate) name: String,
    pub(crate) topic_name: String,
    /// Where to start when no offset is stored at all.
    pub(crate) start: Start,
    pub(crate) topics: TopicRegistry,
    pub(crate) dead_letter: DeadLetterTarget,
    pub(crate) meta: Arc<dyn MetadataStore>,
    pub(crate) offset_key: String,
    pub(crate) target: Arc<dyn Deliver>,
    pub(crate) on_failure: OnFailure,
    pub(crate) outcomes: mpsc::UnboundedReceiver<Outcome>,
    pub(crate) max_in_flight: usize,
    pub(crate) commit_interval: Duration,
    pub(crate) paused: watch::Receiver<bool>,
    pub(crate) batch: watch::Receiver<Option<BatchSpec>>,
    pub(crate) stop: CancellationToken,
    pub(crate) stats: Arc<DispatcherStats>,
    pub(crate) lifecycle: Arc<Lifecycle>,
}

impl Supervisor {
    /// Runs until stopped (`None`), or until a record fails for good under
    /// [`OnFailure::Stop`] (`Some` with why).
    pub(crate) async fn run(self) -> Option<String> {
        let Supervisor {
            name,
            topic_name,
            start,
            topics,
            dead_letter,
            meta,
            offset_key,
            target,
            on_failure,
            mut outcomes,
            max_in_flight,
            commit_interval,
            paused,
            batch,
            stop,
            stats,
            lifecycle,
        } = self;
        let mut reason =
            format!("topic {topic_name:?} does not exist; waiting for it to be created");
        loop {
            // `None` from either: stopped meanwhile.
            let (topic, incarnation) =
                wait_for_topic(&topics, &topic_name, &stop, &lifecycle, reason).await?;
            let from = start_offset(
                (topics.store().as_ref(), &stats),
                meta.as_ref(),
                &offset_key,
                &topic,
                &incarnation,
                start,
                &stop,
            )
            .await?;
            lifecycle.set_waiting(None);
            let dispatcher = Dispatcher {
                name: name.clone(),
                topic,
                store: Arc::clone(topics.store()),
                incarnation,
                dead_letter: dead_letter.clone(),
                meta: Arc::clone(&meta),
                offset_key: offset_key.clone(),
                target: Arc::clone(&target),
                on_failure,
                outcomes,
                start: from,
                max_in_flight,
                commit_interval,
                paused: paused.clone(),
                batch: batch.clone(),
                stop: stop.clone(),
                stats: Arc::clone(&stats),
            };
            match dispatcher.run().await {
                Ended::Stopped => return None,
                Ended::Failed(reason) => return Some(reason),
                Ended::TopicDeleted(back) => {
                    // The next topic's offset is loaded afresh.
                    stats
                        .offset_loaded
                        .store(false, std::sync::atomic::Ordering::Release);
                    tracing::warn!(
                        message = "The subscription's topic was deleted; it waits for the topic to be created again and will read it from its beginning.",
                        subscription = %name,
                        topic = %topic_name,
                    );
                    outcomes = back;
                    reason = format!(
                        "topic {topic_name:?} was deleted; waiting for it to be created again, to read it from its beginning"
                    );
                }
            }
        }
    }
}

/// The topic once it exists; `None` if stopped first.
async fn wait_for_topic(
    topics: &TopicRegistry,
    name: &str,
    stop: &CancellationToken,
    lifecycle: &Lifecycle,
    reason: String,
) -> Option<(TopicHandle, Incarnation)> {
    // Subscribed before looking, so a creation in between is not missed.
    let mut changes = topics.changes();
    if let Some(found) = topics.current(name) {
        return Some(found);
    }
    lifecycle.set_waiting(Some(reason));
    loop {
        tokio::select! {
            () = stop.cancelled() => return None,
            changed = changes.changed() => changed.ok()?,
        }
        if let Some(found) = topics.current(name) {
            return Some(found);
        }
    }
}

/// Where to read `topic` from: the stored offset if it counts in this incarnation, the
/// beginning if it counts in another, the subscription's `start` if none is stored. A new start
/// is stored at once, so a restart before the first commit keeps it. `None` if stopped first.
/// An unavailable event store (the first of `storage`) is waited for, and shown in the
/// status (the second) meanwhile.
async fn start_offset(
    storage: (&dyn EventStore, &DispatcherStats),
    meta: &dyn MetadataStore,
    key: &str,
    topic: &TopicHandle,
    incarnation: &Incarnation,
    start: Start,
    stop: &CancellationToken,
) -> Option<u64> {
    let (store, dispatcher) = storage;
    let mut storage = StorageWait::new(format!("subscription at {key}"));
    let show = |reason| dispatcher.set_waiting_for_storage(reason);
    loop {
        let info = until_available(store, &mut storage, stop, &show, || topic.info()).await?;
        let stats = match info {
            Ok(stats) => stats,
            Err(error) => {
                tracing::warn!(message = "Reading a subscription's topic failed; retrying.", key, error = %error_chain(&error));
                tokio::select! {
                    () = stop.cancelled() => return None,
                    () = tokio::time::sleep(RETRY) => continue,
                }
            }
        };
        let from = match crate::stored_offset::load_any(meta, key).await {
            Ok(Some(stored)) => match stored.in_incarnation(incarnation) {
                Some(offset) => return Some(offset),
                None => stats.first_offset,
            },
            Ok(None) => match start {
                Start::Latest => stats.next_offset,
                Start::Earliest => stats.first_offset,
                Start::Offset(offset) => offset.max(stats.first_offset),
            },
            Err(error) => {
                tracing::warn!(message = "Reading a subscription's offset failed; retrying.", key, error = %error_chain(&error));
                tokio::select! {
                    () = stop.cancelled() => return None,
                    () = tokio::time::sleep(RETRY) => continue,
                }
            }
        };
        if let Err(error) = meta
            .put(key, crate::stored_offset::encode(from, incarnation))
            .await
        {
            tracing::warn!(message = "Storing a subscription's new start failed; it is stored at the next commit.", key, error = %error_chain(&error));
        }
        return Some(from);
    }
}
