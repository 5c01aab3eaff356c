//! Where a source connector's records go inside `trellis serve`: the runtime's publish core, as
//! a [`Sink`], so the source worker publishes as the HTTP and gRPC APIs do (the same checks,
//! deduplication on (`source`, `id`), durability before success) without a request.
//!
//! Each batch is converted and published in a task of its own, so the worker polls and
//! prepares the next batch meanwhile, and a batch is converted while the one before it is
//! appended and synced: run inline, the connector's whole per-line work ran on one task, one
//! step after the other. The order is kept:
//! - a batch is appended only once the batch before it has ended (stored or failed), so
//!   batches are stored in the order they were put;
//! - a batch that follows one whose publish failed in a way that may pass is not stored: its
//!   records fail as retriable too, and the worker sends both again in order. `put` returns
//!   only once the batch before the new one has ended, and, if that one failed so, once the new
//!   one has failed too: the worker hears of every such failure before it can put another
//!   batch, so it never polls past a batch it still has to retry.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use trellis_cloudevents::EventLimits;
use trellis_connect::cloudevents::{EventDefaults, to_cloud_event};
use trellis_connect::{ConnectRecord, ConnectorError, SendError, Sink, SinkContext};

use crate::publisher::{Outgoing, Publisher};

pub(crate) struct PublishSink {
    target: Arc<Target>,
    /// The last batch put, if any: its task, and where its successor hears how it ended.
    last: Option<(JoinHandle<Ended>, oneshot::Receiver<Ended>)>,
}

/// How a batch's publish ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// Stored (or nothing to store), or failed for good: the next batch may be stored.
    Done,
    /// Failed in a way that may pass: the worker retries it, so the next batch must not be
    /// stored before it.
    Retriable,
    /// Not tried, because the batch before it ended `Retriable`.
    Held,
}

/// What a batch's task needs.
struct Target {
    publisher: Arc<Publisher>,
    topic: String,
    defaults: EventDefaults,
    limits: EventLimits,
    max_event_bytes: usize,
}

impl PublishSink {
    pub(crate) fn new(
        publisher: Arc<Publisher>,
        topic: String,
        defaults: EventDefaults,
        limits: EventLimits,
        max_event_bytes: usize,
    ) -> PublishSink {
        PublishSink {
            target: Arc::new(Target {
                publisher,
                topic,
                defaults,
                limits,
                max_event_bytes,
            }),
            last: None,
        }
    }
}

/// Waits for a batch's task. One that panicked or was aborted dropped its records, which
/// reported `Dropped`, a failure that may pass.
async fn ended(task: JoinHandle<Ended>) -> Ended {
    task.await.unwrap_or(Ended::Retriable)
}

#[async_trait]
impl Sink for PublishSink {
    async fn start(&mut self, _context: SinkContext) -> Result<(), ConnectorError> {
        Ok(())
    }

    /// One append for the records that make events; a record that cannot be one (an invalid
    /// attribute, over a limit) is rejected alone, for good.
    async fn put(&mut self, records: Vec<ConnectRecord>) -> Result<(), ConnectorError> {
        let (previous_task, after) = match self.last.take() {
            Some((task, after)) => (Some(task), Some(after)),
            None => (None, None),
        };
        let (then, next_after) = oneshot::channel();
        let target = Arc::clone(&self.target);
        let task = tokio::spawn(async move {
            let ended = target.publish(records, after).await;
            // The successor may be gone (the sink stopped): nothing waits then.
            let _ = then.send(ended);
            ended
        });
        if let Some(previous) = previous_task
            && ended(previous).await == Ended::Retriable
        {
            // The new batch is held back: let the worker hear it failed before it goes on.
            ended(task).await;
            return Ok(());
        }
        self.last = Some((task, next_after));
        Ok(())
    }

    async fn stop(&mut self) -> Result<(), ConnectorError> {
        if let Some((task, _)) = self.last.take() {
            ended(task).await;
        }
        Ok(())
    }
}

impl Target {
    /// Converts one batch, waits for the batch before it (`after`), then publishes it, ending
    /// every record.
    async fn publish(
        &self,
        records: Vec<ConnectRecord>,
        after: Option<oneshot::Receiver<Ended>>,
    ) -> Ended {
        let mut outgoing = Vec::with_capacity(records.len());
        let mut publishing = Vec::with_capacity(records.len());
        for record in records {
            let prepared = to_cloud_event(&record, &self.defaults)
                .map_err(|error| error.message)
                .and_then(|event| {
                    Outgoing::prepare(&event, &self.limits, self.max_event_bytes)
                        .map_err(|unpublishable| unpublishable.message("the event"))
                });
            match prepared {
                Ok(event) => {
                    outgoing.push(event);
                    publishing.push(record);
                }
                Err(reason) => record.fail(Some(self.topic.clone()), SendError::Rejected(reason)),
            }
        }
        if let Some(after) = after {
            // A sender gone without a word: its task panicked, see `ended`.
            if after.await.unwrap_or(Ended::Retriable) == Ended::Retriable {
                let cause = SendError::Retriable(
                    "an earlier batch of the connector was not stored; this one is sent again \
                     after it"
                        .to_owned(),
                );
                for record in publishing {
                    record.fail(Some(self.topic.clone()), cause.clone());
                }
                return Ended::Held;
            }
        }
        if outgoing.is_empty() {
            return Ended::Done;
        }
        match self.publisher.publish(&self.topic, outgoing).await {
            Ok(_) => {
                // Stored or a duplicate of a stored copy: either way durable.
                for record in publishing {
                    record.succeed(Some(self.topic.clone()));
                }
                Ended::Done
            }
            Err(error) => {
                // 503s (an unavailable store, a shutdown) pass; the rest (a topic that cannot
                // be created, an event over the store's own limit) will not.
                let (cause, ended) = if error.status == http::StatusCode::SERVICE_UNAVAILABLE {
                    (SendError::Retriable(error.message), Ended::Retriable)
                } else {
                    (SendError::Publish(error.message), Ended::Done)
                };
                for record in publishing {
                    record.fail(Some(self.topic.clone()), cause.clone());
                }
                ended
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    use trellis_cloudevents::CloudEvent;
    use trellis_connect::{Position, SendCallback, SendExceptionContext, SendResult};
    use trellis_storage::{
        DedupUsage, EmbeddedOptions, EmbeddedStore, EventStore, StorageError, TopicInfo,
        TopicSettings, TopicStore,
    };

    use super::*;
    use crate::metrics::PublishMetrics;
    use crate::topics::{TopicRegistry, TopicSettings as ApiTopicSettings};

    /// The embedded store, which can be switched to unavailable (as a remote store whose
    /// connection is down): a publish then fails with a 503, a failure that may pass.
    #[derive(Debug)]
    struct Switchable {
        inner: EmbeddedStore,
        down: AtomicBool,
    }

    #[async_trait]
    impl EventStore for Switchable {
        async fn create_topic(
            &self,
            name: &str,
            settings: TopicSettings,
        ) -> Result<Arc<dyn TopicStore>, StorageError> {
            self.inner.create_topic(name, settings).await
        }
        async fn get_or_create_topic(
            &self,
            name: &str,
            settings: TopicSettings,
        ) -> Result<Arc<dyn TopicStore>, StorageError> {
            self.inner.get_or_create_topic(name, settings).await
        }
        async fn topic(&self, name: &str) -> Result<Option<Arc<dyn TopicStore>>, StorageError> {
            self.inner.topic(name).await
        }
        async fn list_topics(&self) -> Result<Vec<TopicInfo>, StorageError> {
            self.inner.list_topics().await
        }
        async fn delete_topic(&self, name: &str) -> Result<bool, StorageError> {
            self.inner.delete_topic(name).await
        }
        async fn enforce_retention(&self) -> Result<(), StorageError> {
            self.inner.enforce_retention().await
        }
        async fn close(&self) -> Result<(), StorageError> {
            self.inner.close().await
        }
        fn dedup_usage(&self) -> Option<DedupUsage> {
            self.inner.dedup_usage()
        }
        fn available(&self) -> bool {
            !self.down.load(Ordering::SeqCst)
        }
    }

    /// Each record's outcome, sent on as it ends.
    struct Outcomes(Mutex<tokio::sync::mpsc::UnboundedSender<(String, Result<(), SendError>)>>);

    impl SendCallback for Outcomes {
        fn on_success(&self, result: SendResult) {
            if let Ok(tell) = self.0.lock() {
                let _ = tell.send((result.record_id, Ok(())));
            }
        }
        fn on_exception(&self, context: SendExceptionContext) {
            if let Ok(tell) = self.0.lock() {
                let _ = tell.send((context.record_id, Err(context.cause)));
            }
        }
    }

    fn batch(ids: &[&str], callback: &Arc<Outcomes>) -> Vec<ConnectRecord> {
        ids.iter()
            .enumerate()
            .map(|(at, id)| {
                ConnectRecord::new(*id, Position::new("p", at as u64 + 1), id.to_string())
                    .with_callback(callback.clone())
            })
            .collect()
    }

    #[tokio::test]
    async fn a_batch_after_one_that_failed_retriably_is_not_stored_before_its_retry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(Switchable {
            inner: EmbeddedStore::open(EmbeddedOptions::new(dir.path().join("log")))
                .expect("store"),
            down: AtomicBool::new(false),
        });
        let meta =
            Arc::new(trellis_meta::EmbeddedStore::open(&dir.path().join("meta")).expect("meta"));
        let topics =
            TopicRegistry::open(store.clone(), meta, ApiTopicSettings::default(), true, 100)
                .await
                .expect("topics");
        let publisher = Arc::new(Publisher::new(topics.clone(), PublishMetrics::new()));
        let defaults = EventDefaults {
            source: "/connectors/test".to_owned(),
            ty: "test.line".to_owned(),
        };
        let mut sink = PublishSink::new(
            publisher,
            "orders".to_owned(),
            defaults,
            EventLimits::default(),
            1024 * 1024,
        );
        let (tell, mut told) = tokio::sync::mpsc::unbounded_channel();
        let outcomes = Arc::new(Outcomes(Mutex::new(tell)));

        // The store is down while the first batch is published: it fails, retriably.
        store.down.store(true, Ordering::SeqCst);
        sink.put(batch(&["a1", "a2"], &outcomes))
            .await
            .expect("put");
        for _ in 0..2 {
            let (_, result) = told.recv().await.expect("an outcome");
            assert!(matches!(result, Err(SendError::Retriable(_))), "{result:?}");
        }
        // Back up before the next batch: it must still not be stored ahead of a1 and a2, and
        // its failure is known by the time `put` returns.
        store.down.store(false, Ordering::SeqCst);
        sink.put(batch(&["b1"], &outcomes)).await.expect("put");
        let (id, result) = told.try_recv().expect("b1 ended before put returned");
        assert_eq!(id, "b1");
        assert!(matches!(result, Err(SendError::Retriable(_))), "{result:?}");

        // The worker's retry, in order, is stored, and so is what follows it.
        sink.put(batch(&["a1", "a2", "b1"], &outcomes))
            .await
            .expect("put");
        sink.put(batch(&["c1"], &outcomes)).await.expect("put");
        sink.stop().await.expect("stop");
        let mut ended = Vec::new();
        while let Ok((id, result)) = told.try_recv() {
            assert_eq!(result, Ok(()), "{id}");
            ended.push(id);
        }
        assert_eq!(ended, ["a1", "a2", "b1", "c1"]);

        let topic = store
            .topic("orders")
            .await
            .expect("read")
            .expect("the topic");
        let page = topic.read(0, 100, 1 << 20).await.expect("read");
        let stored: Vec<String> = page
            .records
            .iter()
            .map(|record| {
                CloudEvent::from_stored(&record.payload)
                    .expect("an event")
                    .id
            })
            .collect();
        assert_eq!(stored, ["a1", "a2", "b1", "c1"]);
    }
}
