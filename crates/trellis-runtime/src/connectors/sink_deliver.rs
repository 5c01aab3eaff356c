//! A sink connector behind the subscription dispatcher: the dispatcher reads the topic, commits
//! and dead-letters exactly as for a webhook subscription, and hands its batches here, where one
//! task owns the [`Sink`] and puts them in topic order.
//!
//! Each record goes to the sink with a callback; its outcome goes back to the dispatcher as the
//! engine's would. A record that failed in a way that may pass (a `put` that returned an error,
//! a record dropped or reported retriable) is put again, with growing waits, until
//! `errors.retry.timeout.ms` has passed since its first try; then, like a record the sink
//! failed for good, it is reported failed, and the dispatcher applies the error policy
//! (dead-letter it, or stop the connector).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use trellis_connect::cloudevents::from_cloud_event;
use trellis_connect::{
    ConnectorError, Position, SendCallback, SendError, SendExceptionContext, SendResult, Sink,
};
use trellis_delivery::backoff::BackoffSettings;
use trellis_delivery::engine::AttemptGate;
use trellis_delivery::engine::Record;
use trellis_delivery::report::{DeliveryFailure, FailureClass, RecordContext};

use crate::error::error_chain;
use crate::subscriptions::{Deliver, Outcome};

/// The dispatcher's side: batches go into a bounded queue the sink task drains in order.
pub(crate) struct SinkDeliver {
    pub(crate) batches: mpsc::Sender<Vec<Record>>,
}

impl Deliver for SinkDeliver {
    fn deliver(&self, record: Record) -> BoxFuture<'static, ()> {
        self.deliver_batch(vec![record])
    }

    fn deliver_batch(&self, records: Vec<Record>) -> BoxFuture<'static, ()> {
        let batches = self.batches.clone();
        // A batch that cannot be queued (the sink task ended) has no outcome: the dispatcher is
        // stopping, and the records stay uncommitted.
        Box::pin(async move {
            let _ = batches.send(records).await;
        })
    }
}

/// Live figures of a sink connector.
#[derive(Debug, Default)]
pub(crate) struct SinkCounters {
    pub(crate) put: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) retried: AtomicU64,
}

pub(crate) struct SinkTask {
    /// The dispatcher's name for the connector (`connector:<name>`), as dead letters show it.
    pub(crate) label: String,
    pub(crate) connector: String,
    pub(crate) sink: Box<dyn Sink>,
    pub(crate) batches: mpsc::Receiver<Vec<Record>>,
    pub(crate) outcomes: mpsc::UnboundedSender<Outcome>,
    pub(crate) retry_timeout: Duration,
    pub(crate) counters: Arc<SinkCounters>,
    /// The last `put` error, for the status while it lasts.
    pub(crate) last_error: Arc<std::sync::Mutex<Option<String>>>,
    /// Closed once this replica cannot prove it owns the connector: nothing more is put.
    pub(crate) gate: Arc<dyn AttemptGate>,
}

/// Retry waits: 100 ms doubling to 5 s, full jitter.
fn backoff() -> BackoffSettings {
    BackoffSettings {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(5),
        multiplier: 2.0,
        jitter: true,
    }
}

/// One record's report, by its offset.
type Reported = (u64, Result<(), SendError>);

struct ToTask(mpsc::UnboundedSender<Reported>);

impl SendCallback for ToTask {
    fn on_success(&self, result: SendResult) {
        let _ = self.0.send((result.position.offset.0, Ok(())));
    }

    fn on_exception(&self, context: SendExceptionContext) {
        let _ = self.0.send((context.position.offset.0, Err(context.cause)));
    }
}

impl SinkTask {
    /// Puts batches until the queue closes or `stop`; then stops the sink. Records still being
    /// retried at a stop have no outcome: they stay uncommitted and are read again.
    pub(crate) async fn run(mut self, stop: CancellationToken) {
        let metrics = Metrics::new(&self.connector);
        while let Some(batch) = tokio::select! {
            () = stop.cancelled() => None,
            batch = self.batches.recv() => batch,
        } {
            if !self.put_until_ended(batch, &stop, &metrics).await {
                break;
            }
        }
        if let Err(error) = self.sink.stop().await {
            tracing::warn!(message = "The sink did not stop cleanly.", connector = %self.connector, error = %error_chain(&error));
        }
    }

    /// `false` if stopped first.
    async fn put_until_ended(
        &mut self,
        batch: Vec<Record>,
        stop: &CancellationToken,
        metrics: &Metrics,
    ) -> bool {
        let first_try = Instant::now();
        let mut pending: BTreeMap<u64, Record> = batch
            .into_iter()
            .map(|record| (record.offset, record))
            .collect();
        let mut failures = 0u32;
        loop {
            let (tx, mut reports) = mpsc::unbounded_channel();
            let callback: Arc<dyn SendCallback> = Arc::new(ToTask(tx));
            let records = pending
                .values()
                .map(|record| {
                    from_cloud_event(&record.event, Position::new(&record.topic, record.offset))
                        .with_callback(Arc::clone(&callback))
                })
                .collect();
            drop(callback);
            if !self.gate.is_open() {
                // The term is ending: the records stay uncommitted for the next owner.
                stop.cancelled().await;
                return false;
            }
            let put = tokio::select! {
                () = stop.cancelled() => return false,
                put = self.sink.put(records) => put,
            };
            let mut last_cause = match &put {
                Ok(()) => None,
                Err(error) => Some(self.put_failed(error)),
            };
            // Every record reports, now or from the sink's own tasks; the channel closes once
            // the last one has.
            loop {
                let report = tokio::select! {
                    () = stop.cancelled() => return false,
                    report = reports.recv() => report,
                };
                let Some((offset, result)) = report else {
                    break;
                };
                let Some(record) = pending.remove(&offset) else {
                    continue;
                };
                match result {
                    Ok(()) => {
                        self.counters.put.fetch_add(1, Ordering::Relaxed);
                        metrics.put.increment(1);
                        let _ = self.outcomes.send(Outcome::Delivered(offset));
                    }
                    Err(cause) if fails_at_once(&cause) => {
                        self.fail(&record, &cause.to_string(), FailureClass::Rejected, metrics);
                    }
                    Err(cause) => {
                        last_cause = Some(cause.to_string());
                        // Put again below.
                        pending.insert(offset, record);
                    }
                }
            }
            if pending.is_empty() {
                return true;
            }
            let cause = last_cause.unwrap_or_else(|| SendError::Dropped.to_string());
            if first_try.elapsed() >= self.retry_timeout {
                let reason = format!(
                    "still failing after errors.retry.timeout.ms ({} ms): {cause}",
                    self.retry_timeout.as_millis()
                );
                for record in std::mem::take(&mut pending).into_values() {
                    self.fail(&record, &reason, FailureClass::RetriesExhausted, metrics);
                }
                return true;
            }
            failures = failures.saturating_add(1);
            self.counters
                .retried
                .fetch_add(pending.len() as u64, Ordering::Relaxed);
            let wait = backoff().delay(failures, &mut rand::rng());
            tracing::warn!(message = "Records failed in a way that may pass; putting them again.", connector = %self.connector, records = pending.len(), wait_ms = wait.as_millis() as u64, cause = %cause);
            tokio::select! {
                () = stop.cancelled() => return false,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    fn put_failed(&self, error: &ConnectorError) -> String {
        let reason = error_chain(error);
        tracing::warn!(message = "The sink's put failed; its records are put again.", connector = %self.connector, error = %reason);
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(reason.clone());
        }
        reason
    }

    fn fail(&self, record: &Record, reason: &str, class: FailureClass, metrics: &Metrics) {
        self.counters.failed.fetch_add(1, Ordering::Relaxed);
        metrics.failed.increment(1);
        let failure = DeliveryFailure {
            context: RecordContext {
                subscription: self.label.clone(),
                topic: record.topic.clone(),
                offset: record.offset,
                event_id: record.event.id.clone(),
                urls: Vec::new(),
            },
            class,
            reason: reason.to_owned(),
            last_status: None,
            error_chain: vec![reason.to_owned()],
            attempts: Vec::new(),
            elapsed_ms: 0,
        };
        let _ = self.outcomes.send(Outcome::Failed(Box::new(failure)));
    }
}

/// Whether a sink's failure is final at once. A delivery error counts as final for a source's
/// publish but may pass for a sink (its target was away or could not take the record now), so
/// only a refusal is; everything else is put again within the retry budget.
fn fails_at_once(cause: &SendError) -> bool {
    matches!(cause, SendError::Rejected(_) | SendError::Publish(_))
}

struct Metrics {
    put: metrics::Counter,
    failed: metrics::Counter,
}

impl Metrics {
    fn new(connector: &str) -> Metrics {
        let labels = [("connector", connector.to_owned())];
        Metrics {
            put: metrics::counter!(super::metrics::RECORDS_PUT, &labels),
            failed: metrics::counter!(super::metrics::RECORDS_FAILED, &labels),
        }
    }
}
