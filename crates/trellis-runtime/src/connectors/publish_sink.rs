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
