//! `Subscribe`: the member's side of a consumer-group stream. The first request names the
//! group; then the client's acks are passed to the group's coordinator, and the coordinator's
//! deliveries are the response stream.

use std::sync::Arc;
use std::time::Duration;

use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};
use trellis_proto::v1::{GroupMode, StartPosition, SubscribeRequest, subscribe_request};

use super::group::{JoinSpec, Start};
use super::{BoxStream, GrpcService, shutting_down, status_of};
use trellis_proto::v1::SubscribeResponse;

const DEFAULT_MAX_UNACKED: u32 = 1000;
/// A member's window is capped so one member cannot make its group hold unbounded events.
const MAX_MAX_UNACKED: u32 = 10_000;
const DEFAULT_ACK_TIMEOUT_MS: u32 = 30_000;

pub(super) async fn subscribe(
    service: Arc<GrpcService>,
    mut inbound: Streaming<SubscribeRequest>,
) -> Result<BoxStream<SubscribeResponse>, Status> {
    let first = tokio::select! {
        first = inbound.message() => first?,
        () = service.shutdown.cancelled() => return Err(shutting_down()),
    };
    let Some(SubscribeRequest {
        request: Some(subscribe_request::Request::Subscription(subscription)),
    }) = first
    else {
        return Err(Status::invalid_argument(
            "the first request of a Subscribe stream must carry `subscription`",
        ));
    };
    let broadcast = match GroupMode::try_from(subscription.mode) {
        Ok(GroupMode::Clustering) => false,
        Ok(GroupMode::Broadcast) => true,
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "subscription.mode {} is not a GroupMode",
                subscription.mode
            )));
        }
    };
    let start = match StartPosition::try_from(subscription.start) {
        Ok(StartPosition::Latest) => Start::Latest,
        Ok(StartPosition::Earliest) => Start::Earliest,
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "subscription.start {} is not a StartPosition",
                subscription.start
            )));
        }
    };
    check_name("subscription.group", &subscription.group)?;
    let member = if broadcast && !subscription.member.is_empty() {
        check_name("subscription.member", &subscription.member)?;
        Some(subscription.member)
    } else {
        None
    };
    let (topic, incarnation) = service
        .topics
        .for_subscription(&subscription.topic)
        .await
        .map_err(|error| status_of(&error))?;
    let max_unacked = match subscription.max_unacked {
        0 => DEFAULT_MAX_UNACKED,
        n => n.min(MAX_MAX_UNACKED),
    };
    let ack_timeout_ms = match subscription.ack_timeout_ms {
        0 => DEFAULT_ACK_TIMEOUT_MS,
        n => n,
    };
    let spec = JoinSpec {
        topic,
        store: Arc::clone(service.topics.store()),
        incarnation,
        group: subscription.group,
        broadcast,
        member,
        start,
        max_unacked: max_unacked as usize,
        ack_timeout: Duration::from_millis(u64::from(ack_timeout_ms)),
    };
    let (membership, deliveries) = service.groups.join(spec).await?;

    let shutdown = service.shutdown.clone();
    tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                next = inbound.message() => next,
                () = shutdown.cancelled() => break,
            };
            match next {
                Ok(Some(SubscribeRequest {
                    request: Some(subscribe_request::Request::Ack(ack)),
                })) => {
                    if !membership.ack(ack.offsets).await {
                        break;
                    }
                }
                Ok(Some(_)) => {
                    // Only acks may follow the first request; the member leaves, and what it
                    // held goes to the others.
                    membership.refuse(Status::invalid_argument(
                        "after the first request a Subscribe stream takes only `ack`s",
                    ));
                    break;
                }
                Ok(None) => break,
                Err(status) => {
                    tracing::debug!(message = "A Subscribe stream failed.", %status);
                    break;
                }
            }
        }
        drop(membership);
    });
    Ok(Box::pin(ReceiverStream::new(deliveries)))
}

/// Group and member names become keys of the metadata store: the topic-name alphabet keeps
/// `/` out of them, so one group's key is never another's.
fn check_name(field: &str, name: &str) -> Result<(), Status> {
    trellis_storage::validate_topic_name(name).map_err(|error| {
        Status::invalid_argument(format!(
            "{field}: {}",
            crate::error::error_chain(&error).replace("topic name", "name")
        ))
    })
}
