//! `Subscribe`: the member's side of a consumer-group stream. The first request names the
//! group; then the client's acks are passed to the group's coordinator, and the coordinator's
//! deliveries are the response stream. A member of a shared group runs as a session
//! (`relay.rs`) that reaches the coordinator wherever the group runs; a stream another replica
//! relays joins the coordinator here or is refused.

use std::sync::Arc;
use std::time::Duration;

use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};
use trellis_proto::v1::{GroupMode, StartPosition, SubscribeRequest, subscribe_request};

use super::group::{JoinSpec, Start};
use super::relay::{Session, serve_joined};
use super::{BoxStream, GrpcService, shutting_down, status_of};
use trellis_proto::v1::SubscribeResponse;

const DEFAULT_MAX_UNACKED: u32 = 1000;
/// A member's window is capped so one member cannot make its group hold unbounded events.
const MAX_MAX_UNACKED: u32 = 10_000;
const DEFAULT_ACK_TIMEOUT_MS: u32 = 30_000;

/// `relayed`: the stream comes from another replica, for one of its members.
pub(super) async fn subscribe(
    service: Arc<GrpcService>,
    mut inbound: Streaming<SubscribeRequest>,
    relayed: bool,
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
    let as_sent = subscription.clone();
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
    if spec.broadcast && spec.member.is_none() {
        let (attachment, membership, deliveries) = service.groups.join_private(spec).await?;
        return Ok(serve_joined(
            &service, attachment, membership, deliveries, inbound,
        ));
    }
    if relayed {
        let (attachment, membership, deliveries) = service.groups.join_relayed(&spec)?;
        return Ok(serve_joined(
            &service, attachment, membership, deliveries, inbound,
        ));
    }
    let attachment = service.groups.attach(&spec);
    // Room for every delivery of a full window, `Subscribed` and a closing status.
    let (out, deliveries) = tokio::sync::mpsc::channel(spec.max_unacked + 2);
    let session = Session {
        service: Arc::clone(&service),
        attachment,
        subscription: as_sent,
        max_unacked: spec.max_unacked,
        ack_timeout: spec.ack_timeout,
        inbound,
        out,
        subscribed: false,
    };
    service.groups.spawn(session.run());
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
