//! Metric names and the Prometheus recorder. Names follow `trellis_<name>_<unit>[_total]`;
//! labels come only from bounded sets (outcome words, topic names).

mod removable;

pub(crate) use removable::removable;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use trellis_storage::EventStore;

pub(crate) const PUBLISH_REQUESTS: &str = "trellis_publish_requests_total";
pub(crate) const PUBLISH_TOPIC_REQUESTS: &str = "trellis_publish_topic_requests_total";
pub(crate) const PUBLISH_EVENTS: &str = "trellis_publish_events_total";
pub(crate) const PUBLISH_BYTES: &str = "trellis_publish_bytes_total";
pub(crate) const PUBLISH_DURATION: &str = "trellis_publish_duration_seconds";
pub(crate) const PUBLISH_DUPLICATES: &str = "trellis_publish_duplicates_total";
pub(crate) const DEDUP_ENTRIES: &str = "trellis_dedup_remembered_ids";
pub(crate) const DEDUP_MEMORY: &str = "trellis_dedup_memory_bytes";
pub(crate) const LOG_SIZE: &str = "trellis_log_size_bytes";
pub(crate) const TOPIC_NEXT_OFFSET: &str = "trellis_topic_next_offset";
pub(crate) const STORAGE_AVAILABLE: &str = "trellis_storage_available";

// Publish latency spans an in-memory append (tens of µs) to fsync queues under load (tens of ms).
const LATENCY_BUCKETS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// The process-wide recorder, installed on first use. A process has one `metrics` recorder, so
/// several runtimes in one process (tests) share it. Call it before opening the log: metrics
/// recorded before it is installed (recovery's, say) are lost.
pub(crate) fn handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new();
            let builder = match builder
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), LATENCY_BUCKETS)
            {
                Ok(builder) => builder,
                // Only an empty bucket list is refused, and ours is a non-empty constant.
                Err(_) => PrometheusBuilder::new(),
            };
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            let recorder = removable::Router {
                prometheus: recorder,
            };
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!(
                    message = "A metrics recorder was already installed; /metrics will be empty."
                );
            }
            describe();
            handle
        })
        .clone()
}

/// Installs the process-wide Prometheus recorder if it is not there yet. Call it before opening
/// the log, so that what recovery records is not lost.
pub fn install_metrics_recorder() {
    let _ = handle();
}

fn describe() {
    metrics::describe_counter!(
        PUBLISH_REQUESTS,
        "Publish requests by outcome (accepted, rejected, failed)."
    );
    metrics::describe_counter!(
        PUBLISH_TOPIC_REQUESTS,
        "Accepted publish requests per topic. Refused requests are counted by outcome only, so \
         invalid topic names never become labels."
    );
    metrics::describe_counter!(
        PUBLISH_EVENTS,
        "Events stored by publish requests, per topic."
    );
    metrics::describe_counter!(
        PUBLISH_BYTES,
        "Bytes of encoded events stored by publish requests, per topic."
    );
    metrics::describe_counter!(
        PUBLISH_DUPLICATES,
        "Published events not stored because the topic stored the same (source, id) within the \
         deduplication window, per topic."
    );
    metrics::describe_gauge!(
        DEDUP_ENTRIES,
        "(source, id) pairs remembered for deduplication over all topics; at most \
         dedup max_entries, the oldest forgotten first."
    );
    metrics::describe_gauge!(
        DEDUP_MEMORY,
        metrics::Unit::Bytes,
        "About how much memory the deduplication index holds; the same per pair whatever the \
         size of the events' ids."
    );
    metrics::describe_histogram!(
        PUBLISH_DURATION,
        metrics::Unit::Seconds,
        "Publish request latency, body read to durable ack."
    );
    metrics::describe_histogram!(
        "trellis_log_fsync_seconds",
        metrics::Unit::Seconds,
        "Latency of one log fsync."
    );
    metrics::describe_histogram!(
        "trellis_log_roll_seconds",
        metrics::Unit::Seconds,
        "Time to seal a full segment and start the next."
    );
    metrics::describe_gauge!(
        "trellis_log_open_files",
        "Segment files held open; at most [topics] max_open_files, plus any pinned for readers."
    );
    metrics::describe_gauge!(LOG_SIZE, metrics::Unit::Bytes, "Bytes on disk per topic.");
    metrics::describe_gauge!(
        TOPIC_NEXT_OFFSET,
        "The offset the next event of the topic will get."
    );
    metrics::describe_gauge!(
        STORAGE_AVAILABLE,
        "1 while the event store can be reached, 0 while it cannot (publishes then answer 503 \
         and deliveries wait)."
    );
}

/// Refreshes per-topic gauges and the deduplication gauges from the event store's own
/// bookkeeping, just before a scrape.
pub(crate) async fn refresh_gauges(store: &dyn EventStore) {
    let available = store.available();
    metrics::gauge!(STORAGE_AVAILABLE).set(f64::from(u8::from(available)));
    if !available {
        // Asking would only wait out the store's timeout; the topic gauges keep their values.
        return;
    }
    match store.list_topics().await {
        Ok(topics) => {
            for topic in topics {
                metrics::gauge!(LOG_SIZE, "topic" => topic.name.clone())
                    .set(topic.size_bytes as f64);
                metrics::gauge!(TOPIC_NEXT_OFFSET, "topic" => topic.name)
                    .set(topic.next_offset as f64);
            }
        }
        Err(error) => {
            tracing::warn!(message = "Listing topics for the metrics failed; their gauges keep their last values.", error = %error);
        }
    }
    if let Some(usage) = store.dedup_usage() {
        metrics::gauge!(DEDUP_ENTRIES).set(usage.remembered_keys as f64);
        metrics::gauge!(DEDUP_MEMORY).set(usage.memory_bytes as f64);
    }
}

/// How a publish request ended, as a metric label.
#[derive(Debug, Clone, Copy)]
pub(crate) enum PublishOutcome {
    Accepted,
    Rejected,
    Failed,
}

/// Publish metric handles, registered once. Building a labelled key allocates and hashes, which
/// at tens of thousands of publishes per second is a cost worth paying only once per topic.
#[derive(Clone)]
pub(crate) struct PublishMetrics {
    by_outcome: Arc<[(Counter, Histogram); 3]>,
    // A std lock: nothing awaits while holding it, and reads (the common case) do not contend.
    per_topic: Arc<RwLock<HashMap<String, TopicCounters>>>,
    /// Events stored over all topics, read back for the load a replica reports to the cluster
    /// (a Prometheus counter cannot be read).
    stored: Arc<std::sync::atomic::AtomicU64>,
}

#[derive(Clone)]
pub(crate) struct TopicCounters {
    pub(crate) requests: Counter,
    pub(crate) events: Counter,
    pub(crate) bytes: Counter,
    pub(crate) duplicates: Counter,
}

impl PublishMetrics {
    pub(crate) fn new() -> PublishMetrics {
        let handles = |outcome: &'static str| {
            (
                metrics::counter!(PUBLISH_REQUESTS, "outcome" => outcome),
                metrics::histogram!(PUBLISH_DURATION, "outcome" => outcome),
            )
        };
        PublishMetrics {
            by_outcome: Arc::new([handles("accepted"), handles("rejected"), handles("failed")]),
            per_topic: Arc::default(),
            stored: Arc::default(),
        }
    }

    pub(crate) fn count_stored(&self, events: u64) {
        self.stored
            .fetch_add(events, std::sync::atomic::Ordering::Relaxed);
    }

    /// Events stored since the start, over all topics.
    pub(crate) fn stored(&self) -> u64 {
        self.stored.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn record_request(&self, outcome: PublishOutcome, seconds: f64) {
        let (requests, duration) = &self.by_outcome[outcome as usize];
        requests.increment(1);
        duration.record(seconds);
    }

    pub(crate) fn topic(&self, topic: &str) -> TopicCounters {
        if let Some(counters) = self
            .per_topic
            .read()
            .ok()
            .and_then(|map| map.get(topic).cloned())
        {
            return counters;
        }
        let counters = TopicCounters {
            requests: metrics::counter!(PUBLISH_TOPIC_REQUESTS, "topic" => topic.to_owned()),
            events: metrics::counter!(PUBLISH_EVENTS, "topic" => topic.to_owned()),
            bytes: metrics::counter!(PUBLISH_BYTES, "topic" => topic.to_owned()),
            duplicates: metrics::counter!(PUBLISH_DUPLICATES, "topic" => topic.to_owned()),
        };
        if let Ok(mut map) = self.per_topic.write() {
            map.insert(topic.to_owned(), counters.clone());
        }
        counters
    }
}
