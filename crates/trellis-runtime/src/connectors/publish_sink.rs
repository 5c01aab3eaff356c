//! Where a source connector's records go inside `trellis serve`: the runtime's publish core, as
//! a [`Sink`], so the source worker publishes as the HTTP and gRPC APIs do (the same checks,
//! deduplication on (`source`, `id`), durability before success) without a request.

use std::sync::Arc;

use async_trait::async_trait;
use trellis_cloudevents::EventLimits;
use trellis_connect::cloudevents::{EventDefaults, to_cloud_event};
use trellis_connect::{ConnectRecord, ConnectorError, SendError, Sink, SinkContext};

use crate::publisher::{Outgoing, Publisher};

pub(crate) struct PublishSink {
    pub(crate) publisher: Arc<Publisher>,
    pub(crate) topic: String,
    pub(crate) defaults: EventDefaults,
    pub(crate) limits: EventLimits,
    pub(crate) max_event_bytes: usize,
}

#[async_trait]
impl Sink for PublishSink {
    async fn start(&mut self, _context: SinkContext) -> Result<(), ConnectorError> {
        Ok(())
    }

    /// One append for the records that make events; a record that cannot be one (an invalid
    /// attribute, over a limit) is rejected alone, for good.
    async fn put(&mut self, records: Vec<ConnectRecord>) -> Result<(), ConnectorError> {
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
        if outgoing.is_empty() {
            return Ok(());
        }
        match self.publisher.publish(&self.topic, outgoing).await {
            Ok(_) => {
                // Stored or a duplicate of a stored copy: either way durable.
                for record in publishing {
                    record.succeed(Some(self.topic.clone()));
                }
            }
            Err(error) => {
                // 503s (an unavailable store, a shutdown) pass; the rest (a topic that cannot
                // be created, an event over the store's own limit) will not.
                let cause = if error.status == http::StatusCode::SERVICE_UNAVAILABLE {
                    SendError::Retriable(error.message)
                } else {
                    SendError::Publish(error.message)
                };
                for record in publishing {
                    record.fail(Some(self.topic.clone()), cause.clone());
                }
            }
        }
        Ok(())
    }

    async fn stop(&mut self) -> Result<(), ConnectorError> {
        Ok(())
    }
}
