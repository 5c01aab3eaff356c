//! The gRPC API (`trellis.v1.Trellis`, tonic): publishing one batch or a stream of them through
//! the same publish core as HTTP, and consumer-group subscriptions.
//!
//! - `publish.rs`: `Publish` and `PublishStream`; an invalid or oversized event fails alone.
//! - `subscribe.rs`: `Subscribe`, the member side of a stream.
//! - `group.rs`: the coordinator of one consumer group: reads the topic, hands events to
//!   members, redelivers what is not acked in time and commits the acked prefix; run only on
//!   the replica that owns the group.
//! - `relay.rs`: a member's session on the replica its client reached: joined to the group
//!   there, or relayed to the owning replica, and moved to the next owner on a failover.
//!
//! Status codes follow the comment at the top of `trellis.proto`: transient (UNAVAILABLE,
//! RESOURCE_EXHAUSTED) apart from permanent (INVALID_ARGUMENT, FAILED_PRECONDITION, NOT_FOUND).

mod group;
mod publish;
mod relay;
mod subscribe;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::http::StatusCode;
use futures::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use trellis_meta::MetadataStore;
use trellis_proto::v1::trellis_server::{Trellis, TrellisServer};
use trellis_proto::v1::{PublishRequest, PublishResponse, SubscribeRequest, SubscribeResponse};

use crate::config::RuntimeConfig;
use crate::error::ApiError;
use crate::metrics::PublishMetrics;
use crate::publisher::Publisher;
use crate::topics::TopicRegistry;

pub(crate) use group::GroupRegistry;

/// Describes the metrics of the gRPC API: consumer groups and their relays.
pub(crate) fn describe_metrics() {
    group::describe_metrics();
    relay::describe_metrics();
}

/// What every call can reach.
pub(crate) struct GrpcService {
    pub(crate) config: Arc<RuntimeConfig>,
    pub(crate) publisher: Arc<Publisher>,
    pub(crate) topics: TopicRegistry,
    pub(crate) groups: Arc<GroupRegistry>,
    pub(crate) publish_metrics: PublishMetrics,
    pub(crate) shutting_down: Arc<AtomicBool>,
    /// Cancelled at shutdown: streams stop reading and end with UNAVAILABLE.
    pub(crate) shutdown: CancellationToken,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

impl GrpcService {
    fn check_running(&self) -> Result<(), Status> {
        if self.shutting_down.load(Ordering::Relaxed) || self.shutdown.is_cancelled() {
            return Err(shutting_down());
        }
        Ok(())
    }
}

pub(crate) fn shutting_down() -> Status {
    Status::unavailable("Trellis is shutting down; retry against another node or later")
}

/// The most bytes of a status message. It travels percent-encoded in the `grpc-message`
/// trailer, up to three times as long, and gRPC's C core accepts 8 KiB of metadata by default.
const MAX_STATUS_MESSAGE_BYTES: usize = 1024;

/// The gRPC status of an API error, by what its HTTP status means.
pub(crate) fn status_of(error: &ApiError) -> Status {
    let message = status_message(&error.message);
    match error.status {
        StatusCode::BAD_REQUEST => Status::invalid_argument(message),
        StatusCode::NOT_FOUND => Status::not_found(message),
        StatusCode::PAYLOAD_TOO_LARGE => Status::failed_precondition(message),
        // The node's state refuses it (the topic limit, say) until an operator acts: no retry.
        StatusCode::CONFLICT => Status::failed_precondition(message),
        StatusCode::SERVICE_UNAVAILABLE => Status::unavailable(message),
        StatusCode::TOO_MANY_REQUESTS => Status::resource_exhausted(message),
        _ => Status::internal(message),
    }
}

/// `message`, cut to [`MAX_STATUS_MESSAGE_BYTES`] at a character boundary.
fn status_message(message: &str) -> String {
    if message.len() <= MAX_STATUS_MESSAGE_BYTES {
        return message.to_owned();
    }
    let cut = message
        .char_indices()
        .map(|(at, _)| at)
        .take_while(|at| *at <= MAX_STATUS_MESSAGE_BYTES - 3)
        .last()
        .unwrap_or(0);
    format!("{}...", &message[..cut])
}

/// The tonic service: the shared state, which calls hand to the tasks they spawn.
struct GrpcApi(Arc<GrpcService>);

#[tonic::async_trait]
impl Trellis for GrpcApi {
    async fn publish(
        &self,
        request: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        self.0.check_running()?;
        let response = publish::publish_batch(
            &self.0,
            request.into_inner(),
            crate::publisher::Turn::default(),
        )
        .await?;
        Ok(Response::new(response))
    }

    type PublishStreamStream = BoxStream<PublishResponse>;

    async fn publish_stream(
        &self,
        request: Request<Streaming<PublishRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        self.0.check_running()?;
        let stream = publish::publish_stream(Arc::clone(&self.0), request.into_inner());
        Ok(Response::new(stream))
    }

    type SubscribeStream = BoxStream<SubscribeResponse>;

    async fn subscribe(
        &self,
        request: Request<Streaming<SubscribeRequest>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        self.0.check_running()?;
        let relayed = request.metadata().contains_key(relay::RELAY_HEADER);
        let stream =
            subscribe::subscribe(Arc::clone(&self.0), request.into_inner(), relayed).await?;
        Ok(Response::new(stream))
    }
}

/// Serves the gRPC API on `listener` until `shutdown` is cancelled, then lets the calls in
/// flight end (streams end themselves with UNAVAILABLE). The drain cuts off what is left.
pub(crate) async fn serve(
    listener: crate::net::Listener,
    service: Arc<GrpcService>,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let max_message = max_message_bytes(&service.config);
    // The listener logs and waits out accept errors itself, so the stream never ends or fails.
    let incoming = futures::stream::unfold(listener, |listener| async move {
        let io = listener.accept().await;
        Some((Ok::<_, std::io::Error>(io), listener))
    });
    let server = TrellisServer::new(GrpcApi(service))
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
    tonic::transport::Server::builder()
        .initial_stream_window_size(Some(trellis_proto::STREAM_WINDOW_BYTES))
        .initial_connection_window_size(Some(trellis_proto::CONNECTION_WINDOW_BYTES))
        // A peer that vanished under a quiet stream is noticed by its unanswered pings.
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .add_service(crate::net::grpc_service::TrackedCalls(server))
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await
}

/// The largest gRPC message, served or relayed. The protobuf framing adds a little to the
/// events themselves; tonic's default of 4 MiB would refuse batches HTTP takes.
fn max_message_bytes(config: &RuntimeConfig) -> usize {
    config
        .max_batch_bytes
        .saturating_add(config.max_batch_events.saturating_mul(64))
        .saturating_add(64 * 1024)
}

const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Keys of the metadata store under which groups keep their committed offsets.
pub(crate) fn group_offset_key(topic: &str, group: &str, member: Option<&str>) -> String {
    match member {
        None => format!("/groups/{topic}/{group}"),
        Some(member) => format!("/groups/{topic}/{group}/members/{member}"),
    }
}

/// Reads a committed offset, with the topic incarnation it counts in.
pub(crate) async fn stored_offset(
    meta: &dyn MetadataStore,
    key: &str,
) -> Result<Option<crate::stored_offset::StoredOffset>, Status> {
    crate::stored_offset::load_any(meta, key)
        .await
        .map_err(|error| {
            Status::unavailable(format!(
                "reading the group's committed offset failed: {}",
                crate::error::error_chain(&error)
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::{MAX_STATUS_MESSAGE_BYTES, status_message};

    #[test]
    fn status_messages_are_cut_at_a_character_boundary() {
        assert_eq!(status_message("short"), "short");
        let cut = status_message(&"\u{e9}".repeat(2_000));
        assert!(cut.len() <= MAX_STATUS_MESSAGE_BYTES, "{}", cut.len());
        assert!(cut.ends_with("\u{e9}..."), "{cut}");
    }
}
