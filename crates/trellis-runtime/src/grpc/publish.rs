//! `Publish` and `PublishStream`. Each event is checked on its own: an invalid event gets an
//! INVALID_ARGUMENT `Error` naming the attribute, an oversized one FAILED_PRECONDITION, and the
//! batch's other events are stored together, through the same publish core (and deduplication)
//! as HTTP.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, Streaming};
use trellis_cloudevents::EventLimits;
use trellis_proto::v1::{self, EventResult, PublishRequest, PublishResponse, Stored, event_result};

use super::{BoxStream, GrpcService, shutting_down, status_of};
use crate::metrics::PublishOutcome;
use crate::publisher::{Outgoing, Turn, Unpublishable};

/// One batch, answered once its valid events are stored. A failure of the batch as a whole
/// (shutting down, the topic cannot be used, storage failed) is the call's status.
pub(super) async fn publish_batch(
    service: &GrpcService,
    request: PublishRequest,
    turn: Turn,
) -> Result<PublishResponse, Status> {
    let started = Instant::now();
    let result = publish_inner(service, request, turn).await;
    let outcome = match &result {
        Ok(_) => PublishOutcome::Accepted,
        Err(status)
            if matches!(
                status.code(),
                Code::InvalidArgument | Code::NotFound | Code::FailedPrecondition
            ) =>
        {
            PublishOutcome::Rejected
        }
        Err(_) => PublishOutcome::Failed,
    };
    service
        .publish_metrics
        .record_request(outcome, started.elapsed().as_secs_f64());
    result
}

async fn publish_inner(
    service: &GrpcService,
    request: PublishRequest,
    turn: Turn,
) -> Result<PublishResponse, Status> {
    let limits = &service.config;
    let PublishRequest {
        batch_id,
        topic,
        events,
    } = request;
    if events.is_empty() {
        return Err(Status::invalid_argument("a batch needs at least one event"));
    }
    if events.len() > limits.max_batch_events {
        return Err(Status::failed_precondition(format!(
            "a batch may hold at most {} events; got {}",
            limits.max_batch_events,
            events.len()
        )));
    }
    service
        .topics
        .check_publish(&topic)
        .map_err(|error| status_of(&error))?;

    let event_limits = limits.event_limits();
    let mut results: Vec<Option<EventResult>> = Vec::with_capacity(events.len());
    let mut outgoing = Vec::with_capacity(events.len());
    let mut positions = Vec::with_capacity(events.len());
    let mut n_bytes = 0usize;
    for (idx, event) in events.into_iter().enumerate() {
        match prepare(event, &event_limits, limits.max_event_bytes) {
            Ok(prepared) => {
                n_bytes += prepared.record.len();
                outgoing.push(prepared);
                positions.push(idx);
                results.push(None);
            }
            Err(error) => results.push(Some(error)),
        }
    }
    if n_bytes > limits.max_batch_bytes {
        return Err(Status::failed_precondition(format!(
            "the batch's events are {n_bytes} bytes as stored; a batch may be at most {} bytes",
            limits.max_batch_bytes
        )));
    }
    if !outgoing.is_empty() {
        let published = service
            .publisher
            .publish_in_turn(&topic, outgoing, turn)
            .await
            .map_err(|error| status_of(&error))?;
        for (idx, published) in positions.into_iter().zip(published) {
            if let Some(slot) = results.get_mut(idx) {
                *slot = Some(EventResult {
                    result: Some(event_result::Result::Stored(Stored {
                        offset: published.offset,
                        duplicate: published.duplicate,
                    })),
                });
            }
        }
    }
    Ok(PublishResponse {
        batch_id,
        results: results
            .into_iter()
            .map(|result| {
                result.unwrap_or_else(|| {
                    error_result(
                        Code::Internal,
                        "the event was not answered".to_owned(),
                        None,
                    )
                })
            })
            .collect(),
    })
}

/// Validates and encodes one event, or says why it cannot be stored.
fn prepare(
    event: v1::CloudEvent,
    limits: &EventLimits,
    max_event_bytes: usize,
) -> Result<Outgoing, EventResult> {
    let event = trellis_proto::event_from_proto(event)
        .map_err(|error| error_result(Code::InvalidArgument, error.message, error.attribute))?;
    Outgoing::prepare(&event, limits, max_event_bytes).map_err(|error| {
        let code = match error {
            Unpublishable::Reserved(_) | Unpublishable::OverLimit(_) => Code::InvalidArgument,
            Unpublishable::TooLarge { .. } => Code::FailedPrecondition,
        };
        error_result(code, error.message("the event"), error.attribute())
    })
}

fn error_result(code: Code, message: String, attribute: Option<String>) -> EventResult {
    EventResult {
        result: Some(event_result::Result::Error(v1::Error {
            code: code as i32,
            message,
            attribute: attribute.unwrap_or_default(),
        })),
    }
}

/// On a stream a batch is always answered by a response: a failure of the whole batch becomes
/// the same error on each of its events.
async fn answer(service: &GrpcService, request: PublishRequest, turn: Turn) -> PublishResponse {
    let batch_id = request.batch_id;
    let n_events = request.events.len().max(1);
    match publish_batch(service, request, turn).await {
        Ok(response) => response,
        Err(status) => PublishResponse {
            batch_id,
            results: (0..n_events)
                .map(|_| error_result(status.code(), status.message().to_owned(), None))
                .collect(),
        },
    }
}

/// Reads batches while fewer than `grpc_max_batches_in_flight` are being stored, and answers
/// each as it is stored, in whatever order that happens. With the limit reached the stream is
/// not read, so HTTP/2 flow control holds the client back. At shutdown the stream stops being
/// read, the batches in flight are answered, and it ends with UNAVAILABLE.
pub(super) fn publish_stream(
    service: Arc<GrpcService>,
    mut inbound: Streaming<PublishRequest>,
) -> BoxStream<PublishResponse> {
    let limit = service.config.grpc_max_batches_in_flight.max(1);
    let (answers, outbound) = mpsc::channel(limit + 1);
    tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(limit));
        let mut in_flight = JoinSet::new();
        let mut after: Option<oneshot::Receiver<()>> = None;
        let mut stopped_by_shutdown = false;
        let mut failed = None;
        loop {
            let slot = tokio::select! {
                slot = Arc::clone(&slots).acquire_owned() => slot,
                () = service.shutdown.cancelled() => { stopped_by_shutdown = true; break; }
                () = answers.closed() => break,
            };
            let Ok(slot) = slot else { break };
            let next = tokio::select! {
                next = inbound.message() => next,
                () = service.shutdown.cancelled() => { stopped_by_shutdown = true; break; }
                () = answers.closed() => break,
            };
            let request = match next {
                Ok(Some(request)) => request,
                // The client is done sending: answer what is in flight, then end the stream.
                Ok(None) => break,
                // A message over the size limit (OUT_OF_RANGE from tonic) or a broken stream:
                // the client learns why once the batches in flight are answered, rather than
                // seeing the stream end as if it had finished.
                Err(status) => {
                    tracing::debug!(message = "A publish stream failed.", %status);
                    failed = Some(status);
                    break;
                }
            };
            let service = Arc::clone(&service);
            let answers = answers.clone();
            // Batches of one stream are stored in the order they came, however many are in
            // flight: each takes its turn at the log's queue after the one before it.
            let (then, next_after) = oneshot::channel();
            let turn = Turn {
                after: after.replace(next_after),
                then: Some(then),
            };
            in_flight.spawn(async move {
                let response = answer(&service, request, turn).await;
                let _ = answers.send(Ok(response)).await;
                drop(slot);
            });
            while in_flight.try_join_next().is_some() {}
        }
        while in_flight.join_next().await.is_some() {}
        if stopped_by_shutdown {
            let _ = answers.send(Err(shutting_down())).await;
        } else if let Some(status) = failed {
            let _ = answers.send(Err(status)).await;
        }
    });
    Box::pin(ReceiverStream::new(outbound))
}
