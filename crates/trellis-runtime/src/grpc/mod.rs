//! The gRPC API (`trellis.v1.Trellis`, tonic): publishing one batch or a stream of them through
//! the same publish core as HTTP, and consumer-group subscriptions.
//!
//! - `publish.rs`: `Publish` and `PublishStream`; an invalid or oversized event fails alone.
//! - `subscribe.rs`: `Subscribe`, the member side of a stream.
//! - `group.rs`: the coordinator of one consumer group: reads the topic, hands events to
//!   members, redelivers what is not acked in time and commits the acked prefix.
//!
//! Status codes follow the comment at the top of `trellis.proto`: transient (UNAVAILABLE,
//! RESOURCE_EXHAUSTED) apart from permanent (INVALID_ARGUMENT, FAILED_PRECONDITION, NOT_FOUND).

mod group;
mod publish;
mod subscribe;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::http::StatusCode;
use futures::Stream;
use tokio::net::TcpListener;
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

pub(crate) use group::{GroupRegistry, describe_metrics};

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

/// The gRPC status of an API error, by what its HTTP status means.
pub(crate) fn status_of(error: &ApiError) -> Status {
    let message = error.message.clone();
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
        let stream = subscribe::subscribe(Arc::clone(&self.0), request.into_inner()).await?;
        Ok(Response::new(stream))
    }
}

/// Serves the gRPC API on `listener` until `shutdown` is cancelled, then lets the calls in
/// flight end (streams end themselves with UNAVAILABLE).
pub(crate) async fn serve(
    listener: TcpListener,
    service: Arc<GrpcService>,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    // The protobuf framing adds a little to the events themselves; tonic's default of 4 MiB
    // would refuse batches HTTP takes.
    let max_message = service
        .config
        .max_batch_bytes
        .saturating_add(service.config.max_batch_events.saturating_mul(64))
        .saturating_add(64 * 1024);
    let incoming = futures::stream::unfold(listener, |listener| async move {
        loop {
            match listener.accept().await {
                Ok((stream, _peer)) => {
                    // Answers are small and clients wait for each one.
                    if let Err(error) = stream.set_nodelay(true) {
                        tracing::debug!(message = "Cannot set TCP_NODELAY on a connection.", %error);
                    }
                    return Some((Ok::<_, std::io::Error>(stream), listener));
                }
                // Out of file descriptors, say: an error here would stop the server, so wait
                // and accept again.
                Err(error) => {
                    tracing::warn!(message = "Accepting a gRPC connection failed.", %error);
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    });
    let server = TrellisServer::new(GrpcApi(service))
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
    tonic::transport::Server::builder()
        .initial_stream_window_size(Some(trellis_proto::STREAM_WINDOW_BYTES))
        .initial_connection_window_size(Some(trellis_proto::CONNECTION_WINDOW_BYTES))
        .add_service(server)
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await
}

/// Keys of the metadata store under which groups keep their committed offsets.
pub(crate) fn group_offset_key(topic: &str, group: &str, member: Option<&str>) -> String {
    match member {
        None => format!("/groups/{topic}/{group}"),
        Some(member) => format!("/groups/{topic}/{group}/members/{member}"),
    }
}

/// Reads a committed offset stored as decimal text.
pub(crate) async fn stored_offset(
    meta: &dyn MetadataStore,
    key: &str,
) -> Result<Option<u64>, Status> {
    crate::stored_offset::load(meta, key)
        .await
        .map_err(|error| {
            Status::unavailable(format!(
                "reading the group's committed offset failed: {}",
                crate::error::error_chain(&error)
            ))
        })
}
