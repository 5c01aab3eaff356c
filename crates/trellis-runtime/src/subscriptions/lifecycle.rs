//! One subscription across the lives of its topic. It runs a dispatcher on the topic's current
//! incarnation. When the topic is deleted, the subscription shows `waiting_for_topic` and waits
//! until a topic of that name exists again, then reads that new incarnation from its beginning:
//! an offset stored for the old one is never applied to it (see `stored_offset.rs`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use trellis_cluster::Fence;
use trellis_delivery::config::BatchSpec;
use trellis_meta::MetadataStore;
use trellis_storage::EventStore;

use super::dead_letter::DeadLetterTarget;
use super::dispatcher::{Deliver, Dispatcher, DispatcherStats, Ended, OnFailure, Outcome};
use super::spec::Start;
use crate::error::error_chain;
use crate::event_store::{StorageWait, TopicHandle, until_available};
use crate::ownership::fenced_put;
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
    /// `None` only while a dispatcher has it.
    pub(crate) outcomes: Option<mpsc::UnboundedReceiver<Outcome>>,
    pub(crate) max_in_flight: usize,
    pub(crate) commit_interval: Duration,
    pub(crate) paused: watch::Receiver<bool>,
    pub(crate) batch: watch::Receiver<Option<BatchSpec>>,
    pub(crate) stats: Arc<DispatcherStats>,
    pub(crate) lifecycle: Arc<Lifecycle>,
}

impl Supervisor {
    /// Runs one term of ownership: until `stop` (`None`), or until a record fails for good
    /// under [`OnFailure::Stop`] (`Some` with why). Every commit goes through `fence`.
    pub(crate) async fn run(&mut self, fence: Fence, stop: CancellationToken) -> Option<String> {
        let topic_name = self.topic_name.clone();
        let mut reason =
            format!("topic {topic_name:?} does not exist; waiting for it to be created");
        let result = loop {
            // `None` from either: stopped meanwhile.
            let Some((topic, incarnation)) =
                wait_for_topic(&self.topics, &topic_name, &stop, &self.lifecycle, reason).await
            else {
                break None;
            };
            let Some(from) = start_offset(
                (self.topics.store().as_ref(), &self.stats),
                (self.meta.as_ref(), &fence),
                &self.offset_key,
                &topic,
                &incarnation,
                self.start,
                &stop,
            )
            .await
            else {
                break None;
            };
            let Some(outcomes) = self.outcomes.take() else {
                break Some("the subscription's outcome channel is gone".to_owned());
            };
            self.lifecycle.set_waiting(None);
            let dispatcher = Dispatcher {
                name: self.name.clone(),
                topic,
                store: Arc::clone(self.topics.store()),
                incarnation,
                dead_letter: self.dead_letter.clone(),
                meta: Arc::clone(&self.meta),
                offset_key: self.offset_key.clone(),
                target: Arc::clone(&self.target),
                on_failure: self.on_failure,
                outcomes,
                start: from,
                max_in_flight: self.max_in_flight,
                commit_interval: self.commit_interval,
                paused: self.paused.clone(),
                batch: self.batch.clone(),
                stop: stop.clone(),
                stats: Arc::clone(&self.stats),
                fence: fence.clone(),
            };
            match dispatcher.run().await {
                Ended::Stopped(back) => {
                    self.outcomes = Some(back);
                    break None;
                }
                Ended::Failed(failure, back) => {
                    self.outcomes = Some(back);
                    break Some(failure);
                }
                Ended::TopicDeleted(back) => {
                    self.outcomes = Some(back);
                    tracing::warn!(
                        message = "The subscription's topic was deleted; it waits for the topic to be created again and will read it from its beginning.",
                        subscription = %self.name,
                        topic = %topic_name,
                    );
                    reason = format!(
                        "topic {topic_name:?} was deleted; waiting for it to be created again, to read it from its beginning"
                    );
                }
            }
            // The next topic's offset is loaded afresh.
            self.stats
                .offset_loaded
                .store(false, std::sync::atomic::Ordering::Release);
        };
        // The next term (maybe on another replica) loads the offset afresh.
        self.stats
            .offset_loaded
            .store(false, std::sync::atomic::Ordering::Release);
        result
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
    (meta, fence): (&dyn MetadataStore, &Fence),
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
        let value = crate::stored_offset::encode(from, incarnation);
        match fenced_put(fence, meta, key, value).await {
            Ok(true) => {}
            // The term is over; it stops before it delivers anything.
            Ok(false) => return None,
            Err(error) => {
                tracing::warn!(message = "Storing a subscription's new start failed; it is stored at the next commit.", key, error = %error_chain(&error));
            }
        }
        return Some(from);
    }
}
